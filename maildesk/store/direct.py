"""The database without SQLAlchemy: a driver connection from `database.url`, the schema
check, a `Reader` for the read commands of the CLI, and a `DirectDatabase` for the
processing `maildesk ingest` does in its own process.

Importing SQLAlchemy and its ORM takes longer than a read command may take in all
(`maildesk tickets list`, `inbox list`, `outbox list`, `report`), and those reads are
hand-written SQL (store.raw) anyway: they need only the driver. `connect(url)` is the one
place a URL becomes a driver connection: the daemon's SQLAlchemy engines (store.db) get
their connections from it too (`creator`), so both open the same database the same way.
`schema_version` reads Alembic's version table with one query, without Alembic.

The processing path is hand-written SQL on the driver's cursor (store.raw) whichever
transaction it runs in: the daemon's ORM session, or a `DirectDatabase` transaction,
which is a Raw on a connection of its own. So `ingest` without a daemon runs the
daemon's pipeline statement for statement, without importing SQLAlchemy (~0.3 s of a
process that has ~0.25 s in all).

Standard library only at import time; sqlite3 or psycopg is imported when connecting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TYPE_CHECKING, Any, Protocol

from maildesk.store.raw import Raw

if TYPE_CHECKING:
    from maildesk.store.raw import Tx

# The newest revision in migrations/versions (tests/test_store.py keeps them in step).
SCHEMA_HEAD = "0008_report_times"
THREADING_LOCK_KEY = 0x6D61696C  # "mail": one advisory lock serialises threading on PostgreSQL


class StoreUnavailable(Exception):
    """The database cannot take a write now (down, locked, read-only, disk full).

    Callers turn this into a temporary failure: SMTP 451, exit code 75.
    """


class Readable(Protocol):
    """Anything that hands out read cursors: the daemon's Database, or a Reader."""

    def read_raw(self) -> AbstractContextManager[Raw]: ...


class Writable(Readable, Protocol):
    """What processing needs of a database: the daemon's Database (SQLAlchemy engines and
    pools, for many threads) or a DirectDatabase (one driver connection, for one
    `maildesk ingest` process)."""

    url: str
    is_sqlite: bool

    def write(self, *, durable: bool = True) -> AbstractContextManager[Tx]: ...

    def write_raw(self) -> AbstractContextManager[Raw]: ...

    def lock_threading(self, tx: Tx) -> None: ...

    def dispose(self) -> None: ...


