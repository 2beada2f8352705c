"""Auto-close (SPEC §2.7): a `pending` ticket whose customer has not answered for its
policy's `auto_close_after` (7 days without a policy; "0" never) becomes `solved`, with a
system entry and the `solved` template to the customer, once.

`auto_close(now)` reads pending tickets by how long they have waited (the index on status
and `paused_since`, which maildesk.deadlines sets when a ticket starts waiting and clears
when the customer answers), in a write transaction that holds the processing lock. The
key (ticket, resolution, the instant it became due, auto_close) is taken before anything
changes, in the same transaction as the change and the mail (store.sla.claim): a second
node or a retried run closes nothing twice. A ticket that waits again later has a new
pause, hence a new key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session

from maildesk import deadlines, metrics, sla
from maildesk.config import Settings
from maildesk.domain import EntryKind, Status
from maildesk.outbound.compose import Composer, Draft, MailKind
from maildesk.store import Database, tickets
from maildesk.store import sla as store
from maildesk.store.tickets import Ticket

log = logging.getLogger(__name__)
BATCH = 50  # one write transaction each, holding the processing lock: keep it short
SOLVED = "solved"


@dataclass
class CloseResult:
    closed: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def shortest(settings: Settings) -> timedelta | None:
    """The shortest wait any ticket may have; None when auto-close is off for all."""
    waits = [p.auto_close_after for p in settings.sla if p.auto_close_after > timedelta(0)]
    if not any(not p.match.queue and not p.match.priority for p in settings.sla):
        waits.append(deadlines.DEFAULT_AUTO_CLOSE)  # some tickets may match no policy
    return min(waits) if waits else None


def auto_close(db: Database, settings: Settings, composer: Composer, now: datetime
               ) -> CloseResult:
    result = CloseResult()
    wait = shortest(settings)
    if wait is None:
        return result
    with db.read() as s:
        if not store.waiting_since(s, Status.PENDING.value, now - wait, 1):
            return result  # the usual tick: one index probe, no write lock
    cursor: tuple[datetime, int] | None = None
    while True:
        with db.write(durable=False) as s:  # redone if undone: see escalation.scan
            db.lock_threading(s)
            waiting = store.waiting_since(s, Status.PENDING.value, now - wait, BATCH, cursor)
            closed = [t.id for t in waiting if _close(s, settings, composer, t, now, result)]
        metrics.sla_auto_closed.inc(len(closed))
        result.closed += closed
        if len(waiting) < BATCH:
            return result
        last = waiting[-1]
        assert last.paused_since is not None
        cursor = (last.paused_since, last.id)


def _close(s: Session, settings: Settings, composer: Composer, ticket: Ticket, now: datetime,
           result: CloseResult) -> bool:
    wait = deadlines.auto_close_after(settings, ticket)
    since = ticket.paused_since
    if wait <= timedelta(0) or since is None or since + wait > now:
        return False
    customer = ticket.reply_to or ticket.requester
    if not store.claim(s, ticket_id=ticket.id, target=sla.Target.RESOLUTION.value,
                       due_at=since + wait, kind="auto_close", recipients=[customer], now=now):
        return False
    ticket.status = Status.SOLVED.value
    ticket.solved_at = ticket.updated_at = now
    body = (f"Solved automatically: no answer from the customer for {_days(wait)}"
            f" (pending since {since:%Y-%m-%d %H:%M} UTC).")
    entry_id = tickets.add_entry(s, ticket_id=ticket.id, kind=EntryKind.SYSTEM, from_addr=None,
                                 subject=ticket.subject, body=body, now=now, message_id=None)
    deadlines.refresh(s, settings, ticket, now=now)
    tickets.save(s, ticket)
    queued = composer.queue(s, ticket, Draft(template=SOLVED, to=(customer,),
                                             kind=MailKind.NOTIFICATION, entry_id=entry_id), now)
    result.lines.append(f"ticket #{ticket.id}: {body} {queued.note}")
    log.info("ticket #%s: solved automatically after %s pending; %s", ticket.id, _days(wait),
             queued.note)
    return True


def _days(wait: timedelta) -> str:
    if wait % timedelta(days=1) == timedelta(0):
        n = wait.days
        return f"{n} day{'s' if n != 1 else ''}"
    return str(wait)
