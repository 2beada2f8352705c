"""The durable raw inbox: every message is committed here before anything else.

Hand-written SQL throughout (store.raw): intake and processing run it for every message,
and `maildesk inbox list` runs on a store.direct.Reader, without SQLAlchemy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from maildesk.domain import InboxState, Source
from maildesk.store.raw import Raw, placeholders, raw

if TYPE_CHECKING:  # not at run time: `maildesk inbox list` runs without SQLAlchemy
    from maildesk.store.db import Database
    from maildesk.store.direct import Readable, Writable
    from maildesk.store.raw import Tx

LEASE = timedelta(minutes=5)  # a worker that dies mid-message gives it back after this
REASON_CHARS = 500  # of a one-line reason; the whole story is `maildesk explain`


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class InboxItem:
    id: int
    received_at: datetime
    source: str
    origin: str | None
    envelope_from: str | None
    envelope_to: tuple[str, ...]
    message_id: str | None
    content_hash: str
    size: int
    state: InboxState
    reason: str | None
    attempts: int
    ticket_id: int | None


_ITEM_COLUMNS = ("id, received_at, source, origin, envelope_from, envelope_to, message_id,"
                 " content_hash, size, state, reason, attempts, ticket_id")


def _item(r: Raw, row: Sequence[Any]) -> InboxItem:
    (i, received_at, source, origin, envelope_from, envelope_to, message_id, content_hash,
     size, state, reason, attempts, ticket_id) = row
    received = r.read_time(received_at)
    assert received is not None
    return InboxItem(
        id=i, received_at=received, source=source, origin=origin,
        envelope_from=envelope_from, envelope_to=tuple(a for a in envelope_to.split(",") if a),
        message_id=message_id, content_hash=content_hash, size=size,
        state=InboxState(state), reason=reason, attempts=attempts, ticket_id=ticket_id,
    )


@dataclass(frozen=True)
class Incoming:
    """A raw message as intake received it, to be committed."""

    raw: bytes
    source: str
    message_id: str | None
    content_hash: str
    received_at: datetime
    envelope_from: str | None = None  # "" is the null sender <>
    envelope_to: str = ""  # comma-separated RCPT TO addresses
    origin: str | None = None


def new_row(
    raw: bytes, *, source: Source, message_id: str | None, content_hash: str,
    envelope_from: str | None = None, envelope_to: tuple[str, ...] = (),
    origin: str | None = None, now: datetime | None = None,
) -> Incoming:
    return Incoming(raw=raw, source=source.value, message_id=message_id,
                    content_hash=content_hash, received_at=now or utcnow(),
                    envelope_from=envelope_from, envelope_to=",".join(envelope_to),
                    origin=origin)


def add(db: Writable, row: Incoming) -> int:
    """Commit one raw message; returns its inbox id. Raises StoreUnavailable."""
    return add_many(db, [row])[0]


_INSERT = (
    "INSERT INTO inbox (received_at, source, origin, envelope_from, envelope_to, message_id,"
    " content_hash, size, state, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
    " RETURNING id")
_INSERT_RAW = "INSERT INTO inbox_raw (inbox_id, raw) VALUES (?, ?)"


def add_now(db: Database, row: Incoming) -> int:
    """Commit one raw message without waiting for any lock (Database.write_raw_now):
    WouldWait or StoreUnavailable when it would have to."""
    with db.write_raw_now() as r:
        return insert_rows(r, [row])[0]


def add_many(db: Writable, rows: Sequence[Incoming]) -> list[int]:
    """Commit several raw messages in one transaction (SMTP group commit)."""
    with db.write_raw() as r:
        return insert_rows(r, rows)


def insert_rows(r: Raw, rows: Sequence[Incoming]) -> list[int]:
    """Insert raw messages in a transaction; their new ids, in order. Hand-written SQL
    (store.raw): intake runs this for every message."""
    ids = [r.insert(_INSERT, (
        r.time(row.received_at), row.source, row.origin, row.envelope_from,
        row.envelope_to, row.message_id, row.content_hash, len(row.raw),
        InboxState.QUEUED.value)) for row in rows]
    r.many(_INSERT_RAW, [(i, row.raw) for i, row in zip(ids, rows, strict=True)])
    return ids


@dataclass(frozen=True)
class Envelope:
    """What processing needs of an inbox row, without its raw bytes."""

    id: int
    state: str
    envelope_from: str | None
    envelope_to: tuple[str, ...]
    message_id: str | None
    content_hash: str


def load_raw(db: Readable, ids: Sequence[int]) -> dict[int, bytes]:
    if not ids:
        return {}
    with db.read_raw() as r:
        rows = r.rows(f"SELECT inbox_id, raw FROM inbox_raw"
                      f" WHERE inbox_id IN ({placeholders(len(ids))})", ids)
    return {i: bytes(data) for i, data in rows}


def within_bytes(db: Readable, ids: Sequence[int], budget: int) -> list[int]:
    """The first of `ids` (in order) whose raw messages add up to at most `budget` bytes;
    always the first one."""
    if not ids:
        return []
    with db.read_raw() as r:
        rows = r.rows(f"SELECT id, size FROM inbox WHERE id IN ({placeholders(len(ids))})", ids)
    sizes: dict[int, int] = {int(i): int(n or 0) for i, n in rows}
    kept: list[int] = []
    total = 0
    for i in ids:
        total += sizes.get(i, 0)
        if kept and total > budget:
            break
        kept.append(i)
    return kept


def raw_head(s: Tx, inbox_id: int, limit: int = 256 * 1024) -> bytes | None:
    """The first `limit` bytes of one inbox message (its header block, for threading
    headers of an answer), inside the caller's transaction."""
    found = raw(s).one("SELECT substr(raw, 1, ?) FROM inbox_raw WHERE inbox_id = ?",
                       (limit, inbox_id))
    return bytes(found[0]) if found and found[0] is not None else None