def sqlite_file(url: str) -> str | None:
    """The file of a `sqlite:///PATH[?query]` URL (as config.Database resolved it); None
    for PostgreSQL and for an in-memory database."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return url[len("sqlite:///"):].partition("?")[0]


# TCP limits on every PostgreSQL connection, both ways (a URL that sets any of them keeps
# its own). A PostgreSQL that goes silent without closing its connections (its host powered
# off, a network partition) would leave a statement waiting until TCP gives up (tcp_retries2:
# ~15 minutes), and every SMTP client waiting for its DATA answer meanwhile (measured: no
# answer within the client's 30 s, then a dropped connection). libpq's options bound it:
# data unacknowledged for 10 s, or an idle connection whose keepalive probes (after 5 s,
# every 2 s, 3 of them) go unanswered, fail the statement (StoreUnavailable, 451). 10 s is
# far above any round trip a live database takes, and far below an MTA's 10-minute wait.
# The other way, a node's host that dies sends no FIN: without keepalives PostgreSQL keeps
# its sessions, and with them the scheduler's and the mailboxes' advisory locks, for the OS
# default of 2 hours before another node may take over (SPEC §5). The server probes each
# session after 5 s of silence, 3 probes 5 s apart: a dead node's locks are free after ~20 s.
PG_SILENCE_LIMITS: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
    "tcp_user_timeout": 10_000}
SERVER_KEEPALIVES = ("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 5;"
                     " SET tcp_keepalives_count = 3")


def connect(url: str, *, timeout: float = 30.0) -> Any:
    """A new driver connection (sqlite3 or psycopg) to the database of `url`.

    SQLite: autocommit mode (callers issue BEGIN themselves), usable from any thread
    (a pool hands it from one to the next), `timeout` seconds of busy wait; a query in
    the URL is passed to SQLite as URI parameters (e.g. `?mode=ro`). PostgreSQL: the URL
    without its `+psycopg` driver name is a libpq connection URI; `timeout` bounds the
    connection attempt (at most 5 s: a health check must not hang), PG_SILENCE_LIMITS the
    wait on a server that went silent."""
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
    extra = {k: v for k, v in PG_SILENCE_LIMITS.items() if k not in given}
    conn = psycopg.connect(conninfo, connect_timeout=max(1, min(5, round(timeout))), **extra)
    # SET rather than the `options` startup parameter, which PgBouncer refuses by default
    conn.execute(SERVER_KEEPALIVES)
    conn.commit()
    return conn


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


class DirectDatabase:
    """Write and read transactions on one driver connection of this process, without
    SQLAlchemy: what `maildesk ingest` processes its message with when no daemon does.
    The same transactions as store.db.Database's, statement for statement: SQLite with
    the daemon's pragmas and `BEGIN IMMEDIATE`, `synchronous=NORMAL` for `durable=False`;
    PostgreSQL with `synchronous_commit=off` for it. One thread only."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self.is_sqlite = url.startswith("sqlite")
        self._driver_error = _driver_error(self.is_sqlite)
        self._operational = _driver_error(self.is_sqlite, operational=True)
        self._conn: Any = None
        self._synchronous = ""

    def exists(self) -> bool:
        """False for a SQLite file not created yet (connecting would create it empty)."""
        path = sqlite_file(self.url)
        return path is None or os.path.exists(path)

    def _connection(self) -> Any:
        if self._conn is None:
            try:
                conn = connect(self.url, timeout=self.timeout)
                if self.is_sqlite:  # as store.db's engines: WAL, checked foreign keys
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
                    conn.execute("PRAGMA foreign_keys=ON")
            except self._driver_error as exc:
                raise StoreUnavailable(one_line(exc)) from exc
            self._conn, self._synchronous = conn, ""
        return self._conn

    @contextmanager
    def _transaction(self, *, write: bool, durable: bool = True) -> Iterator[Raw]:
        """One transaction: committed when the block ends, rolled back when it raises.
        Driver errors that a retry can cure become StoreUnavailable (and the connection
        is opened afresh next time)."""
        conn = self._connection()
        try:
            if self.is_sqlite:
                synchronous = "FULL" if durable else "NORMAL"
                if write and synchronous != self._synchronous:
                    conn.execute(f"PRAGMA synchronous={synchronous}")
                    self._synchronous = synchronous
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            elif write and not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield Raw.of_driver(conn, sqlite=self.is_sqlite)
            if self.is_sqlite:
                conn.execute("COMMIT")
            else:
                conn.commit()
        except BaseException as exc:
            self._rollback()
            # as store.db: the driver's OperationalError, or another error a retry can cure
            if isinstance(exc, self._operational) or (
                    isinstance(exc, self._driver_error) and is_transient(exc)):
                raise StoreUnavailable(one_line(exc)) from exc
            raise

    def _rollback(self) -> None:
        try:
            if self.is_sqlite:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            else:
                self._conn.rollback()
        except Exception:  # a broken connection: open another one next time
            self.dispose()

    def write(self, *, durable: bool = True) -> AbstractContextManager[Raw]:
        """A write transaction (see store.db.Database.write for `durable`)."""
        return self._transaction(write=True, durable=durable)

    def write_raw(self) -> AbstractContextManager[Raw]:
        return self._transaction(write=True)

    def read_raw(self) -> AbstractContextManager[Raw]:
        return self._transaction(write=False)

    def lock_threading(self, tx: Tx) -> None:
        """As store.db.Database.lock_threading: on PostgreSQL, serialise threading with
        every other process (a daemon's nodes, other `ingest`s)."""
        if not self.is_sqlite:
            assert isinstance(tx, Raw)
            tx.one("SELECT pg_advisory_xact_lock(?)", (THREADING_LOCK_KEY,))

    def dispose(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None


def _driver_error(sqlite: bool, *, operational: bool = False) -> type[Exception]:
    """The driver's base exception, or its OperationalError (psycopg is imported anyway
    to connect to PostgreSQL)."""
    if sqlite:
        import sqlite3

        return sqlite3.OperationalError if operational else sqlite3.Error
    import psycopg

    error: type[Exception] = psycopg.OperationalError if operational else psycopg.Error
    return error
