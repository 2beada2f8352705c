"""The database without SQLAlchemy: a driver connection from `database.url`, the schema
check, and a `Reader` for the read commands of the CLI.

Importing SQLAlchemy and its ORM takes longer than a read command may take in all
(`maildesk tickets list`, `inbox list`, `outbox list`, `report`), and those reads are
hand-written SQL (store.raw) anyway: they need only the driver. `connect(url)` is the one
place a URL becomes a driver connection: the daemon's SQLAlchemy engines (store.db) get
their connections from it too (`creator`), so both open the same database the same way.
`schema_version` reads Alembic's version table with one query, without Alembic.

Standard library only at import time; sqlite3 or psycopg is imported when connecting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, Protocol

from maildesk.store.raw import Raw

# The newest revision in migrations/versions (tests/test_store.py keeps them in step).
SCHEMA_HEAD = "0006_ops"


class StoreUnavailable(Exception):
    """The database cannot take a write now (down, locked, read-only, disk full).

    Callers turn this into a temporary failure: SMTP 451, exit code 75.
    """


class Readable(Protocol):
    """Anything that hands out read cursors: the daemon's Database, or a Reader."""

    def read_raw(self) -> AbstractContextManager[Raw]: ...


def sqlite_file(url: str) -> str | None:
    """The file of a `sqlite:///PATH[?query]` URL (as config.Database resolved it); None
    for PostgreSQL and for an in-memory database."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return url[len("sqlite:///"):].partition("?")[0]


def connect(url: str, *, timeout: float = 30.0) -> Any:
    """A new driver connection (sqlite3 or psycopg) to the database of `url`.

    SQLite: autocommit mode (callers issue BEGIN themselves), usable from any thread
    (a pool hands it from one to the next), `timeout` seconds of busy wait; a query in
    the URL is passed to SQLite as URI parameters (e.g. `?mode=ro`). PostgreSQL: the URL
    without its `+psycopg` driver name is a libpq connection URI; `timeout` bounds the
    connection attempt (at most 5 s: a health check must not hang)."""
    if url.startswith("sqlite"):
        import sqlite3

        path = sqlite_file(url)
        query = url.partition("?")[2]
        if path is None:
            return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if query:
            return sqlite3.connect(f"file:{path}?{query}", uri=True, timeout=timeout,
                                   isolation_level=None, check_same_thread=False)
        return sqlite3.connect(path, timeout=timeout, isolation_level=None,
                               check_same_thread=False)
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    conninfo = "postgresql://" + url.partition("://")[2]
    given = conninfo_to_dict(conninfo)
    extra = {k: v for k, v in KEEPALIVES.items() if k not in given}
    conn = psycopg.connect(conninfo, connect_timeout=max(1, min(5, round(timeout))), **extra)
    # SET rather than the `options` startup parameter, which PgBouncer refuses by default
    conn.execute(SERVER_KEEPALIVES)
    conn.commit()
    return conn


# A host that dies (power, kernel panic, network cut) sends no FIN: without TCP keepalives
# PostgreSQL keeps its sessions, and with them the scheduler's and the mailboxes' advisory
# locks, for the OS default of 2 hours before another node may take over (SPEC §5). The
# server probes each session of ours after 5 s of silence, 3 probes 5 s apart (a dead
# node's locks are free after ~20 s); libpq does the same towards the server, and gives up
# on data unacknowledged for 20 s, so a node never hangs on a dead database host either.
# A URL that sets libpq's keeps its own.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 5,
                              "keepalives_count": 3, "tcp_user_timeout": 20_000}
SERVER_KEEPALIVES = ("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 5;"
                     " SET tcp_keepalives_count = 3")


def is_transient(exc: BaseException) -> bool:
    """A driver error that a retry can cure: connection loss, locks, read-only or full
    disks, timeouts."""
    msg = str(exc).lower()
    return any(word in msg for word in (
        "locked", "readonly", "read-only", "disk", "connection", "terminat", "timeout",
        "unable to open", "could not connect", "server closed"))


def one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:300] or type(orig).__name__


def schema_version(db: Readable) -> str | None:
    """The Alembic revision the database is at; None for an empty database."""
    with db.read_raw() as r:
        if r.sqlite:
            found = r.one("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                          " AND name = 'alembic_version'")
        else:
            found = r.one("SELECT to_regclass('alembic_version') IS NOT NULL")
            found = found if found and found[0] else None
        if found is None:
            return None
        row = r.one("SELECT version_num FROM alembic_version")
    return str(row[0]) if row else None


class Reader:
    """Read transactions on a driver connection of their own, without SQLAlchemy: for a
    process that reads a little and leaves (the CLI's read commands)."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self.is_sqlite = url.startswith("sqlite")

    def exists(self) -> bool:
        """False for a SQLite file not created yet (connecting would create it empty)."""
        path = sqlite_file(self.url)
        return path is None or os.path.exists(path)

    @contextmanager
    def read_raw(self) -> Iterator[Raw]:
        """One read transaction (a consistent snapshot: a page and its total agree).
        Driver errors that a retry can cure become StoreUnavailable."""
        driver_error = _driver_error(self.is_sqlite)
        try:
            conn = connect(self.url, timeout=self.timeout)
        except driver_error as exc:
            raise StoreUnavailable(one_line(exc)) from exc
        try:
            if self.is_sqlite:
                conn.execute("PRAGMA query_only = ON")
                conn.execute("BEGIN")
            yield Raw.of_driver(conn, sqlite=self.is_sqlite)
        except driver_error as exc:
            if is_transient(exc):
                raise StoreUnavailable(one_line(exc)) from exc
            raise
        finally:
            with suppress(Exception):  # nothing was written; a broken connection just closes
                conn.rollback() if not self.is_sqlite else conn.execute("ROLLBACK")
            conn.close()


def _driver_error(sqlite: bool) -> type[Exception]:
    """The driver's base exception (psycopg is imported anyway to connect to PostgreSQL)."""
    if sqlite:
        import sqlite3

        return sqlite3.Error
    import psycopg

    error: type[Exception] = psycopg.Error
    return error