def load_envelopes(s: Tx, ids: Sequence[int]) -> dict[int, Envelope]:
    if not ids:
        return {}
    rows = raw(s).rows(
        f"SELECT id, state, envelope_from, envelope_to, message_id, content_hash FROM inbox"
        f" WHERE id IN ({placeholders(len(ids))})", ids)
    return {
        i: Envelope(i, state, frm, tuple(a for a in to.split(",") if a), mid, digest)
        for i, state, frm, to, mid, digest in rows
    }


def envelope_of(inbox_id: int, row: Incoming) -> Envelope:
    return Envelope(inbox_id, InboxState.QUEUED.value, row.envelope_from,
                    tuple(a for a in row.envelope_to.split(",") if a),
                    row.message_id, row.content_hash)


def find_processed_twin(s: Tx, env: Envelope) -> tuple[int, int | None] | None:
    """(inbox id, ticket id) of an earlier message with the same identity that was
    already processed or ignored. Identity is (Message-ID, content hash); without a
    Message-ID, the hash alone."""
    same_id = "message_id = ?" if env.message_id else "message_id IS NULL"
    params = [env.content_hash, env.id, InboxState.PROCESSED.value, InboxState.IGNORED.value]
    if env.message_id:
        params.append(env.message_id)
    found = raw(s).one(
        f"SELECT id, ticket_id FROM inbox WHERE content_hash = ? AND id != ?"
        f" AND state IN (?, ?) AND {same_id} ORDER BY id LIMIT 1", params)
    return (found[0], found[1]) if found else None


def claim(db: Database, *, limit: int, now: datetime | None = None) -> list[int]:
    """Lease up to `limit` queued messages for processing, oldest first.

    On PostgreSQL several nodes claim concurrently: FOR UPDATE SKIP LOCKED, and a
    lease so a dead node's messages come back. On SQLite one daemon owns the file,
    so claiming is a plain read (no write transaction, no fsync per batch):
    processing checks that a message is still queued inside its own transaction."""
    now = now or utcnow()
    if db.is_sqlite:
        with db.read_raw() as r:
            return [i for (i,) in r.rows(
                "SELECT id FROM inbox WHERE state = ? AND (claimed_until IS NULL"
                " OR claimed_until < ?) ORDER BY id LIMIT ?",
                (InboxState.QUEUED.value, r.time(now), limit))]
    with db.write_raw() as r:
        ids = [i for (i,) in r.rows(
            "SELECT id FROM inbox WHERE state = ? AND (claimed_until IS NULL"
            " OR claimed_until < ?) ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
            (InboxState.QUEUED.value, r.time(now), limit))]
        if ids:
            r.run(f"UPDATE inbox SET claimed_until = ? WHERE id IN ({placeholders(len(ids))})",
                  (r.time(now + LEASE), *ids))
        return ids


