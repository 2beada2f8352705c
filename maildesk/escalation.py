"""The SLA scan (SPEC §2.7): `sla_reminder` ahead of a due time, `sla_breach` when it
passes unmet, each exactly once per due time.

`scan(now)` reads only the tickets whose `sla_next_at` has come (maildesk.deadlines keeps
it at the earliest reminder or breach still to come), in one write transaction per batch
that holds the processing lock, so no message changes a ticket between our reading it and
our mail. For each one it recomputes the due times from the stored facts (the same
function as processing, so the same instants), and for every reminder or breach whose
time has come:
- a reminder whose due time has passed too is not sent (the breach says more);
- outside the policy's business hours it waits for the next business minute (a scan that
  runs a little after an event that fell inside them, up to GRACE, still sends it),
  except for `urgent` tickets;
- otherwise it takes the event's key (store.sla.claim: ticket, target, due time, kind)
  and, only when this transaction got it, queues the mail through the Composer. The key
  and the outbox rows commit together: a restart, a crash between the two or a second
  scanner sends nothing twice.
A reminder goes to the assignee, else the queue's agents; a breach to them and the
policy's `escalate_to`. Solved, closed and merged tickets get nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session

from maildesk import deadlines, metrics, sla
from maildesk.business_time import Calendar
from maildesk.config import Settings, SlaPolicy
from maildesk.domain import Priority
from maildesk.outbound.compose import Composer, Draft, MailKind
from maildesk.store import Database
from maildesk.store import sla as store
from maildesk.store.tickets import Ticket

log = logging.getLogger(__name__)
GRACE = timedelta(minutes=15)
# Each batch is a write transaction that holds the processing lock (and on SQLite the
# database's one write lock, which intake needs too): a few ms a due ticket, so small.
BATCH = 50
TEMPLATES = {sla.Kind.REMINDER: "sla_reminder", sla.Kind.BREACH: "sla_breach"}


@dataclass
class ScanResult:
    tickets: int = 0  # tickets looked at
    reminders: int = 0
    breaches: int = 0
    deferred: int = 0  # events held back until the next business minute
    lines: list[str] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return self.reminders + self.breaches


def scan(db: Database, settings: Settings, composer: Composer, now: datetime) -> ScanResult:
    """Send the reminders and breaches due at `now`; returns what it did."""
    result = ScanResult()
    with db.read() as s:
        if not store.due_tickets(s, now, 1):
            return result  # the usual tick: one index probe, no write lock
    while True:
        batch = ScanResult()
        # Not waiting for the disk, as processing does not: if a power cut undid this
        # commit, its keys would go with its mail and the next tick would do it again;
        # and the sender's durable claim flushes it before any of it is sent.
        with db.write(durable=False) as s:
            db.lock_threading(s)
            due = store.due_tickets(s, now, BATCH)
            for ticket in due:
                _visit(s, settings, composer, ticket, now, batch)
        metrics.sla_reminders.inc(batch.reminders)  # counted once committed
        metrics.sla_breaches.inc(batch.breaches)
        for name in ("tickets", "reminders", "breaches", "deferred"):
            setattr(result, name, getattr(result, name) + getattr(batch, name))
        result.lines += batch.lines
        if len(due) < BATCH:
            return result


def _visit(s: Session, settings: Settings, composer: Composer, ticket: Ticket, now: datetime,
           result: ScanResult) -> None:
    result.tickets += 1
    policy = sla.policy_for(settings.sla, ticket.queue, ticket.priority)
    if policy is None or ticket.merged_into is not None:
        ticket.sla_next_at = None
        store.save_sla(s, ticket)
        return
    dues = sla.due(deadlines.facts(s, ticket), policy)
    deadlines.apply(ticket, policy.name, dues)
    cal = sla.calendar(policy)
    later: list[datetime] = []
    for event in sla.events(dues, ticket.status):
        if event.at > now:
            later.append(event.at)
        elif event.kind is sla.Kind.REMINDER and event.due <= now:
            continue  # too late to remind: the breach is due as well
        elif not sendable(cal, ticket.priority, event.at, now):
            opens = cal.next_open(now)
            if opens is not None:
                later.append(opens)
            result.deferred += 1
        else:
            _send(s, settings, composer, ticket, policy, event, now, result)
    ticket.sla_next_at = min(later) if later else None
    store.save_sla(s, ticket)


def sendable(cal: Calendar, priority: str, at: datetime, now: datetime) -> bool:
    """May an event of `at` go out at `now`? Urgent tickets: always; others inside
    business hours, or just after an event that fell inside them (its closing minute)."""
    if priority == Priority.URGENT.value or cal.is_open(now):
        return True
    return now - at <= GRACE and cal.is_open(at, inclusive_end=True)


def recipients(settings: Settings, ticket: Ticket, policy: SlaPolicy, kind: sla.Kind
               ) -> list[str]:
    agents = [ticket.assignee] if ticket.assignee else list(settings.queue_agents(ticket.queue))
    if kind is sla.Kind.BREACH:
        agents += policy.escalate_to
    return list(dict.fromkeys(agents))


def _send(s: Session, settings: Settings, composer: Composer, ticket: Ticket, policy: SlaPolicy,
          event: sla.Event, now: datetime, result: ScanResult) -> None:
    to = recipients(settings, ticket, policy, event.kind)
    if not store.claim(s, ticket_id=ticket.id, target=event.target.value, due_at=event.due,
                       kind=event.kind.value, recipients=to, now=now):
        return  # sent before, or by a scanner that committed first
    if event.kind is sla.Kind.REMINDER:
        result.reminders += 1
    else:
        result.breaches += 1
    local = event.due.astimezone(policy.tzinfo)
    due = f"{local:%Y-%m-%d %H:%M} {local.tzname()}"
    context = {"sla": {"policy": policy.name, "target": event.target.label, "due": due,
                       "due_iso": event.due.isoformat(), "kind": event.kind.value}}
    names = {a.email: a.name for a in settings.agents}
    what = f"ticket #{ticket.id}: {event.kind.value} for {event.target.label} due {due}"
    if not to:
        result.lines.append(f"{what}: nobody to tell (no assignee, no agents)")
    for addr in to:
        queued = composer.queue(s, ticket, Draft(
            template=TEMPLATES[event.kind], to=(addr,), kind=MailKind.NOTIFICATION,
            context={**context, "agent": {"email": addr, "name": names.get(addr, "")}},
        ), now)
        result.lines.append(queued.note)
    log.info("%s: %s", what, ", ".join(to) or "nobody")
