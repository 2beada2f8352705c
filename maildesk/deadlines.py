"""Keep a ticket's SLA state in step with each change to it: `refresh` is called right
before the ticket is saved, in the transaction of the change (processing a message, a
merge, an auto-close), so the due times are never older than the ticket.

It keeps, on the `store.tickets.Ticket` record:
- the pause in progress: `paused_since` is set when the ticket starts waiting (pending,
  or solved), and when it stops waiting the span goes to `sla_pause`;
- the next-response clock: the first customer message after an agent reply starts it
  (`next_response_from`), the next agent reply stops it (`next_response_at`) and counts
  it as met or breached;
- the policy (`sla_policy`), the three due times, and `sla_next_at`, the earliest
  reminder or breach still to come, which is what the SLA scan reads.
The arithmetic is maildesk.sla's; this module only reads and writes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from maildesk import sla
from maildesk.business_time import Calendar
from maildesk.config import Settings, parse_business_hours
from maildesk.store import sla as store
from maildesk.store import tickets
from maildesk.store.tickets import Ticket

if TYPE_CHECKING:  # not at run time: `maildesk sla show` runs without SQLAlchemy
    from maildesk.store import Database
    from maildesk.store.raw import Tx


def refresh(s: Tx, settings: Settings, ticket: Ticket, *, now: datetime,
            customer_wrote: bool = False, agent_replied: bool = False,
            new: bool = False) -> dict[sla.Target, sla.TargetDue]:
    """Bring the ticket's SLA fields up to date after a change made at `now`.

    `customer_wrote`: the change is a customer message; `agent_replied`: an agent reply
    that reached the customer (what stops the response clocks); `new`: the ticket was
    created in this transaction (it has no pauses to read)."""
    _track_pause(s, ticket, now)
    _track_next_response(ticket, now, customer_wrote=customer_wrote,
                         agent_replied=agent_replied)
    policy = sla.policy_for(settings.sla, ticket.queue, ticket.priority)
    track_business_times(ticket, business_calendar(settings, policy))
    if policy is None:
        ticket.sla_policy = None
        ticket.first_response_due = ticket.next_response_due = ticket.resolution_due = None
        ticket.sla_next_at = None
        return {}
    dues = sla.due(facts(s, ticket, new=new), policy)
    apply(ticket, policy.name, dues)
    return dues


def recompute_open(db: Database, settings: Settings, now: datetime, batch: int = 500) -> int:
    """Due times of every unsolved ticket again, from its stored facts and the policies
    of `settings` (after [[sla]] changed: `maildesk sla recompute`); returns how many
    changed. Batches in id order, each in a write transaction holding the processing lock."""
    changed, after = 0, 0
    while True:
        with db.write() as s:
            db.lock_threading(s)
            found = tickets.find(
                s, f"id > ? AND status IN ({', '.join('?' * len(store.OPEN_STATUSES))})"
                   " AND merged_into IS NULL ORDER BY id LIMIT ?",
                (after, *store.OPEN_STATUSES, batch))
            for t in found:
                before = (t.sla_policy, t.first_response_due, t.next_response_due,
                          t.resolution_due, t.sla_next_at)
                policy = sla.policy_for(settings.sla, t.queue, t.priority)
                if policy is None:
                    t.sla_policy = t.first_response_due = t.next_response_due = None
                    t.resolution_due = t.sla_next_at = None
                else:
                    apply(t, policy.name, sla.due(facts(s, t), policy))
                if before != (t.sla_policy, t.first_response_due, t.next_response_due,
                              t.resolution_due, t.sla_next_at):
                    store.save_sla(s, t)
                    changed += 1
        if len(found) < batch:
            return changed
        after = found[-1].id


def facts(s: Tx, ticket: Ticket, *, new: bool = False) -> sla.Facts:
    closed = () if new else tuple((p.started_at, p.ended_at) for p in store.pauses(s, ticket.id))
    return sla.Facts(
        status=ticket.status, created_at=ticket.created_at,
        first_response_at=ticket.first_response_at,
        next_response_from=ticket.next_response_from, next_response_at=ticket.next_response_at,
        solved_at=done_at(ticket), paused_since=ticket.paused_since, pauses=closed,
    )


def done_at(ticket: Ticket) -> datetime | None:
    """When a solved or closed ticket was done: solved, else closed (a merge, `#status
    closed`), else its last change."""
    if ticket.status not in sla.DONE:
        return ticket.solved_at
    return ticket.solved_at or ticket.closed_at or ticket.updated_at


def apply(ticket: Ticket, policy: str, dues: dict[sla.Target, sla.TargetDue]) -> None:
    """The due times and the next event onto the record (saved by the caller)."""

    def at(target: sla.Target) -> datetime | None:
        d = dues.get(target)
        return d.due if d else None

    ticket.sla_policy = policy
    ticket.first_response_due = at(sla.Target.FIRST_RESPONSE)
    ticket.next_response_due = at(sla.Target.NEXT_RESPONSE)
    ticket.resolution_due = at(sla.Target.RESOLUTION)
    upcoming = sla.events(dues, ticket.status) if ticket.merged_into is None else []
    ticket.sla_next_at = upcoming[0].at if upcoming else None


DEFAULT_HOURS = "Mon-Fri 09:00-18:00"  # where no policy says: rules' business_hours too
_default_calendars: dict[int, tuple[Settings, Calendar]] = {}


def business_calendar(settings: Settings, policy: sla.Policy | None) -> Calendar:
    """The calendar of a ticket's business times in reports: its policy's, else the first
    policy's, else Mon-Fri 09:00-18:00 in desk.timezone (the hours rules use)."""
    if policy is not None:
        return sla.calendar(policy)
    if settings.sla:
        return sla.calendar(settings.sla[0])
    found = _default_calendars.get(id(settings))
    if found is None or found[0] is not settings:
        if len(_default_calendars) > 16:  # reloads: forget the old settings' calendars
            _default_calendars.clear()
        cal = sla.default_calendar(parse_business_hours(DEFAULT_HOURS), settings.desk.tzinfo)
        found = _default_calendars[id(settings)] = (settings, cal)
    return found[1]


