"""Engine, transactions and schema migrations.

SQLite runs in WAL mode with `synchronous=FULL`, so a committed message is on
disk before SMTP answers 250. Write transactions on SQLite start with
`BEGIN IMMEDIATE`: two processes never both read a ticket and then both
write it (the lost-update case). On PostgreSQL, the threading step takes a
transaction-level advisory lock for the same reason (see `lock_threading`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, create_engine

from maildesk.store import direct
from maildesk.store.direct import SCHEMA_HEAD, THREADING_LOCK_KEY, StoreUnavailable
from maildesk.store.raw import Raw, raw

if TYPE_CHECKING:
    from maildesk.store.raw import Tx

__all__ = ["SCHEMA_HEAD", "Database", "StoreUnavailable", "WouldWait"]

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6D646462  # "mddb": nodes starting together migrate one at a time
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


class WouldWait(Exception):
    """`Database.write_raw_now` would have had to wait for the write lock."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, synchronous: str = "FULL",
                    busy_ms: int = 30_000) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    def __init__(self, url: str, *, pool_size: int = 5, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # When and why a write failed, until one works again: a full or read-only disk
        # leaves reads working, so only a write tells (see refusing_writes).
        self.refused: tuple[datetime, str] | None = None
        self._lock = threading.RLock()
        self._writer: AbstractContextManager[object] = (
            self._lock if self.is_sqlite else nullcontext())
        if self.is_sqlite:
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = self._sqlite_engine(url, immediate=True, echo=echo)
            self.lazy_engine = self._sqlite_engine(url, immediate=True, echo=echo,
                                                   synchronous="NORMAL")
            self.nowait_engine = self._sqlite_engine(url, immediate=True, echo=echo,
                                                     busy_ms=0)
            self.read_engine = self._sqlite_engine(url, immediate=False, echo=echo)
        else:
            self.engine = create_engine(
                url, pool_size=pool_size, pool_pre_ping=True, echo=echo,
                creator=lambda: direct.connect(url, timeout=5),
            )
            self.read_engine = self.lazy_engine = self.nowait_engine = self.engine

    @staticmethod
    def _sqlite_engine(url: str, *, immediate: bool, echo: bool, synchronous: str = "FULL",
                       busy_ms: int = 30_000) -> Engine:
        engine = create_engine(url, echo=echo,
                               creator=lambda: direct.connect(url, timeout=busy_ms / 1000))
        event.listen(engine, "connect",
                     lambda c, r: _sqlite_pragmas(c, r, synchronous, busy_ms))
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

        return engine

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Session]:
        """One write transaction: commits on success, rolls back on error.

        Database-side failures surface as StoreUnavailable. On SQLite the threads of one
        process take turns on a lock first: SQLite itself makes a waiting writer sleep
        1, 2, 5, 10... ms between retries, which costs the daemon (intake, worker and
        sender all write) most of its throughput.

        `durable=False` commits without waiting for the disk (SQLite synchronous=NORMAL,
        PostgreSQL synchronous_commit=off), for work that can be done again from what is
        durable: processing, whose input is the committed inbox. A power cut can undo
        such a commit only together with everything committed after it up to the next
        durable commit (the log is written in order, and one flush covers all of it), and
        nothing reaches the outside world before a durable commit: a 250 or an IMAP
        flag follows intake's commit, a send follows the sender's claim. So the undone
        processing was never seen, and it is simply done again (its messages are queued
        again); a process crash loses nothing either way."""
        engine = self.engine if durable else self.lazy_engine
        with self._noting_refusals(), self._writer, self._transaction(engine) as session:
            if not durable and not self.is_sqlite:
                session.execute(text("SET LOCAL synchronous_commit = off"))
            yield session

    @contextmanager
    def write_raw(self, *, durable: bool = True) -> Iterator[Raw]:
        """A write transaction without an ORM session, for intake's inserts (store.raw):
        the session costs more than the insert of a message. `durable` as in write()."""
        engine = self.engine if durable else self.lazy_engine
        with self._noting_refusals(), self._writer, _unavailable_on_error(), \
                engine.begin() as conn:
            if not durable and not self.is_sqlite:
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            yield Raw(conn)

    @contextmanager
    def _noting_refusals(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable as exc:
            if self.refused is None:
                self.refused = (datetime.now(UTC), str(exc))
            raise
        self.refused = None

    def refusing_writes(self) -> str | None:
        """Why writes fail, when the last one failed and a probe fails too (the health
        check asks: on a full disk every message gets 451 while reads still work); None
        when writes work. The probe rewrites one row of Alembic's table, and runs only
        while a failure is noted, so a healthy daemon writes nothing for it."""
        if self.refused is None:
            return None
        try:
            with self.write_raw() as r:
                r.run("UPDATE alembic_version SET version_num = version_num")
        except StoreUnavailable:
            pass
        if self.refused is None:
            return None
        since, why = self.refused
        return f"since {since.isoformat(timespec='seconds')}: {why}"

    @contextmanager
    def write_raw_now(self) -> Iterator[Raw]:
        """write_raw for a caller on the event loop, where a wait would stall every
        connection: WouldWait at once when another thread of this process holds the write
        lock, and StoreUnavailable ("database is locked") at once when another process
        does. SQLite only (WouldWait on PostgreSQL, whose commits cross the network)."""
        if not self.is_sqlite or not self._lock.acquire(blocking=False):
            raise WouldWait
        try:
            with _unavailable_on_error(), self.nowait_engine.begin() as conn:
                yield Raw(conn)
        finally:
            self._lock.release()

    @contextmanager
    def _transaction(self, engine: Engine) -> Iterator[Session]:
        with _unavailable_on_error(), Session(engine, expire_on_commit=False) as session, \
                session.begin():
            yield session

    @contextmanager
    def read_raw(self) -> Iterator[Raw]:
        """Reads without an ORM session, for the worker's per-batch queries (store.raw)."""
        with _unavailable_on_error(), self.read_engine.connect() as conn:
            yield Raw(conn)

    @contextmanager
    def read(self) -> Iterator[Session]:
        try:
            with Session(self.read_engine, expire_on_commit=False) as session:
                yield session
        except OperationalError as exc:
            raise StoreUnavailable(_one_line(exc)) from exc

    def lock_threading(self, session: Tx) -> None:
        """Serialise ticket creation and threading across processes (PostgreSQL).

        On SQLite, BEGIN IMMEDIATE already gives one writer at a time."""
        if not self.is_sqlite:
            raw(session).one("SELECT pg_advisory_xact_lock(?)", (THREADING_LOCK_KEY,))

    def upgrade(self) -> None:
        """Apply Alembic migrations up to head."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url)
        try:
            with self.engine.connect() as conn:
                if not self.is_sqlite:
                    # Several nodes started at once on an empty database would all create
                    # the tables (and all but one crash): they take turns, and Alembic,
                    # reading the version after the wait, finds nothing left to do.
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                    conn.commit()
                cfg.attributes["connection"] = conn
                try:
                    command.upgrade(cfg, "head")
                finally:
                    if not self.is_sqlite:  # a lost connection took the lock with it
                        with suppress(DBAPIError):
                            conn.rollback()
                            conn.execute(text("SELECT pg_advisory_unlock(:k)"),
                                         {"k": MIGRATION_LOCK_KEY})
                            conn.commit()
        except OperationalError as exc:
            raise StoreUnavailable(_one_line(exc)) from exc

    def ensure_schema(self) -> None:
        """Migrate to the current schema unless the database is there already: one read
        of Alembic's version table, without importing Alembic."""
        if self.schema_version() != SCHEMA_HEAD:
            self.upgrade()

    def schema_version(self) -> str | None:
        """The Alembic revision the database is at; None for an empty database."""
        return direct.schema_version(self)

    def dispose(self) -> None:
        for engine in {self.engine, self.lazy_engine, self.nowait_engine, self.read_engine}:
            engine.dispose()


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Database-side failures that a retry can cure become StoreUnavailable: SQLAlchemy's,
    and the driver's own from store.raw's statements, which run on the driver's cursor
    (without this, a connection that PostgreSQL killed mid-batch read as a bad message)."""
    try:
        yield
    except (OperationalError, DBAPIError) as exc:
        if isinstance(exc, DBAPIError) and not _is_transient(exc):
            raise
        raise StoreUnavailable(_one_line(exc)) from exc
    except Exception as exc:
        cause = _transient_cause(exc)
        if cause is None:
            raise
        raise StoreUnavailable(_one_line(cause)) from exc


def _transient_cause(exc: BaseException) -> BaseException | None:
    """The driver's transient error behind `exc`, if any: itself, or one it was raised while
    handling (a rollback on a connection that died raises SQLAlchemy's PendingRollbackError,
    which is no DBAPIError, with the connection loss as its context)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, Exception) and _from_driver(e) and direct.is_transient(e):
            return e
        e = e.__cause__ or e.__context__
    return None


def _from_driver(exc: Exception) -> bool:
    """Raised by sqlite3 or psycopg themselves (checked by name: no import of psycopg for a
    SQLite database)."""
    return type(exc).__module__.partition(".")[0] in ("sqlite3", "psycopg")


def _is_transient(exc: DBAPIError) -> bool:
    """Connection loss, locks, read-only or full disks: worth a retry later."""
    return bool(exc.connection_invalidated) or direct.is_transient(exc.orig or exc)


_one_line = direct.one_line
