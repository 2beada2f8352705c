"""The processing spine: one committed inbox message in, ticket changes out.

    parse → dedupe → loop check → identify → thread → rules → store → react

Parsing runs outside the write transaction; everything after it runs inside
one, so a ticket change, its entry and its outgoing mail commit together or
not at all. Processing is idempotent: a message is taken only while `queued`,
and a redelivered copy is recognised by its identity (Message-ID + hash).

Headers first: threading, loop checks and header rules need only the header block,
and reading it is a fraction of reading the whole message (MIME tree, charsets,
quote stripping, attachments). So `process_batch` stores most messages from their
headers (the ticket, the entry without its body, the references) and leaves a
`deferred` row in the same transaction; `follow_up` reads them whole later, fills in
the body and attachments and runs the reactors (outgoing mail), in one transaction
again. Messages whose handling depends on the body are read whole at once and
processed in one go: automatic mail (bounces are read from their report), agent
mail, and all mail when a rule has a `body` condition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from maildesk import agent_mail, ticketing
from maildesk.agent_mail import AgentPlan
from maildesk.classify import classify
from maildesk.config import Settings, parse_business_hours
from maildesk.deadlines import DEFAULT_HOURS
from maildesk.domain import (
    Classification,
    InboxState,
    ParsedMail,
    RuleOutcome,
    Sender,
    Source,
    ThreadDecision,
    ThreadRule,
)
from maildesk.identify import identify
from maildesk.identity import content_hash
from maildesk.logs import about
from maildesk.parse import not_a_message, parse_headers, parse_message
from maildesk.parse_pool import InProcessParser, ParseFailure, WholeParser
from maildesk.rules import RuleContext, read_body
from maildesk.rules import evaluate as evaluate_rules
from maildesk.store import StoreUnavailable, deferred, inbox, tickets
from maildesk.store.inbox import utcnow
from maildesk.store.raw import raw as session_raw
from maildesk.store.raw import savepoint
from maildesk.store.tickets import SessionLookup
from maildesk.thread import ThreadingPolicy, generic_keys
from maildesk.thread import decide as decide_thread

if TYPE_CHECKING:
    from maildesk.store.direct import Writable
    from maildesk.store.raw import Tx

log = logging.getLogger(__name__)
# Raw bytes a follow-up batch reads whole at once: its parsed messages are held for one
# transaction, ~1.8 times their size (8 messages of 20 MB: +250 MB of RSS). Typical
# mail (64 of 100 KB) fits in one batch; big messages go a few at a time.
FOLLOW_UP_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    inbox_id: int
    state: InboxState
    ticket_id: int | None = None
    entry_id: int | None = None
    reason: str | None = None
    rules: RuleOutcome | None = None  # what the [[rules]] that fired set (explain shows it)


@dataclass(frozen=True)
class Change:
    """What one message did to a ticket; handed to reactors inside the transaction."""

    inbox_id: int | None
    mail: ParsedMail
    envelope_from: str | None
    classification: Classification
    sender: Sender
    decision: ThreadDecision
    ticket_id: int
    entry_id: int
    entry_kind: str
    new_ticket: bool
    now: datetime
    rules: RuleOutcome = RuleOutcome()
    agent: AgentPlan | None = None  # agent mail: what it does (relay, note, command error)


@dataclass
class Trace:
    """What the steps found for one message, for `explain`."""

    classification: Classification | None = None
    sender: Sender | None = None
    decision: ThreadDecision | None = None
    agent: AgentPlan | None = None
    actions: list[str] = field(default_factory=list)


class Reactor(Protocol):
    """Turns a stored change into outgoing mail (outbox rows), in the same session.

    Returns one line per message queued or withheld, for logs and `explain`."""

    def react(self, session: Tx, change: Change) -> list[str]: ...


@dataclass
class Explanation:
    """The result of a dry run (`maildesk explain`)."""

    mail: ParsedMail
    classification: Classification | None = None
    sender: Sender | None = None
    decision: ThreadDecision | None = None
    agent: AgentPlan | None = None
    outcome: Outcome | None = None
    actions: list[str] = field(default_factory=list)


class _DryRun(Exception):
    pass


class Pipeline:
    def __init__(self, settings: Settings, db: Writable, reactors: Sequence[Reactor] = (),
                 clock: Callable[[], datetime] = utcnow,
                 parser: WholeParser | None = None) -> None:
        self.settings = settings
        self.db = db
        self.reactors = list(reactors)
        self.clock = clock  # the time of each change (tests set their own)
        # Who reads follow-ups whole: the daemon's worker processes (maildesk.parse_pool)
        # or this thread.
        self.parser = parser or InProcessParser()
        self.policy = ThreadingPolicy(
            desk_addresses=settings.desk_addresses(),
            desk_address=settings.desk.address,
            secret=settings.desk.secret,
            ticket_prefix=settings.desk.ticket_prefix,
            subject_window=settings.threading.subject_window,
            generic_subjects=generic_keys(settings.threading.generic_subjects,
                                          settings.desk.ticket_prefix),
            agents=settings.agent_addresses(),
        )
        # Business hours for rule conditions: the first SLA policy's, else Mon-Fri 09-18.
        first = settings.sla[0] if settings.sla else None
        self.hours = first.hours if first else parse_business_hours(DEFAULT_HOURS)
        self.hours_tz = first.tzinfo if first else settings.desk.tzinfo
        self.rules_read_body = read_body(settings.rules)

    # --- entry points ---------------------------------------------------------------------

    def process(self, inbox_id: int) -> Outcome:
        """One message start to finish, follow-up included (`ingest`, `inbox retry`)."""
        outcome = self.process_batch([inbox_id])[0]
        self.follow_up([inbox_id])
        return outcome

    def process_batch(self, inbox_ids: Sequence[int]) -> list[Outcome]:
        """Process claimed inbox messages in one write transaction, most of them from
        their headers (see the module docstring; `follow_up` does the rest).

        A message that raises is parked as `failed` and the others are stored;
        StoreUnavailable propagates and leaves everything queued."""
        parsed: dict[int, ParsedMail] = {}
        failures: dict[int, str] = {}
        raws = inbox.load_raw(self.db, inbox_ids)
        for i, raw in raws.items():
            try:
                parsed[i] = parse_headers(raw) or parse_message(raw)
            except Exception as exc:  # neither should raise; never trust it
                failures[i] = f"parse: {type(exc).__name__}: {exc}"
        try:  # the common case: every message goes through, no savepoints needed
            outcomes = self._store_batch(parsed, raws, failures, isolate=False)
        except StoreUnavailable:
            raise
        except Exception:  # one message raised and the batch rolled back: again, one by one
            log.warning("a message of the batch failed; processing it message by message")
            outcomes = self._store_batch(parsed, raws, failures, isolate=True)
        for i, reason in failures.items():
            inbox.record_failure(self.db, i, reason)
            outcomes[i] = Outcome(i, InboxState.FAILED, reason=reason)
        # Their follow-ups are next: the worker processes (if any) start reading them whole.
        ahead = [i for i, o in outcomes.items()
                 if o.state is InboxState.PROCESSED and parsed[i].headers_only]
        if ahead:
            self.parser.read_ahead(ahead, lambda ids: {i: raws[i] for i in ids})
        return [outcomes.get(i) or self._current(i) for i in inbox_ids]

    def follow_up(self, inbox_ids: Sequence[int] | None = None, *, limit: int = 64) -> int:
        """Read whole the messages `process_batch` stored from their headers (these of
        `inbox_ids`, else the oldest `limit`), fill in their entries' body and
        attachments and queue their outgoing mail, in one write transaction. Returns
        how many it did; 0 when none was waiting."""
        if inbox_ids is not None:
            ids, later = list(inbox_ids), []
        else:  # and the next batch, for the worker processes to read meanwhile
            found = deferred.pending(self.db, 2 * limit)
            ids = inbox.within_bytes(self.db, found[:limit], FOLLOW_UP_BYTES)
            later = inbox.within_bytes(self.db, found[len(ids):], FOLLOW_UP_BYTES)
        if not ids:
            return 0

        def load(missing: Sequence[int]) -> dict[int, bytes]:
            return inbox.load_raw(self.db, missing)

        self.parser.read_ahead(ids + later, load)
        parsed = self.parser.parse_whole(ids, load)
        mails = {i: m for i, m in parsed.items() if not isinstance(m, ParseFailure)}
        unread = {i: m.reason for i, m in parsed.items() if isinstance(m, ParseFailure)}
        try:
            return self._follow_up_batch(mails, unread, isolate=False)
        except StoreUnavailable:
            raise
        except Exception:
            log.warning("a follow-up of the batch failed; doing them one by one")
            return self._follow_up_batch(mails, unread, isolate=True)

    def _store_batch(
        self, parsed: dict[int, ParsedMail], raws: dict[int, bytes], failures: dict[int, str],
        *, isolate: bool,
    ) -> dict[int, Outcome]:
        """Everything after parsing, in one write transaction. With `isolate`, each message
        runs in a savepoint, so one that raises is rolled back alone and noted in
        `failures`; without it (two statements and some bookkeeping less per message), an
        exception rolls back the whole batch."""
        outcomes: dict[int, Outcome] = {}
        with self.db.write(durable=False) as s:
            self.db.lock_threading(s)
            envelopes = inbox.load_envelopes(s, list(parsed))
            for i, mail in parsed.items():
                env = envelopes.get(i)
                if env is None or env.state != InboxState.QUEUED.value:
                    continue
                if not isolate:
                    outcomes[i] = self._apply(s, env, mail, self.reactors, raws[i])[0]
                    continue
                try:
                    with savepoint(s):
                        outcomes[i] = self._apply(s, env, mail, self.reactors, raws[i])[0]
                except Exception as exc:
                    log.exception("inbox %s (%s): processing failed", i, mail.message_id,
                                  extra=about(inbox=i, message_id=mail.message_id))
                    failures[i] = f"{type(exc).__name__}: {exc}"
        return outcomes

    def _follow_up_batch(self, mails: dict[int, ParsedMail], unread: dict[int, str], *,
                         isolate: bool) -> int:
        """`unread`: messages no worker process could read whole (they killed it): they
        keep their ticket and body-less entry, send nothing, and become `failed`."""
        done = 0
        with self.db.write(durable=False) as s:
            self.db.lock_threading(s)
            for item in deferred.take(s, [*mails, *unread]):
                if item.inbox_id in unread:
                    log.error("inbox %s: %s", item.inbox_id, unread[item.inbox_id],
                              extra=about(inbox=item.inbox_id, ticket=item.ticket_id))
                    deferred.done(s, item.inbox_id)
                    inbox.mark_failed(s, item.inbox_id, unread[item.inbox_id])
                    done += 1
                    continue
                mail = mails[item.inbox_id]
                if not isolate:
                    self._follow_up_one(s, item, mail)
                    done += 1
                    continue
                try:
                    with savepoint(s):
                        self._follow_up_one(s, item, mail)
                except Exception:  # the mail is lost to a bug, never the message
                    log.exception("inbox %s (%s): outgoing mail failed; the entry is kept",
                                  item.inbox_id, mail.message_id, extra=about(
                                      inbox=item.inbox_id, message_id=mail.message_id,
                                      ticket=item.ticket_id))
                    with savepoint(s):
                        self._fill_in(s, item, mail)
                done += 1
        return done

    @staticmethod
    def _fill_in(s: Tx, item: deferred.Deferred, mail: ParsedMail) -> None:
        """The entry's body and attachments; the follow-up is done."""
        tickets.fill_entry(s, item.entry_id, body=mail.display_body, attachments=mail.attachments)
        deferred.done(s, item.inbox_id)

    def _follow_up_one(self, s: Tx, item: deferred.Deferred, mail: ParsedMail) -> None:
        self._fill_in(s, item, mail)
        classification = classify(mail, item.envelope_from, self.settings.desk_addresses())
        change = Change(
            inbox_id=item.inbox_id, mail=mail, envelope_from=item.envelope_from,
            classification=classification, sender=self._identify(mail, item.envelope_to),
            decision=ThreadDecision(item.ticket_id, ThreadRule(item.thread_rule),
                                    item.thread_reason),
            ticket_id=item.ticket_id, entry_id=item.entry_id, entry_kind=item.entry_kind,
            new_ticket=item.new_ticket, now=self.clock(),
            rules=RuleOutcome(reply_templates=item.reply_templates, notify=item.notify),
        )
        for reactor in self.reactors:
            reactor.react(s, change)

    def explain(self, raw: bytes) -> Explanation:
        """Run every step on `raw` and roll back: nothing is stored or sent."""
        mail = parse_message(raw)
        result = Explanation(mail)
        row = inbox.new_row(raw, source=Source.CLI, message_id=mail.message_id,
                            content_hash=content_hash(raw))
        try:
            with self.db.write(durable=False) as s:
                self.db.lock_threading(s)
                (inbox_id,) = inbox.insert_rows(session_raw(s), [row])
                outcome, trace = self._apply(s, inbox.envelope_of(inbox_id, row), mail,
                                             self.reactors)
                result.outcome = outcome
                result.classification, result.sender = trace.classification, trace.sender
                result.decision, result.agent = trace.decision, trace.agent
                result.actions = trace.actions
                raise _DryRun
        except _DryRun:
            pass
        return result

    def _current(self, inbox_id: int) -> Outcome:
        item = inbox.get(self.db, inbox_id)
        if item is None:
            return Outcome(inbox_id, InboxState.FAILED, reason="no such inbox message")
        return Outcome(inbox_id, item.state, item.ticket_id, None, item.reason)

    # --- the steps ------------------------------------------------------------------------

    def _apply(
        self, s: Tx, row: inbox.Envelope, mail: ParsedMail, reactors: Sequence[Reactor],
        raw: bytes | None = None,
    ) -> tuple[Outcome, Trace]:
        """All steps after parsing for one message. `mail` may be headers only (then `raw`
        is given): the body is read here when the handling depends on it, else later by
        `follow_up`."""
        now = self.clock()
        twin = inbox.find_processed_twin(s, row)
        if twin is not None:
            twin_id, twin_ticket = twin
            reason = f"same message as inbox {twin_id}"
            inbox.mark(s, row.id, InboxState.DUPLICATE, reason=reason, ticket_id=twin_ticket,
                       now=now)
            return Outcome(row.id, InboxState.DUPLICATE, twin_ticket, None, reason), Trace()

        junk = not_a_message(mail)
        if junk is not None:  # an empty input, binary data: stored, but no ticket
            inbox.mark(s, row.id, InboxState.IGNORED, reason=junk, now=now)
            return Outcome(row.id, InboxState.IGNORED, None, None, junk), Trace()

        settings = self.settings
        classification = classify(mail, row.envelope_from, settings.desk_addresses())
        sender = self._identify(mail, row.envelope_to)
        if mail.headers_only and self._needs_body(classification, sender):
            assert raw is not None
            mail = parse_message(raw)
            classification = classify(mail, row.envelope_from, settings.desk_addresses())
            sender = self._identify(mail, row.envelope_to)
        recipients = _recipients(row.envelope_to, mail)
        lookup = SessionLookup(s)
        decision = decide_thread(
            mail, recipients=recipients, sender=sender, lookup=lookup, policy=self.policy,
            now=now,
        )
        agent = None
        if sender.is_agent:
            decision = agent_mail.threading(decision)
            agent = agent_mail.plan(mail, sender=sender, automatic=classification.automatic,
                                    decision=decision, lookup=lookup, settings=settings)
        trace = Trace(classification, sender, decision, agent)

        if (classification.automatic and decision.ticket_id is None
                and not settings.loop.ticket_from_auto):
            reason = f"automatic message that joins no ticket ({classification.automatic})"
            inbox.mark(s, row.id, InboxState.IGNORED, reason=reason, now=now)
            return Outcome(row.id, InboxState.IGNORED, None, None, reason), trace

        fired = self._rules(mail, classification, sender, decision, now)
        if fired.drop:
            reason = f"dropped by rule {', '.join(fired.fired)}"
            inbox.mark(s, row.id, InboxState.IGNORED, reason=reason, now=now)
            return Outcome(row.id, InboxState.IGNORED, None, None, reason, fired), trace

        stored = ticketing.store_message(
            s, settings=settings, mail=mail, envelope_from=row.envelope_from,
            recipients=recipients, classification=classification, sender=sender,
            decision=decision, inbox_id=row.id, now=now, rules=fired, lookup=lookup,
            agent=agent,
        )
        why = processed_reason(decision, fired)
        inbox.mark(s, row.id, InboxState.PROCESSED, reason=why,
                   ticket_id=stored.ticket_id, entry_id=stored.entry_id, now=now)
        log.info("inbox %s <%s>: ticket #%s (%s)", row.id, mail.message_id or "",
                 stored.ticket_id, decision.rule.value, extra=about(
                     inbox=row.id, message_id=mail.message_id, ticket=stored.ticket_id))
        outcome = Outcome(row.id, InboxState.PROCESSED, stored.ticket_id, stored.entry_id,
                          why, fired)
        if mail.headers_only:
            deferred.add(s, inbox_id=row.id, entry_id=stored.entry_id,
                         new_ticket=stored.new_ticket, reply_templates=fired.reply_templates,
                         notify=fired.notify, now=now)
            return outcome, trace
        change = Change(
            inbox_id=row.id, mail=mail, envelope_from=row.envelope_from,
            classification=classification, sender=sender, decision=decision,
            ticket_id=stored.ticket_id, entry_id=stored.entry_id, entry_kind=stored.kind.value,
            new_ticket=stored.new_ticket, now=now, rules=fired, agent=agent,
        )
        trace.actions.extend(line for r in reactors for line in r.react(s, change))
        return outcome, trace

    def _identify(self, mail: ParsedMail, envelope_to: Sequence[str]) -> Sender:
        settings = self.settings
        return identify(
            mail, agents=settings.agent_addresses(), recipients=_recipients(envelope_to, mail),
            desk_addresses=self.policy.desk_addresses, secret=settings.desk.secret,
            trusted_authserv_ids=settings.security.trusted_authserv_id,
            auth_results=[h for h in [mail.header("authentication-results")] if h],
        )

    def _needs_body(self, classification: Classification, sender: Sender) -> bool:
        """Must this message be read whole before it is stored? Automatic mail (a bounce
        is read from its report), agent mail, and mail the rules read the body of."""
        if classification.automatic or classification.bounce or sender.is_agent:
            return True
        return self.rules_read_body

    def _rules(
        self, mail: ParsedMail, classification: Classification, sender: Sender,
        decision: ThreadDecision, now: datetime,
    ) -> RuleOutcome:
        """Rules run on each new ticket and each customer reply; never on agent or
        automatic mail."""
        if classification.automatic or sender.is_agent or not self.settings.rules:
            return RuleOutcome()
        ctx = RuleContext(is_new_ticket=decision.ticket_id is None,
                          business_hours=self.hours.is_open(now.astimezone(self.hours_tz)))
        return evaluate_rules(self.settings.rules, mail, ctx)


def processed_reason(decision: ThreadDecision, fired: RuleOutcome) -> str:
    """The inbox reason of a stored message: the threading rule, then the rules that fired."""
    rules = ", ".join(fired.fired) if fired.fired else "none fired"
    return f"threading {decision.rule.value}: {decision.reason}; rules: {rules}"


def _recipients(envelope_to: Sequence[str], mail: ParsedMail) -> list[str]:
    """Every address the message was sent to: envelope first, then headers."""
    found = list(envelope_to)
    for name in ("delivered-to", "x-original-to"):
        value = mail.header(name)
        if value:
            found.append(value.strip().strip("<>").lower())
    found += list(mail.to) + list(mail.cc)
    return list(dict.fromkeys(found))