def release_leases(db: Database) -> int:
    """Forget every processing lease: at the start of the only daemon of a SQLite
    database, a lease can only be a dead process's (kill -9 mid-batch)."""
    with db.write_raw() as r:
        return r.run("UPDATE inbox SET claimed_until = NULL WHERE state = ?"
                     " AND claimed_until IS NOT NULL", (InboxState.QUEUED.value,))


def get(db: Readable, inbox_id: int) -> InboxItem | None:
    with db.read_raw() as r:
        row = r.one(f"SELECT {_ITEM_COLUMNS} FROM inbox WHERE id = ?", (inbox_id,))
        return _item(r, row) if row else None


def mark(
    s: Tx, inbox_id: int, state: InboxState, *, reason: str | None = None,
    ticket_id: int | None = None, entry_id: int | None = None, now: datetime | None = None,
) -> None:
    r = raw(s)
    r.run("UPDATE inbox SET state = ?, reason = ?, ticket_id = ?, entry_id = ?,"
          " processed_at = ?, claimed_until = NULL WHERE id = ?",
          (state.value, one_line(reason) if reason is not None else None, ticket_id,
           entry_id, r.time(now or utcnow()), inbox_id))


def one_line(reason: str) -> str:
    """A reason as `inbox list` shows it: one line, at most REASON_CHARS characters."""
    return " ".join(reason.split())[:REASON_CHARS]


def mark_failed(s: Tx, inbox_id: int, reason: str) -> None:
    """`failed` with its reason, inside the caller's transaction; the ticket and entry it
    may have already (stored from its headers) are kept."""
    raw(s).run("UPDATE inbox SET attempts = attempts + 1, reason = ?, claimed_until = NULL,"
               " state = ? WHERE id = ?",
               (" ".join(reason.split())[:500], InboxState.FAILED.value, inbox_id))


def record_failure(db: Writable, inbox_id: int, reason: str) -> None:
    """Park a message that processing could not handle: `failed`, with a one-line reason.

    Processing is deterministic, so retrying by itself would fail the same way;
    `maildesk inbox retry` puts it back once the cause is fixed. (A database
    outage is not a failure: the message stays queued and its lease runs out.)"""
    with db.write_raw() as r:
        r.run("UPDATE inbox SET attempts = attempts + 1, reason = ?, claimed_until = NULL,"
              " state = ? WHERE id = ?",
              (one_line(reason), InboxState.FAILED.value, inbox_id))


def requeue(db: Writable, inbox_id: int) -> InboxState | None:
    """`maildesk inbox retry`: put a failed (or ignored) message back in the queue. Returns
    the state it was in (None: no such message); a processed or duplicate message stays
    as it is, so retrying one never stores it, nor sends its mail, twice."""
    with db.write_raw() as r:
        found = r.one("SELECT state FROM inbox WHERE id = ?", (inbox_id,))
        if found is None:
            return None
        state = InboxState(found[0])
        if state in RETRYABLE:
            r.run("UPDATE inbox SET state = ?, attempts = 0, claimed_until = NULL"
                  " WHERE id = ?", (InboxState.QUEUED.value, inbox_id))
        return state


RETRYABLE = frozenset({InboxState.FAILED, InboxState.IGNORED, InboxState.QUEUED})


def list_items(
    db: Readable, *, state: InboxState | None = None, limit: int = 200
) -> list[InboxItem]:
    where = "WHERE state = ? " if state is not None else ""
    with db.read_raw() as r:
        rows = r.rows(f"SELECT {_ITEM_COLUMNS} FROM inbox {where}ORDER BY id DESC LIMIT ?",
                      (*([state.value] if state is not None else []), limit))
        return [_item(r, row) for row in rows]
