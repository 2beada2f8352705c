"""`maildesk ingest`: commit the raw message, nothing else, fast; and wait for a daemon's
result.

An MTA pipe transport starts one process per message, often next to a running daemon
that does the processing (`ingest --queue`; or `ingest`, which rings the daemon's
doorbell and waits for the result: `wait_for_result`). Importing pydantic, SQLAlchemy
and mail-parser would cost about half a second per message; this path needs the
standard library only: it reads the config
file for the database URL, computes the message's identity (Message-ID, content hash)
and inserts the inbox row with `sqlite3`, under the same pragmas as the daemon
(WAL, synchronous=FULL, BEGIN IMMEDIATE). On PostgreSQL it runs the store's own insert
on a psycopg connection (store.direct), still without pydantic or SQLAlchemy. Anything
else (no schema yet, an in-memory database) returns None and the caller takes the full
path.

The message's identity comes from maildesk.identity, which parse.py uses too. Paths are
plain strings (os.path): importing pathlib costs a process more than the commit does.
"""

from __future__ import annotations

import os
import sqlite3
import time
import tomllib
from datetime import UTC, datetime

from maildesk.identity import identity

_COLUMNS = ("received_at", "source", "origin", "envelope_from", "envelope_to", "message_id",
            "content_hash", "size", "state", "attempts")


class QueueConfigError(Exception):
    """The config file cannot be read: the MTA should keep the message and retry."""


def database_url(config: str) -> str | None:
    """The database of this config as config.Database resolves it, for the two cases
    this path handles: a SQLite file (`sqlite:///ABSOLUTE-PATH`) or PostgreSQL
    (`postgresql+psycopg://...`); None for anything else (the full path deals with it)."""
    try:
        with open(config, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise QueueConfigError(f"{config}: {exc}") from exc
    table = data.get("database")
    url = os.environ.get("MAILDESK_DATABASE_URL", "").strip() or str(
        (table if isinstance(table, dict) else {}).get("url", "sqlite:///var/maildesk.db")).strip()
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    path = os.path.expanduser(url[len("sqlite:///"):].partition("?")[0])
    return "sqlite:///" + (path if os.path.isabs(path) else os.path.join(
        os.path.dirname(os.path.abspath(config)), path))


def sqlite_path(config: str) -> str | None:
    """The SQLite database file of this config, else None."""
    url = database_url(config)
    return url[len("sqlite:///"):] if url and url.startswith("sqlite:///") else None


def commit(url: str, raw: bytes, *, envelope_from: str | None, envelope_to: tuple[str, ...],
           origin: str | None) -> int | None:
    """Commit one message as a queued inbox row of the database of `url` (see
    database_url); its id, or None without a schema."""
    if url.startswith("sqlite:///"):
        return enqueue(url[len("sqlite:///"):], raw, envelope_from=envelope_from,
                       envelope_to=envelope_to, origin=origin)
    return _enqueue_postgres(url, raw, envelope_from=envelope_from, envelope_to=envelope_to,
                             origin=origin)


def _enqueue_postgres(url: str, raw: bytes, *, envelope_from: str | None,
                      envelope_to: tuple[str, ...], origin: str | None) -> int | None:
    """PostgreSQL: the store's own insert (store.inbox) on a driver connection of its own
    (store.direct), durably committed (synchronous_commit as the server has it)."""
    import psycopg

    from maildesk.domain import Source
    from maildesk.store import inbox
    from maildesk.store.direct import DirectDatabase

    message_id, digest = identity(raw)
    row = inbox.new_row(raw, source=Source.CLI, message_id=_truncated(message_id),
                        content_hash=digest, envelope_from=envelope_from,
                        envelope_to=envelope_to, origin=origin)
    db = DirectDatabase(url)
    try:
        with db.write_raw() as r:
            return inbox.insert_rows(r, [row])[0]
    except psycopg.errors.UndefinedTable:  # no schema yet: the full path creates it
        return None
    finally:
        db.dispose()


def enqueue(db: str, raw: bytes, *, envelope_from: str | None, envelope_to: tuple[str, ...],
            origin: str | None) -> int | None:
    """Commit one message as a queued inbox row; its id, or None without a schema."""
    if not os.path.isfile(db):
        return None
    message_id, digest = identity(raw)
    values = (
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"), "cli", origin, envelope_from,
        ",".join(envelope_to), _truncated(message_id), digest, len(raw), "queued", 0,
    )
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            inbox_id = conn.execute(f"INSERT INTO inbox ({', '.join(_COLUMNS)}) "
                                    f"VALUES ({', '.join('?' * len(_COLUMNS))})", values).lastrowid
            conn.execute("INSERT INTO inbox_raw (inbox_id, raw) VALUES (?, ?)", (inbox_id, raw))
        except sqlite3.OperationalError as exc:
            conn.execute("ROLLBACK")
            if "no such table" in str(exc):  # no schema, or one not yet upgraded
                return None
            raise
        conn.execute("COMMIT")
        return inbox_id
    finally:
        conn.close()


def wait_for_result(url: str, inbox_id: int, timeout: float) -> tuple[str, int | None,
                                                                      str | None] | None:
    """(state, ticket id, reason) of the inbox row once a daemon has processed it; None
    while it is still queued after `timeout` seconds. Reads only: a plain SELECT every
    millisecond for the first 100 ms (a daemon at rest takes a few), every 10 ms after
    that (a SQLite WAL reader waits for no writer, and a look costs some 30 µs; on
    PostgreSQL a look is one round trip, each statement its own transaction)."""
    sqlite = url.startswith("sqlite")
    if sqlite:
        conn = sqlite3.connect(url[len("sqlite:///"):], timeout=30, isolation_level=None)
    else:
        from maildesk.store.direct import connect

        conn = connect(url)
        conn.autocommit = True
    sql = "SELECT state, ticket_id, reason FROM inbox WHERE id = " + ("?" if sqlite else "%s")
    try:
        start = time.monotonic()
        while True:
            row = conn.execute(sql, (inbox_id,)).fetchone()
            if row is not None and row[0] != "queued":
                return str(row[0]), row[1], row[2]
            waited = time.monotonic() - start
            if waited >= timeout:
                return None
            time.sleep(0.001 if waited < 0.1 else 0.01)
    finally:
        conn.close()


def _truncated(message_id: str | None) -> str | None:
    return message_id[:998] if message_id else None
