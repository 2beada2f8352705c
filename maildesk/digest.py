"""The daily digest (SPEC §2.7): at `[scheduler].digest_at` in `desk.timezone`, each agent
with open tickets (new, open, pending, assigned to them) gets one mail listing them, what
is overdue and what is due today.

`digest(now)` does nothing before digest_at, local time; after it, each agent's (agent,
local day) key is taken in the transaction that queues their mail (store.sla.claim_digest),
so it goes once a day, across restarts at that minute and second nodes alike. An agent
with nothing open takes the key too (nothing is sent that day, even if a ticket comes
later). Started after digest_at, the daemon sends the day's digest late rather than never.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from maildesk import addresses
from maildesk.config import Settings
from maildesk.outbound.compose import Composer, Draft, MailKind
from maildesk.store import Database
from maildesk.store import sla as store
from maildesk.store.tickets import Ticket

log = logging.getLogger(__name__)
TEMPLATE = "digest"


@dataclass
class DigestResult:
    sent: list[str] = field(default_factory=list)  # agents mailed
    lines: list[str] = field(default_factory=list)


def digest(db: Database, settings: Settings, composer: Composer, now: datetime) -> DigestResult:
    result = DigestResult()
    at = settings.scheduler.digest_time
    zone = settings.desk.tzinfo
    local = now.astimezone(zone)
    if at is None or not settings.agents or local.time() < at:
        return result
    day = local.date().isoformat()
    with db.read() as s:
        done = store.digests_of(s, day)
    todo = [a for a in settings.agents if a.email not in done]
    if not todo:
        return result  # the usual case after digest_at: one indexed read a tick
    with db.write(durable=False) as s:  # redone if undone: see escalation.scan
        mine = _by_agent(store.open_tickets_of(s, [a.email for a in todo]))
        for agent in todo:
            listed = mine.get(agent.email, [])
            if not store.claim_digest(s, agent=agent.email, day=day, listed=len(listed), now=now):
                continue
            if not listed:
                continue
            context = _context(settings, listed, now, zone)
            queued = composer.queue(s, None, Draft(
                template=TEMPLATE, to=(agent.email,), kind=MailKind.NOTIFICATION,
                context={**context, "day": day, "agent": {"email": agent.email,
                                                          "name": agent.name}}), now)
            result.lines.append(queued.note)
            if queued.outbox_id is not None:
                result.sent.append(agent.email)
    if result.sent:
        log.info("digest for %s: %s", day, ", ".join(result.sent))
    return result


def _by_agent(tickets: list[Ticket]) -> dict[str, list[Ticket]]:
    out: dict[str, list[Ticket]] = {}
    for t in tickets:
        if t.assignee:
            out.setdefault(t.assignee, []).append(t)
    return out


def next_due(t: Ticket) -> tuple[datetime, str] | None:
    """The earliest unmet due time of a ticket, and its target."""
    unmet = [(t.first_response_due, "first response") if t.first_response_at is None else None,
             (t.next_response_due, "next response") if t.next_response_at is None else None,
             (t.resolution_due, "resolution")]
    found = [(due, what) for due, what in (u for u in unmet if u) if due is not None]
    return min(found) if found else None


def _context(settings: Settings, listed: list[Ticket], now: datetime, zone: tzinfo
             ) -> dict[str, object]:
    today = now.astimezone(zone).date()
    rows, overdue, due_today = [], [], []
    for t in listed:
        nxt = next_due(t)
        due_local = nxt[0].astimezone(zone) if nxt else None
        row = {
            "id": t.id, "tag": addresses.subject_tag(settings.desk.ticket_prefix, t.id),
            "subject": t.subject, "status": t.status, "priority": t.priority,
            "queue": t.queue, "target": nxt[1] if nxt else None,
            "due": f"{due_local:%Y-%m-%d %H:%M} {due_local.tzname()}" if due_local else None,
        }
        rows.append(row)
        if nxt and nxt[0] < now:
            overdue.append(row)
        elif due_local and due_local.date() == today:
            due_today.append(row)
    return {"tickets": rows, "overdue": overdue, "due_today": due_today}
