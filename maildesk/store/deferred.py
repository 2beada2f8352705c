"""Stored messages whose body and outgoing mail are still to do (table `deferred`).

Processing threads and stores most messages from their headers alone (everything
threading, loop checks and header rules need) and leaves a row here in the same
transaction; `Pipeline.follow_up` reads the whole message later, fills in the entry's
body and attachments, queues the outgoing mail and deletes the row, again in one
transaction. Both steps are durable: a crash between them leaves the row, and the
follow-up runs after the restart.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maildesk.store import direct
from maildesk.store.direct import StoreUnavailable
from maildesk.store.raw import placeholders, raw

if TYPE_CHECKING:
    from maildesk.store.direct import Readable, Writable
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


def pending(db: Writable, limit: int) -> list[int]:
    """Inbox ids of up to `limit` follow-ups, oldest first (`take` checks inside the
    write transaction that each is still to do). On SQLite a plain read; on PostgreSQL,
    where several nodes look at once, only those no other node is working on (`Claims`)."""
    if not db.is_sqlite:
        return _claims(db).pending(limit)
    with db.read_raw() as r:
        return [i for (i,) in r.rows(
            "SELECT inbox_id FROM deferred ORDER BY inbox_id LIMIT ?", (limit,))]


CLAIM_KEY_BASE = 0x464F4C4C << 32  # "FOLL": one advisory lock per follow-up, key base + id
CANDIDATES = 4  # look at this many times `limit` of the oldest rows for free ones
# A follow-up left this long is done whoever holds its lock: a session can outlive its
# client behind a proxy or pooler (PgBouncer, a TCP forwarder), which answers the server's
# keepalives itself, and keep the lock for ever (CI saw follow-ups left undone for good that
# way). Follow-ups live milliseconds; two nodes at one after a minute cost a wasted read.
STALE_CLAIM = 60.0  # seconds


class Claims:
    """The follow-ups one node works on, among several on one PostgreSQL (SPEC §5).

    A plain read would give every idle node the same oldest rows, to read whole (the
    costly part) all but one in vain. So a node takes a session advisory lock per
    follow-up it returns, on a connection of its own (autocommit: no transaction stays
    open), and skips those another node holds: `pending` keeps the locks of what it
    returns again (the caller may read ahead), and gives back those of rows now done or
    not returned. A node that dies frees its locks with its connection, at once, and a
    dead host's within ~20 s (direct.PG_SILENCE_LIMITS); a lock older than STALE_CLAIM
    is not waited for. Correctness does not depend on it: `take` and the processing lock
    still make each follow-up happen once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None
        self.held: set[int] = set()
        self._lock = threading.Lock()

    def pending(self, limit: int) -> list[int]:
        with self._lock:
            try:
                return self._pending(limit)
            except Exception as exc:  # psycopg's errors: the locks went with the connection
                self.close()
                if direct.is_transient(exc):
                    raise StoreUnavailable(direct.one_line(exc)) from exc
                raise

    def _pending(self, limit: int) -> list[int]:
        if self.conn is None:
            self.conn = direct.connect(self.url, timeout=5)
            self.conn.autocommit = True
        rows = self.conn.execute(
            "SELECT inbox_id, created_at < now() - make_interval(secs => %s) FROM deferred"
            " ORDER BY inbox_id LIMIT %s", (STALE_CLAIM, CANDIDATES * limit)).fetchall()
        oldest = [i for i, _ in rows]
        asked = [i for i in oldest if i not in self.held]
        got = {i for (i, ok) in self.conn.execute(
            "SELECT i, pg_try_advisory_lock(%s + i) FROM unnest(%s::bigint[]) AS i",
            (CLAIM_KEY_BASE, asked)).fetchall() if ok} if asked else set()
        stale = {i for i, old in rows if old}  # locked or not: its holder is taken for dead
        mine = sorted((self.held & set(oldest)) | got | stale)[:limit]
        self._unlock((self.held | got) - set(mine))
        self.held = set(mine) & (self.held | got)  # a stale one's lock is not ours
        return mine

    def _unlock(self, ids: set[int]) -> None:
        if ids:
            self.conn.execute("SELECT pg_advisory_unlock(%s + i) FROM unnest(%s::bigint[]) AS i",
                              (CLAIM_KEY_BASE, sorted(ids)))

    def close(self) -> None:
        conn, self.conn, self.held = self.conn, None, set()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


_CLAIMS: weakref.WeakKeyDictionary[Writable, Claims] = weakref.WeakKeyDictionary()
_CLAIMS_LOCK = threading.Lock()


def _claims(db: Writable) -> Claims:
    with _CLAIMS_LOCK:
        found = _CLAIMS.get(db)
        if found is None:
            found = _CLAIMS[db] = Claims(db.url)
            weakref.finalize(db, found.close)
        return found


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
