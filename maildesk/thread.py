"""Which ticket a message belongs to, and why (SPEC §2.2).

`decide` is pure: every fact about stored tickets comes through a
`ThreadLookup`, so the same function serves processing, `explain` and tests.
The rules are tried in the order of the spec; the first that matches wins.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from maildesk import addresses
from maildesk.domain import ParsedMail, Sender, Status, ThreadDecision, ThreadRule

_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|fwd?|rv|antw|sv|wg|tr|res|enc|odp|rif|vs|ynt|r|i)\s*(?:\[\d+\])?\s*:\s*)+",
    re.I)
_GENERIC_EDGES = " \t!?.,;:()[]{}<>-_*\"'¡¿…"
THREAD_INDEX_ROOT = 22  # bytes: FILETIME (6) + conversation GUID (16)


@dataclass(frozen=True)
class TicketFacts:
    id: int
    status: Status
    created_at: datetime
    agent_touched: bool


class ThreadLookup(Protocol):
    """What threading needs to know about stored tickets (merges already followed)."""

    def ticket(self, ticket_id: int) -> TicketFacts | None: ...

    def is_participant(self, ticket_id: int, address: str) -> bool: ...

    def tickets_by_keys(self, keys: Sequence[str]) -> list[TicketFacts]: ...

    def ticket_by_subject(
        self, sender: str, subject_key: str, since: datetime
    ) -> TicketFacts | None: ...

    def ticket_of_outbox(self, outbox_id: int) -> int | None: ...


@dataclass(frozen=True)
class ThreadingPolicy:
    desk_addresses: frozenset[str]
    desk_address: str
    secret: str
    ticket_prefix: str
    subject_window: timedelta
    # subject keys (`generic_keys`) that never join by subject alone: "help", "your mail"
    generic_subjects: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()  # their own reply addresses thread too (rule 1)


def subject_key(subject: str, prefix: str) -> str:
    """The subject with reply/forward prefixes and ticket tags removed, case-folded."""
    s = addresses.tag_pattern(prefix).sub(" ", subject)
    previous = None
    while previous != s:
        previous = s
        s = _PREFIX.sub("", s)
        s = addresses.tag_pattern(prefix).sub(" ", s)
    return " ".join(s.split()).casefold()


def generic_keys(subjects: Iterable[str], prefix: str) -> frozenset[str]:
    """`threading.generic_subjects` as the keys `_by_subject` compares with."""
    return frozenset(_generic_form(subject_key(s, prefix)) for s in subjects)


def _generic_form(key: str) -> str:
    """A subject key without the punctuation around it: "Help!" and "(no subject)" are
    the same generic subject as "help" and "no subject"."""
    return key.strip(_GENERIC_EDGES)


def thread_index_key(value: str | None) -> str | None:
    """The conversation root of an Outlook Thread-Index, as a lookup key."""
    if not value:
        return None
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < THREAD_INDEX_ROOT or (len(raw) - THREAD_INDEX_ROOT) % 5:
        return None
    return "ti:" + base64.b64encode(raw[:THREAD_INDEX_ROOT]).decode("ascii")


def own_keys(mail: ParsedMail) -> list[str]:
    """Keys this message is known by: its Message-ID and its Thread-Index root."""
    keys = [mail.message_id] if mail.message_id else []
    ti = thread_index_key(mail.thread_index)
    return keys + ([ti] if ti else [])


def referenced_ids(mail: ParsedMail) -> list[str]:
    ids = list(mail.in_reply_to) + list(mail.references)
    if mail.dsn and mail.dsn.original_message_id:
        ids.append(mail.dsn.original_message_id)
    seen: dict[str, None] = {}
    for i in ids:
        if "@" in i and i != mail.message_id:
            seen.setdefault(i, None)
    return list(seen)


def decide(
    mail: ParsedMail,
    *,
    recipients: Iterable[str],
    sender: Sender,
    lookup: ThreadLookup,
    policy: ThreadingPolicy,
    now: datetime,
) -> ThreadDecision:
    recipients = [r.lower() for r in recipients]
    found = (
        _by_bounce_address(recipients, lookup, policy)
        or _by_token(recipients, sender, lookup, policy)
        or _by_tag(mail, sender, lookup, policy)
        or _by_references(mail, lookup)
        or _by_subject(mail, sender, lookup, policy, now)
    )
    if found is None:
        return ThreadDecision(None, ThreadRule.NEW_TICKET,
                              "no ticket matched by token, tag, references or subject")
    return found


def _join(ticket: TicketFacts, rule: ThreadRule, reason: str) -> ThreadDecision:
    if ticket.status == Status.CLOSED:
        return ThreadDecision(
            None, ThreadRule.REOPEN_CLOSED,
            f"{reason}; ticket #{ticket.id} is closed: new ticket linked to it",
            link_to=(ticket.id,),
        )
    return ThreadDecision(ticket.id, rule, reason)


def _by_bounce_address(
    recipients: list[str], lookup: ThreadLookup, policy: ThreadingPolicy
) -> ThreadDecision | None:
    for r in recipients:
        outbox_id = addresses.outbox_from_bounce_address(r, policy.desk_address, policy.secret)
        ticket_id = lookup.ticket_of_outbox(outbox_id) if outbox_id is not None else None
        ticket = lookup.ticket(ticket_id) if ticket_id is not None else None
        if ticket:
            return ThreadDecision(
                ticket.id, ThreadRule.TOKEN_ADDRESS,
                f"sent to the bounce address {r} of outgoing message {outbox_id}",
            )
    return None


def _by_token(
    recipients: list[str], sender: Sender, lookup: ThreadLookup, policy: ThreadingPolicy
) -> ThreadDecision | None:
    """Rule 1: a customer's or an agent's reply address of a ticket. The sender's own
    agent address goes first, so an agent's mail lands where it is verified."""
    likely = sender.address if sender.is_agent else None
    targets = [(r, t) for r in recipients if (t := addresses.reply_target(
        r, policy.desk_addresses, policy.secret, policy.agents, likely=likely)) is not None]
    targets.sort(key=lambda rt: not (sender.is_agent and rt[1].agent == sender.address))
    for r, target in targets:
        ticket = lookup.ticket(target.ticket_id)
        if ticket:
            whose = "an agent's reply address" if target.agent else "reply address"
            return _join(ticket, ThreadRule.TOKEN_ADDRESS, f"sent to {whose} {r}")
    return None


