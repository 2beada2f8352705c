"""Service-level storage: a ticket's pauses, the scheduled mail sent once, and the
index-backed reads of the scheduler's jobs.

"Exactly once" is a unique key, not a check before an insert: `claim` inserts the key of
a reminder, breach or auto-close (ticket, target, due time, kind), or of a digest (agent,
local day), with ON CONFLICT DO NOTHING, in the transaction that writes its outbox rows,
and says whether this transaction got it. A second scanner (another thread, process or
node) waits for the first one's commit and finds the key taken; a crash rolls back the
key with the mail. Hand-written SQL (store.raw) on the session's connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from maildesk.store import tickets
from maildesk.store.raw import placeholders, raw
from maildesk.store.tickets import Ticket

if TYPE_CHECKING:  # not at run time: `maildesk sla show` runs without SQLAlchemy
    from maildesk.store.raw import Tx

OPEN_STATUSES = ("new", "open", "pending")


@dataclass(frozen=True)
class Pause:
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True)
class SentMail:
    target: str
    due_at: datetime
    kind: str
    recipients: tuple[str, ...]
    created_at: datetime


# --- pauses ------------------------------------------------------------------------------


def add_pause(s: Tx, ticket_id: int, started: datetime, ended: datetime) -> None:
    r = raw(s)
    r.run("INSERT INTO sla_pause (ticket_id, started_at, ended_at) VALUES (?, ?, ?)",
          (ticket_id, r.time(started), r.time(ended)))


def pauses(s: Tx, ticket_id: int) -> list[Pause]:
    """The ended pauses of a ticket, oldest first."""
    r = raw(s)
    rows = r.rows("SELECT started_at, ended_at FROM sla_pause WHERE ticket_id = ?"
                  " ORDER BY started_at, id", (ticket_id,))
    out = []
    for a, b in rows:
        started, ended = r.read_time(a), r.read_time(b)
        assert started is not None and ended is not None
        out.append(Pause(started, ended))
    return out


# --- the keys of mail sent once ---------------------------------------------------------


def claim(s: Tx, *, ticket_id: int, target: str, due_at: datetime, kind: str,
          recipients: Sequence[str], now: datetime) -> bool:
    """Take the key of one scheduled mail; False when it was already taken (sent before,
    or by a scanner that committed first)."""
    r = raw(s)
    found = r.one(
        "INSERT INTO sla_mail (ticket_id, target, due_at, kind, recipients, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (ticket_id, target, due_at, kind) DO NOTHING RETURNING id",
        (ticket_id, target, r.time(due_at), kind, ",".join(recipients), r.time(now)))
    return found is not None


def sent(s: Tx, ticket_id: int) -> list[SentMail]:
    r = raw(s)
    rows = r.rows("SELECT target, due_at, kind, recipients, created_at FROM sla_mail"
                  " WHERE ticket_id = ? ORDER BY created_at, id", (ticket_id,))
    out = []
    for target, due_at, kind, recipients, created in rows:
        due, at = r.read_time(due_at), r.read_time(created)
        assert due is not None and at is not None
        out.append(SentMail(target, due, kind, tuple(a for a in recipients.split(",") if a), at))
    return out


def claim_digest(s: Tx, *, agent: str, day: str, listed: int, now: datetime) -> bool:
    """Take the key of an agent's digest for one local day (YYYY-MM-DD)."""
    r = raw(s)
    found = r.one("INSERT INTO digest_mail (agent, day, tickets, created_at) VALUES (?, ?, ?, ?)"
                  " ON CONFLICT (agent, day) DO NOTHING RETURNING agent",
                  (agent, day, listed, r.time(now)))
    return found is not None


def digests_of(s: Tx, day: str) -> set[str]:
    """The agents whose digest of `day` is done."""
    return {a for (a,) in raw(s).rows("SELECT agent FROM digest_mail WHERE day = ?", (day,))}


# --- the jobs' reads and writes -----------------------------------------------------------

_DUE = "sla_next_at <= ? ORDER BY sla_next_at, id LIMIT ?"


def due_tickets(s: Tx, now: datetime, limit: int) -> list[Ticket]:
    """Tickets whose next reminder or breach may be due at `now`: one range of the
    `sla_next_at` index, so the scan costs what is due, not what is open."""
    return tickets.find(s, _DUE, (raw(s).time(now), limit))


def scan_plan(s: Tx, now: datetime) -> str:
    """The database's plan for the scan's read (EXPLAIN), one line per step."""
    r = raw(s)
    sql = f"SELECT id FROM ticket WHERE {_DUE}"
    if r.sqlite:
        return "\n".join(str(row[-1]) for row in r.rows(f"EXPLAIN QUERY PLAN {sql}",
                                                        (r.time(now), 100)))
    return "\n".join(str(row[0]) for row in r.rows(f"EXPLAIN {sql}", (now, 100)))


def save_sla(s: Tx, t: Ticket) -> None:
    """Write back what the scan recomputed: the policy, the due times, the next event."""
    r = raw(s)
    r.run("UPDATE ticket SET sla_policy = ?, first_response_due = ?, next_response_due = ?,"
          " resolution_due = ?, sla_next_at = ? WHERE id = ?",
          (t.sla_policy, r.time(t.first_response_due), r.time(t.next_response_due),
           r.time(t.resolution_due), r.time(t.sla_next_at), t.id))


def waiting_since(s: Tx, status: str, before: datetime, limit: int,
                  after: tuple[datetime, int] | None = None) -> list[Ticket]:
    """Tickets in `status` that have waited since before `before`, longest first (the
    index on status and paused_since); `after`: continue past this (paused_since, id)."""
    r = raw(s)
    more, params = "", [status, r.time(before)]
    if after is not None:
        more = " AND (paused_since > ? OR (paused_since = ? AND id > ?))"
        params += [r.time(after[0]), r.time(after[0]), after[1]]
    return tickets.find(s, f"status = ? AND paused_since <= ?{more} AND merged_into IS NULL"
                           " ORDER BY paused_since, id LIMIT ?", (*params, limit))


def open_tickets_of(s: Tx, agents: Sequence[str]) -> list[Ticket]:
    """Open tickets (new, open, pending) assigned to any of `agents`, oldest first."""
    if not agents:
        return []
    return tickets.find(
        s, f"assignee IN ({placeholders(len(agents))}) AND status IN"
           f" ({placeholders(len(OPEN_STATUSES))}) AND merged_into IS NULL ORDER BY id",
        (*agents, *OPEN_STATUSES))
