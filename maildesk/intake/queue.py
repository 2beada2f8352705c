"""`maildesk ingest` on SQLite: commit the raw message, nothing else, fast; and wait for
a daemon's result.

An MTA pipe transport starts one process per message, often next to a running daemon
that does the processing (`ingest --queue`; or `ingest`, which rings the daemon's
doorbell and waits for the result: `wait_for_result`). Importing pydantic, SQLAlchemy
and mail-parser would cost about half a second per message; this path needs the
standard library only: it reads the config
file for the database URL, computes the message's identity (Message-ID, content hash)
and inserts the inbox row with `sqlite3`, under the same pragmas as the daemon
(WAL, synchronous=FULL, BEGIN IMMEDIATE). Anything else (PostgreSQL, no schema yet)
returns None and the caller takes the full path.

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


def sqlite_path(config: str) -> str | None:
    """The SQLite database of this config (as config.Database resolves it), else None."""
    try:
        with open(config, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise QueueConfigError(f"{config}: {exc}") from exc
    table = data.get("database")
    url = os.environ.get("MAILDESK_DATABASE_URL", "").strip() or str(
        (table if isinstance(table, dict) else {}).get("url", "sqlite:///var/maildesk.db")).strip()
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    path = os.path.expanduser(url[len("sqlite:///"):].partition("?")[0])
    return path if os.path.isabs(path) else os.path.join(
        os.path.dirname(os.path.abspath(config)), path)


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


def wait_for_result(db: str, inbox_id: int, timeout: float) -> tuple[str, int | None,
                                                                     str | None] | None:
    """(state, ticket id, reason) of the inbox row once a daemon has processed it; None
    while it is still queued after `timeout` seconds. Reads only: a plain SELECT every
    millisecond for the first 100 ms (a daemon at rest takes a few), every 10 ms after
    that (a WAL reader waits for no writer, and a look costs some 30 µs)."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        start = time.monotonic()
        while True:
            row = conn.execute("SELECT state, ticket_id, reason FROM inbox WHERE id = ?",
                               (inbox_id,)).fetchone()
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
