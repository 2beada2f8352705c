"""Stored messages whose body and outgoing mail are still to do (table `deferred`).

Processing threads and stores most messages from their headers alone (everything
threading, loop checks and header rules need) and leaves a row here in the same
transaction; `Pipeline.follow_up` reads the whole message later, fills in the entry's
body and attachments, queues the outgoing mail and deletes the row, again in one
transaction. Both steps are durable: a crash between them leaves the row, and the
follow-up runs after the restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from maildesk.store.raw import placeholders, raw

if TYPE_CHECKING:
    from maildesk.store.direct import Readable
    from maildesk.store.raw import Tx


@dataclass(frozen=True)
class Deferred:
    """One follow-up, with what it needs of its entry and its inbox row."""

    inbox_id: int
    entry_id: int
    ticket_id: int  # the entry's ticket now: a merge since may have moved it
    entry_kind: str
    thread_rule: str
    thread_reason: str
    new_ticket: bool
    reply_templates: tuple[str, ...]
    notify: tuple[str, ...]
    envelope_from: str | None
    envelope_to: tuple[str, ...]


def add(s: Tx, *, inbox_id: int, entry_id: int, new_ticket: bool,
        reply_templates: Sequence[str], notify: Sequence[str], now: datetime) -> None:
    r = raw(s)
    r.run("INSERT INTO deferred (inbox_id, entry_id, new_ticket, reply_templates, notify,"
          " created_at) VALUES (?, ?, ?, ?, ?, ?)",
          (inbox_id, entry_id, new_ticket, " ".join(reply_templates), " ".join(notify),
           r.time(now)))


def pending(db: Readable, limit: int) -> list[int]:
    """Inbox ids of up to `limit` follow-ups, oldest first (a plain read: `take` checks
    inside the write transaction that each is still to do)."""
    with db.read_raw() as r:
        return [i for (i,) in r.rows(
            "SELECT inbox_id FROM deferred ORDER BY inbox_id LIMIT ?", (limit,))]


def take(s: Tx, inbox_ids: Sequence[int]) -> list[Deferred]:
    """Those of `inbox_ids` still to do, oldest first (another node or an `ingest`
    next to the daemon may have done some meanwhile)."""
    if not inbox_ids:
        return []
    rows = raw(s).rows(
        "SELECT d.inbox_id, d.entry_id, e.ticket_id, e.kind, e.thread_rule, e.thread_reason,"
        " d.new_ticket, d.reply_templates, d.notify, i.envelope_from, i.envelope_to"
        " FROM deferred d JOIN entry e ON e.id = d.entry_id"
        " JOIN inbox i ON i.id = d.inbox_id"
        f" WHERE d.inbox_id IN ({placeholders(len(inbox_ids))}) ORDER BY d.inbox_id",
        inbox_ids)
    return [Deferred(
        inbox_id=inbox_id, entry_id=entry_id, ticket_id=ticket_id, entry_kind=kind,
        thread_rule=rule, thread_reason=reason, new_ticket=bool(new_ticket),
        reply_templates=tuple(templates.split()), notify=tuple(notify.split()),
        envelope_from=envelope_from, envelope_to=tuple(a for a in envelope_to.split(",") if a),
    ) for (inbox_id, entry_id, ticket_id, kind, rule, reason, new_ticket, templates, notify,
           envelope_from, envelope_to) in rows]


def oldest(db: Readable) -> datetime | None:
    """When the oldest follow-up still to do was left (None: there is none)."""
    with db.read_raw() as r:
        found = r.one("SELECT created_at FROM deferred ORDER BY inbox_id LIMIT 1")
        return r.read_time(found[0]) if found else None


def done(s: Tx, inbox_id: int) -> None:
    raw(s).run("DELETE FROM deferred WHERE inbox_id = ?", (inbox_id,))


def count(db: Readable) -> int:
    with db.read_raw() as r:
        found = r.one("SELECT count(*) FROM deferred")
    return int(found[0]) if found else 0