def track_business_times(ticket: Ticket, cal: Calendar) -> None:
    """First response and resolution in business seconds, for reports (computed again at
    each change: a merge can move the creation time; a reopened ticket is not done)."""
    def seconds(end: datetime | None) -> float | None:
        return cal.elapsed(ticket.created_at, end).total_seconds() if end is not None else None

    ticket.first_response_business = seconds(ticket.first_response_at)
    ticket.resolution_business = seconds(done_at(ticket) if ticket.status in sla.DONE
                                         else None)


def _track_pause(s: Tx, ticket: Ticket, now: datetime) -> None:
    waiting = ticket.status in sla.WAITING and ticket.merged_into is None
    if waiting and ticket.paused_since is None:
        ticket.paused_since = now
    elif not waiting and ticket.paused_since is not None:
        store.add_pause(s, ticket.id, ticket.paused_since, now)
        ticket.paused_since = None


def _track_next_response(ticket: Ticket, now: datetime, *, customer_wrote: bool,
                         agent_replied: bool) -> None:
    running = ticket.next_response_from is not None and ticket.next_response_at is None
    if agent_replied and running:
        due = ticket.next_response_due
        if due is not None and now > due:
            ticket.next_response_breached += 1
        else:
            ticket.next_response_met += 1
        ticket.next_response_at = now
    elif customer_wrote and not running and ticket.first_response_at is not None:
        ticket.next_response_from = now
        ticket.next_response_at = None


DEFAULT_AUTO_CLOSE = timedelta(days=7)  # SPEC §2.7: pending tickets of no policy too


def auto_close_after(settings: Settings, ticket: Ticket) -> timedelta:
    """How long this ticket may wait on its customer before it is solved (0: for ever)."""
    policy = sla.policy_for(settings.sla, ticket.queue, ticket.priority)
    return policy.auto_close_after if policy is not None else DEFAULT_AUTO_CLOSE
