"""The processing spine: one committed inbox message in, ticket changes out.

    parse → dedupe → loop check → identify → thread → rules → store → react

Parsing runs outside the write transaction; everything after it runs inside
one, so a ticket change, its entry and its outgoing mail commit together or
not at all. Processing is idempotent: a message is taken only while `queued`,
and a redelivered copy is recognised by its identity (Message-ID + hash).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlmodel import Session

from maildesk import ticketing
from maildesk.classify import classify
from maildesk.config import Settings, parse_business_hours
from maildesk.domain import (
    Classification,
    InboxState,
    ParsedMail,
    RuleOutcome,
    Sender,
    Source,
    ThreadDecision,
)
from maildesk.identify import identify
from maildesk.identity import content_hash
from maildesk.parse import parse_message
from maildesk.rules import RuleContext
from maildesk.rules import evaluate as evaluate_rules
from maildesk.store import Database, StoreUnavailable, inbox
from maildesk.store.inbox import utcnow
from maildesk.store.raw import raw as session_raw
from maildesk.store.tickets import SessionLookup
from maildesk.thread import ThreadingPolicy
from maildesk.thread import decide as decide_thread

log = logging.getLogger(__name__)
DEFAULT_HOURS = "Mon-Fri 09:00-18:00"


@dataclass(frozen=True)
class Outcome:
    inbox_id: int
    state: InboxState
    ticket_id: int | None = None
    entry_id: int | None = None
    reason: str | None = None


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


class Reactor(Protocol):
    """Turns a stored change into outgoing mail (outbox rows), in the same session.

    Returns one line per message queued or withheld, for logs and `explain`."""

    def react(self, session: Session, change: Change) -> list[str]: ...


@dataclass
class Explanation:
    """The result of a dry run (`maildesk explain`)."""

    mail: ParsedMail
    classification: Classification | None = None
    sender: Sender | None = None
    decision: ThreadDecision | None = None
    outcome: Outcome | None = None
    actions: list[str] = field(default_factory=list)


class _DryRun(Exception):
    pass


class Pipeline:
    def __init__(self, settings: Settings, db: Database, reactors: Sequence[Reactor] = ()) -> None:
        self.settings = settings
        self.db = db
        self.reactors = list(reactors)
        self.policy = ThreadingPolicy(
            desk_addresses=settings.desk_addresses(),
            desk_address=settings.desk.address,
            secret=settings.desk.secret,
            ticket_prefix=settings.desk.ticket_prefix,
            subject_window=settings.threading.subject_window,
        )
        # Business hours for rule conditions: the first SLA policy's, else Mon-Fri 09-18.
        first = settings.sla[0] if settings.sla else None
        self.hours = first.hours if first else parse_business_hours(DEFAULT_HOURS)
        self.hours_tz = first.tzinfo if first else settings.desk.tzinfo

    # --- entry points ---------------------------------------------------------------------

    def process(self, inbox_id: int) -> Outcome:
        return self.process_batch([inbox_id])[0]

    def process_batch(self, inbox_ids: Sequence[int]) -> list[Outcome]:
        """Process claimed inbox messages in one write transaction.

        A message that raises is parked as `failed` and the others are stored;
        StoreUnavailable propagates and leaves everything queued."""
        parsed: dict[int, ParsedMail] = {}
        failures: dict[int, str] = {}
        raws = inbox.load_raw(self.db, inbox_ids)
        for i, raw in raws.items():
            try:
                parsed[i] = parse_message(raw)
            except Exception as exc:  # parse_message should not raise; never trust it
                failures[i] = f"parse: {type(exc).__name__}: {exc}"
        del raws
        try:  # the common case: every message goes through, no savepoints needed
            outcomes = self._store_batch(parsed, failures, isolate=False)
        except StoreUnavailable:
            raise
        except Exception:  # one message raised and the batch rolled back: again, one by one
            log.warning("a message of the batch failed; processing it message by message")
            outcomes = self._store_batch(parsed, failures, isolate=True)
        for i, reason in failures.items():
            inbox.record_failure(self.db, i, reason)
            outcomes[i] = Outcome(i, InboxState.FAILED, reason=reason)
        return [outcomes.get(i) or self._current(i) for i in inbox_ids]

    def _store_batch(
        self, parsed: dict[int, ParsedMail], failures: dict[int, str], *, isolate: bool
    ) -> dict[int, Outcome]:
        """Everything after parsing, in one write transaction. With `isolate`, each message
        runs in a savepoint, so one that raises is rolled back alone and noted in
        `failures`; without it (two statements and some bookkeeping less per message), an
        exception rolls back the whole batch."""
        outcomes: dict[int, Outcome] = {}
        with self.db.write() as s:
            self.db.lock_threading(s)
            envelopes = inbox.load_envelopes(s, list(parsed))
            for i, mail in parsed.items():
                env = envelopes.get(i)
                if env is None or env.state != InboxState.QUEUED.value:
                    continue
                if not isolate:
                    outcomes[i] = self._apply(s, env, mail, self.reactors)[0]
                    continue
                try:
                    with s.begin_nested():
                        outcomes[i] = self._apply(s, env, mail, self.reactors)[0]
                except Exception as exc:
                    log.exception("inbox %s (%s): processing failed", i, mail.message_id)
                    failures[i] = f"{type(exc).__name__}: {exc}"
        return outcomes

    def explain(self, raw: bytes) -> Explanation:
        """Run every step on `raw` and roll back: nothing is stored or sent."""
        mail = parse_message(raw)
        result = Explanation(mail)
        row = inbox.new_row(raw, source=Source.CLI, message_id=mail.message_id,
                            content_hash=content_hash(raw))
        try:
            with self.db.write() as s:
                self.db.lock_threading(s)
                (inbox_id,) = inbox.insert_rows(session_raw(s), [row])
                outcome, trace = self._apply(s, inbox.envelope_of(inbox_id, row), mail,
                                             self.reactors)
                result.outcome = outcome
                result.classification, result.sender, result.decision, result.actions = trace
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
        self, s: Session, row: inbox.Envelope, mail: ParsedMail, reactors: Sequence[Reactor]
    ) -> tuple[Outcome, tuple[Classification | None, Sender | None,
                              ThreadDecision | None, list[str]]]:
        now = utcnow()
        twin = inbox.find_processed_twin(s, row)
        if twin is not None:
            twin_id, twin_ticket = twin
            reason = f"same message as inbox {twin_id}"
            inbox.mark(s, row.id, InboxState.DUPLICATE, reason=reason, ticket_id=twin_ticket,
                       now=now)
            return Outcome(row.id, InboxState.DUPLICATE, twin_ticket, None, reason), (
                None, None, None, [])

        settings = self.settings
        classification = classify(mail, row.envelope_from, settings.desk_addresses())
        recipients = _recipients(row, mail)
        sender = identify(
            mail, agents=settings.agent_addresses(), recipients=recipients,
            desk_addresses=self.policy.desk_addresses, secret=settings.desk.secret,
            trusted_authserv_ids=settings.security.trusted_authserv_id,
            auth_results=[h for h in [mail.header("authentication-results")] if h],
        )
        lookup = SessionLookup(s)
        decision = decide_thread(
            mail, recipients=recipients, sender=sender, lookup=lookup, policy=self.policy,
            now=now,
        )
        trace: tuple[Classification | None, Sender | None, ThreadDecision | None, list[str]] = (
            classification, sender, decision, [])

        if (classification.automatic and decision.ticket_id is None
                and not settings.loop.ticket_from_auto):
            reason = f"automatic message that joins no ticket ({classification.automatic})"
            inbox.mark(s, row.id, InboxState.IGNORED, reason=reason, now=now)
            return Outcome(row.id, InboxState.IGNORED, None, None, reason), trace

        fired = self._rules(mail, classification, sender, decision, now)
        if fired.drop:
            reason = f"dropped by rule {', '.join(fired.fired)}"
            inbox.mark(s, row.id, InboxState.IGNORED, reason=reason, now=now)
            return Outcome(row.id, InboxState.IGNORED, None, None, reason), trace

        stored = ticketing.store_message(
            s, settings=settings, mail=mail, envelope_from=row.envelope_from,
            recipients=recipients, classification=classification, sender=sender,
            decision=decision, inbox_id=row.id, now=now, rules=fired, lookup=lookup,
        )
        inbox.mark(s, row.id, InboxState.PROCESSED, reason=decision.reason,
                   ticket_id=stored.ticket_id, entry_id=stored.entry_id, now=now)
        change = Change(
            inbox_id=row.id, mail=mail, envelope_from=row.envelope_from,
            classification=classification, sender=sender, decision=decision,
            ticket_id=stored.ticket_id, entry_id=stored.entry_id, entry_kind=stored.kind.value,
            new_ticket=stored.new_ticket, now=now, rules=fired,
        )
        actions = [line for r in reactors for line in r.react(s, change)]
        log.info("inbox %s <%s>: ticket #%s (%s)", row.id, mail.message_id or "",
                 stored.ticket_id, decision.rule.value)
        return (Outcome(row.id, InboxState.PROCESSED, stored.ticket_id, stored.entry_id,
                        decision.reason), (classification, sender, decision, actions))


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


def _recipients(row: inbox.Envelope, mail: ParsedMail) -> list[str]:
    """Every address the message was sent to: envelope first, then headers."""
    found = list(row.envelope_to)
    for name in ("delivered-to", "x-original-to"):
        value = mail.header(name)
        if value:
            found.append(value.strip().strip("<>").lower())
    found += list(mail.to) + list(mail.cc)
    return list(dict.fromkeys(found))