def _by_tag(
    mail: ParsedMail, sender: Sender, lookup: ThreadLookup, policy: ThreadingPolicy
) -> ThreadDecision | None:
    for m in addresses.tag_pattern(policy.ticket_prefix).finditer(mail.subject):
        ticket = lookup.ticket(int(m.group(1)))
        if ticket is None:
            continue
        if sender.is_agent or (
            sender.address and lookup.is_participant(ticket.id, sender.address)
        ):
            who = "an agent" if sender.is_agent else "a participant"
            return _join(ticket, ThreadRule.SUBJECT_TAG, f"subject tag {m.group(0)} from {who}")
    return None


def _by_references(mail: ParsedMail, lookup: ThreadLookup) -> ThreadDecision | None:
    ids = referenced_ids(mail) + ([mail.message_id] if mail.message_id else [])
    ti = thread_index_key(mail.thread_index)
    for rule, keys, reason in (
        (ThreadRule.REFERENCES, ids,
         "In-Reply-To/References or Message-ID link to a message on the ticket"),
        (ThreadRule.THREAD_INDEX, [ti] if ti else [],
         "Outlook Thread-Index continues a conversation on the ticket"),
    ):
        tickets = lookup.tickets_by_keys(keys) if keys else []
        if tickets:
            return _join_oldest(tickets, rule, reason)
    return None


def _join_oldest(tickets: list[TicketFacts], rule: ThreadRule, reason: str) -> ThreadDecision:
    """One message links several tickets: join the oldest; merge the others into it
    when no agent has touched any of them, else link them."""
    live = [t for t in tickets if t.status != Status.CLOSED] or tickets
    live.sort(key=lambda t: (t.created_at, t.id))
    oldest, others = live[0], live[1:]
    decision = _join(oldest, rule, reason)
    other_ids = tuple(t.id for t in others if t.status != Status.CLOSED)
    if not other_ids or decision.ticket_id is None:
        return decision
    if not any(t.agent_touched for t in live):
        return ThreadDecision(
            oldest.id, rule, f"{reason}; merges tickets {_ids(other_ids)} into #{oldest.id}",
            merge=other_ids,
        )
    return ThreadDecision(
        oldest.id, rule, f"{reason}; also linked to {_ids(other_ids)}", link_to=other_ids
    )


def _by_subject(
    mail: ParsedMail, sender: Sender, lookup: ThreadLookup, policy: ThreadingPolicy, now: datetime
) -> ThreadDecision | None:
    if policy.subject_window <= timedelta(0) or not sender.address:
        return None
    key = subject_key(mail.subject, policy.ticket_prefix)
    if not _generic_form(key) or _generic_form(key) in policy.generic_subjects:
        return None  # "help", "your mail": two conversations can share it
    ticket = lookup.ticket_by_subject(sender.address, key, now - policy.subject_window)
    if ticket is None:
        return None
    return ThreadDecision(
        ticket.id, ThreadRule.SUBJECT_WINDOW,
        f"same sender and subject {_quoted(key)} within {policy.subject_window}",
    )


def _quoted(text: str, limit: int = 100) -> str:
    """A subject as a reason quotes it: a 200 KB subject made a 200 KB inbox reason."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in ids)
