"""IMAP mailboxes in the database: checkpoints, the batch commit, the poll lock, alerts.

A checkpoint is (UIDVALIDITY, last UID) per mailbox and folder. It only moves
inside `commit_batch`, in the same transaction as the raw messages it covers,
so a crash can never leave it ahead of what is stored (SPEC §2.1). The
checkpoint row doubles as a fence: the batch commit locks it and checks that
it still holds what the poller read, so two pollers (a node that lost its
lock and the one that took over) can never both store the same messages.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from maildesk.store import direct, inbox
from maildesk.store.db import Database, StoreUnavailable
from maildesk.store.inbox import utcnow
from maildesk.store.raw import placeholders, raw
from maildesk.store.tables import MailboxStateRow, OutboxRow

LOCK_CLASS = 0x494D4150  # "IMAP": first key of the two-int advisory lock per mailbox
_U32 = 2**32


@dataclass(frozen=True)
class Checkpoint:
    uidvalidity: int
    last_uid: int


class CheckpointMoved(Exception):
    """The stored checkpoint is no longer the one the poller read: another poller
    advanced or reset it. Nothing of the batch was stored."""


def _signed32(value: int) -> int:
    """PostgreSQL's two-int advisory lock keys are signed 32-bit."""
    return value - _U32 if value >= 2**31 else value


def _checkpoint(row: MailboxStateRow) -> Checkpoint:
    return Checkpoint(row.uidvalidity, row.last_uid)


def get_checkpoint(db: Database, mailbox: str, folder: str) -> Checkpoint | None:
    with db.read() as s:
        row = s.get(MailboxStateRow, (mailbox, folder))
        return _checkpoint(row) if row else None


def reset_checkpoint(
    db: Database, mailbox: str, folder: str, cp: Checkpoint, *, now: datetime | None = None
) -> Checkpoint:
    """Start (or restart, after a UIDVALIDITY change) a folder's checkpoint at `cp`."""
    with db.write() as s:
        row = s.get(MailboxStateRow, (mailbox, folder), with_for_update=True)
        if row is None:
            row = MailboxStateRow(mailbox=mailbox, folder=folder, updated_at=now or utcnow())
        row.uidvalidity, row.last_uid = cp.uidvalidity, cp.last_uid
        row.updated_at = now or utcnow()
        s.add(row)
    return cp


def commit_batch(
    db: Database, mailbox: str, folder: str, expected: Checkpoint, rows: Sequence[inbox.Incoming],
    *, last_uid: int | None = None, now: datetime | None = None,
) -> list[int | None]:
    """Store fetched messages and advance the checkpoint, in one transaction.

    Rows whose identity (Message-ID + content hash) is already stored, from any
    source and in any state, are not inserted again: a message re-fetched after
    a crash between commit and MOVE, or after a UIDVALIDITY change, stays one
    message. Returns, per row, its new inbox id or None for a duplicate.
    Raises CheckpointMoved when the stored checkpoint is not `expected`."""
    with db.write() as s:
        state = s.get(MailboxStateRow, (mailbox, folder), with_for_update=True)
        if state is None or _checkpoint(state) != expected:
            raise CheckpointMoved(f"{mailbox}/{folder}: checkpoint is no longer {expected}")
        known = _stored_identities(s, rows)
        fresh: list[inbox.Incoming | None] = []
        for row in rows:
            identity = (row.message_id, row.content_hash)
            fresh.append(None if identity in known else row)
            known.add(identity)
        ids = iter(inbox.insert_rows(raw(s), [r for r in fresh if r is not None]))
        if last_uid is not None and last_uid > expected.last_uid:
            state.last_uid = last_uid
        state.updated_at = now or utcnow()
        s.add(state)
    return [next(ids) if r is not None else None for r in fresh]


def _stored_identities(s: Session, rows: Sequence[inbox.Incoming]) -> set[tuple[str | None, str]]:
    """(message_id, content_hash) of stored messages sharing a hash with `rows`."""
    hashes = sorted({r.content_hash for r in rows})
    if not hashes:
        return set()
    found = raw(s).rows(f"SELECT message_id, content_hash FROM inbox"
                        f" WHERE content_hash IN ({placeholders(len(hashes))})", hashes)
    return {(mid, h) for mid, h in found}


# --- multi-node: one poller per mailbox (SPEC §5) ----------------------------------------


class MailboxLock:
    """A PostgreSQL session advisory lock on a connection of its own.

    It is held for as long as the poller runs: when the node dies, its
    connection closes, PostgreSQL drops the lock and another node takes the
    mailbox over. The connection runs in autocommit, so holding the lock keeps
    no transaction open. On SQLite (one process) the lock always succeeds."""

    def __init__(self, db: Database, name: str) -> None:
        self.name = name
        self._url = None if db.is_sqlite else db.url
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._key = (LOCK_CLASS, _signed32(zlib.crc32(name.encode())))

    def acquire(self) -> bool:
        """Try once, without waiting. Raises StoreUnavailable when PostgreSQL is down."""
        if self._url is None:
            return True
        if self._conn is not None:
            return self.held()
        try:
            url = self._url  # direct.connect: keepalives, so a dead host's lock is freed
            self._engine = self._engine or create_engine(
                url, poolclass=NullPool, creator=lambda: direct.connect(url, timeout=5))
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"),
                                    {"a": self._key[0], "b": self._key[1]}).scalar())
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(" ".join(str(exc.orig or exc).split())[:300]) from exc
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def held(self) -> bool:
        """Is the lock still ours? False once its connection is gone."""
        if self._url is None:
            return True
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except (OperationalError, DBAPIError):
            self.release()
            return False

    def release(self) -> None:
        """Give the lock up; a connection that is gone (PostgreSQL restarted, the network
        cut) took it with it. SQLAlchemy refuses any further statement on a connection
        that failed (PendingRollbackError, not a DBAPIError), hence the wider catch."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"),
                             {"a": self._key[0], "b": self._key[1]})
            except SQLAlchemyError:
                pass  # the connection is gone, and the lock with it
            finally:
                with contextlib.suppress(SQLAlchemyError):
                    conn.close()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def try_lock_mailbox(db: Database, name: str) -> MailboxLock | None:
    """The mailbox's poll lock when this node may poll it now, else None."""
    lock = MailboxLock(db, name)
    return lock if lock.acquire() else None


# --- operator alerts ----------------------------------------------------------------------


def queue_alert(
    db: Database, *, recipients: Sequence[str], envelope_from: str, message_id: str,
    raw: bytes, now: datetime | None = None,
) -> int:
    """Queue one automatic mail to the operators (template "mailbox_alert"); the
    outbound sender delivers it like any other outbox row."""
    now = now or utcnow()
    row = OutboxRow(
        ticket_id=None, template="mailbox_alert", automatic=True,
        recipients=",".join(recipients), envelope_from=envelope_from, message_id=message_id,
        raw=raw, created_at=now, state="pending", next_attempt_at=now,
    )
    with db.write() as s:
        s.add(row)
        s.flush()
        assert row.id is not None
        return row.id
