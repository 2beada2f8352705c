"""Apply one processed message to its ticket: create or update, status, entry, references.

Status moves (SPEC §2.3): a new ticket is `new`; a customer message on an
existing ticket sets `open` (reopening `solved`); an agent's public reply sets
`pending`; a note or an automatic message changes nothing. An agent's commands
(`agent_mail`) run after these moves and before the ticket's one save, so `#status`
wins over the default and every field change is saved together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from maildesk import agent_mail, deadlines
from maildesk.addresses import is_desk_recipient
from maildesk.agent_mail import AgentPlan
from maildesk.config import Settings
from maildesk.domain import (
    Classification,
    EntryKind,
    ParsedMail,
    RuleOutcome,
    Sender,
    Status,
    ThreadDecision,
)
from maildesk.store import tickets
from maildesk.thread import own_keys, referenced_ids, subject_key

if TYPE_CHECKING:
    from maildesk.store.raw import Tx


@dataclass(frozen=True)
class Stored:
    ticket_id: int
    entry_id: int
    kind: EntryKind
    new_ticket: bool


def entry_kind(classification: Classification, sender: Sender) -> EntryKind:
    if classification.automatic:
        return EntryKind.SYSTEM
    if sender.is_agent:
        return EntryKind.AGENT_REPLY if sender.verified else EntryKind.NOTE
    return EntryKind.CUSTOMER


def store_message(
    s: Tx, *, settings: Settings, mail: ParsedMail, envelope_from: str | None,
    recipients: Sequence[str], classification: Classification, sender: Sender,
    decision: ThreadDecision, inbox_id: int | None, now: datetime,
    rules: RuleOutcome | None = None, lookup: tickets.SessionLookup | None = None,
    agent: AgentPlan | None = None,
) -> Stored:
    kind = agent.entry_kind if agent else entry_kind(classification, sender)
    new_ticket = decision.ticket_id is None
    lookup = lookup or tickets.SessionLookup(s)
    if new_ticket:
        ticket = _open_ticket(s, settings, mail, recipients, now,
                              requester=agent.requester if agent else None)
    else:
        row = lookup.row(decision.ticket_id or 0)
        if row is None:
            raise LookupError(f"ticket #{decision.ticket_id} vanished during processing")
        ticket = row
    for other in decision.merge:
        tickets.merge(s, lookup, ticket, other, now)
    for other in decision.link_to:
        tickets.link(s, ticket.id, other, decision.reason)
    changes: list[str] = []
    if agent is not None:  # `#merge`: from here on, the target is the ticket
        ticket, changes = agent_mail.merge_step(s, lookup, ticket, agent, now)

    if not new_ticket or kind is EntryKind.AGENT_REPLY:
        _move_status(ticket, kind, now)
    if kind in (EntryKind.CUSTOMER, EntryKind.AGENT_REPLY):
        ticket.last_activity_at = now
    if kind is EntryKind.CUSTOMER or (agent is not None and agent.requester):
        if kind is EntryKind.CUSTOMER:
            ticket.last_customer_at = now
        people = [p for p in _people(settings, mail, sender) if p != ticket.requester]
        tickets.add_participants(s, ticket.id, people, new=new_ticket)
    if kind is EntryKind.AGENT_REPLY:
        ticket.agent_touched = True
        ticket.first_response_at = ticket.first_response_at or now
    if agent is not None:
        changes += agent_mail.apply(ticket, agent, now)
    if rules is not None:
        apply_rules(s, settings, ticket, rules)
    ticket.updated_at = now
    deadlines.refresh(s, settings, ticket, now=now, customer_wrote=kind is EntryKind.CUSTOMER,
                      agent_replied=kind is EntryKind.AGENT_REPLY, new=new_ticket)
    tickets.save(s, ticket)

    fallback = requester_of(mail)[1] if new_ticket else None
    entry_id = tickets.add_entry(
        s, ticket_id=ticket.id, kind=kind, from_addr=mail.from_addr or envelope_from,
        subject=mail.subject, body=agent.text if agent else mail.display_body, now=now,
        message_id=mail.message_id, inbox_id=inbox_id,
        verified=sender.verified if sender.is_agent else None,
        thread_rule=decision.rule.value,
        thread_reason=f"{decision.reason}; {fallback}" if fallback else decision.reason,
        attachments=mail.attachments,
    )
    if changes and agent is not None:  # the ticket's history says who changed what
        tickets.add_entry(
            s, ticket_id=ticket.id, kind=EntryKind.SYSTEM, from_addr=agent.agent,
            subject=mail.subject, body=f"{agent.agent} by mail: {'; '.join(changes)}",
            now=now, message_id=None, thread_rule=decision.rule.value,
            thread_reason=f"commands of inbox message {inbox_id}")
    keys = [(k, "own") for k in own_keys(mail)] + [(k, "ref") for k in referenced_ids(mail)]
    tickets.add_refs(s, ticket.id, keys, new=new_ticket and not decision.merge)
    return Stored(ticket.id, entry_id, kind, new_ticket)


def _open_ticket(
    s: Tx, settings: Settings, mail: ParsedMail, recipients: Sequence[str],
    now: datetime, requester: str | None = None,
) -> tickets.Ticket:
    """A new ticket; `requester` when an agent opens it for a customer (#requester)."""
    reply_to = None if requester else (mail.reply_to[0] if mail.reply_to else None)
    requester = requester or requester_of(mail)[0]
    queue = next(
        (q for q in (settings.queue_for_address(r) for r in recipients) if q),
        settings.default_queue,
    )
    subject = " ".join(mail.subject.split()) or "(no subject)"
    row = tickets.create(
        s, subject=subject[:998], subject_key=subject_key(subject, settings.desk.ticket_prefix),
        requester=requester, reply_to=reply_to, queue=queue, now=now,
    )
    tickets.add_participants(s, row.id, [requester], role="requester", new=True)
    return row


def requester_of(mail: ParsedMail) -> tuple[str, str | None]:
    """The requester (SPEC §2.3): the From address as a mail client reads it; only when
    none can be read, the Sender's, then the first Reply-To (never the envelope sender,
    which is a bounce address, not a person); and a note saying so for the entry."""
    if mail.from_addr:
        return mail.from_addr, None
    for address, header in ((mail.sender_addr, "Sender"),
                            (mail.reply_to[0] if mail.reply_to else None, "Reply-To")):
        if address:
            return address, f"requester taken from {header}: no address in From"
    return "unknown", "requester unknown: no address in From, Sender or Reply-To"


def _move_status(ticket: tickets.Ticket, kind: EntryKind, now: datetime) -> None:
    status = Status(ticket.status)
    if kind is EntryKind.CUSTOMER and status in (Status.NEW, Status.PENDING, Status.SOLVED):
        ticket.status = Status.OPEN.value
        ticket.solved_at = None
    elif kind is EntryKind.AGENT_REPLY and status is not Status.CLOSED:
        ticket.status = Status.PENDING.value


def _people(settings: Settings, mail: ParsedMail, sender: Sender) -> list[str]:
    """Who takes part in the conversation: the sender and the CCs, never desk or agents."""
    skip = settings.agent_addresses() | settings.desk_addresses()
    people = [sender.address] if sender.address else []
    people += [a for a in (*mail.to, *mail.cc) if "@" in a]
    desks = settings.desk_addresses()
    return [a for a in people if a not in skip and not is_desk_recipient(a, desks)]


def apply_rules(s: Tx, settings: Settings, ticket: tickets.Ticket, rules: RuleOutcome) -> None:
    """Field changes asked by rules; queue first, so an assignee strategy sees the new queue."""
    if rules.queue:
        ticket.queue = rules.queue
    if rules.priority:
        ticket.priority = rules.priority.value
    if rules.status:
        ticket.status = rules.status.value
    if rules.tags:
        ticket.tags = " ".join(dict.fromkeys([*ticket.tags.split(), *rules.tags]))
    if rules.assignee:
        ticket.assignee = pick_assignee(s, settings, ticket.queue, rules.assignee)


def pick_assignee(s: Tx, settings: Settings, queue: str, how: str) -> str | None:
    """An address as given, or the next agent of the queue by `round_robin` / `least_open`."""
    if "@" in how:
        return how
    agents = list(settings.queue_agents(queue))
    if not agents:
        return None
    if how == "least_open":
        counts = tickets.open_counts(s, agents)
        return min(agents, key=lambda a: (counts[a], agents.index(a)))
    last = tickets.last_assignee(s, queue)
    return agents[(agents.index(last) + 1) % len(agents)] if last in agents else agents[0]
