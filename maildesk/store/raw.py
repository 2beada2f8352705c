"""Hand-written SQL on the driver's connection, for the statements every message runs.

SQLAlchemy spends ~150 µs building, caching and compiling a statement that the driver
runs in ~15 µs, and processing one message takes about a dozen statements: the hot path
(threading lookups, storing the entry, the outbox row, the inbox state, the intake
insert) goes through here; everything else uses the ORM. The statements run on the
session's own connection, inside its transaction, so they commit or roll back with it.
They do not flush the session: hot-path code never leaves ORM changes pending.

SQL is written with `?` placeholders (sqlite3's style), turned into `%s` for psycopg.
Times are stored the way SQLAlchemy stores them, so both paths read each other's rows:
on SQLite the text "YYYY-MM-DD HH:MM:SS.ffffff" in UTC, on PostgreSQL timestamptz.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # not imported at run time: the CLI runs without SQLAlchemy
    from typing import TypeAlias

    from sqlalchemy.engine import Connection
    from sqlmodel import Session

Row = tuple[Any, ...]


class Raw:
    """The driver's cursor of one connection (a session's, a bare write transaction's:
    Database.write_raw, or a driver connection of its own: store.direct.Reader)."""

    def __init__(self, conn: Connection) -> None:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        self._init(dbapi, sqlite=conn.dialect.name == "sqlite")

    @classmethod
    def of_driver(cls, dbapi: Any, *, sqlite: bool) -> Raw:
        """A Raw on a driver connection (sqlite3 or psycopg) that no SQLAlchemy holds."""
        r = cls.__new__(cls)
        r._init(dbapi, sqlite=sqlite)
        return r

    def _init(self, dbapi: Any, *, sqlite: bool) -> None:
        self.sqlite = sqlite
        self.cur = dbapi.cursor()
        self._last_time: tuple[datetime | None, Any] = (None, None)
        self._savepoints = 0

    def _sql(self, sql: str) -> str:
        return sql if self.sqlite else _pyformat(sql)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.cur.execute(self._sql(sql), params)
        return list(self.cur.fetchall())

    def each(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        """The rows one by one, as the driver hands them over (a large read)."""
        self.cur.execute(self._sql(sql), params)
        return iter(self.cur)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self.cur.execute(self._sql(sql), params)
        row = self.cur.fetchone()
        return tuple(row) if row is not None else None

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """An UPDATE or DELETE; returns the number of rows it changed."""
        self.cur.execute(self._sql(sql), params)
        return int(self.cur.rowcount or 0)

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """An INSERT ending in `RETURNING id`; returns the new id."""
        self.cur.execute(self._sql(sql), params)
        row = self.cur.fetchone()
        assert row is not None
        return int(row[0])

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        """One statement for each parameter tuple (none at all for none)."""
        rows = list(params)
        if rows:
            self.cur.executemany(self._sql(sql), rows)

    def time(self, value: datetime | None) -> Any:
        """A timezone-aware datetime as a parameter."""
        if value is None or not self.sqlite:
            return value
        last, text = self._last_time  # a message's statements all pass the same `now`
        if value is not last:
            text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            self._last_time = (value, text)
        return text

    def read_time(self, value: Any) -> datetime | None:
        """A stored time back as an aware UTC datetime."""
        if value is None:
            return None
        if isinstance(value, str):
            if len(value) <= 26:  # as stored: "YYYY-MM-DD HH:MM:SS[.ffffff]", UTC
                # parsed with its zone: replace(tzinfo=) took 25x the parse here
                return datetime.fromisoformat(value + "+00:00")
            return datetime.fromisoformat(value).astimezone(UTC)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def raw(session: Tx) -> Raw:
    """The session's Raw, made on first use (one cursor per transaction); a Raw itself
    (the reads that serve both the daemon's sessions and the CLI's store.direct.Reader).

    Take savepoints with `savepoint()`, not `Session.begin_nested()`: SQLAlchemy emits
    the SAVEPOINT only when the session's connection is next asked for, which this does
    not do once the Raw exists (it cost ~6 µs a statement)."""
    if isinstance(session, Raw):
        return session
    found = session.info.get("raw")
    if found is None:
        found = session.info["raw"] = Raw(session.connection())
    assert isinstance(found, Raw)
    return found


@contextmanager
def savepoint(tx: Tx) -> Iterator[None]:
    """A nested transaction whose SAVEPOINT is emitted at once, so the raw statements
    that follow run inside it: rolled back alone when the block raises. On a Raw of
    its own (store.direct.DirectDatabase) the statements are plain SQL."""
    if isinstance(tx, Raw):
        tx._savepoints += 1
        name = f"sp_{tx._savepoints}"
        tx.cur.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            tx.cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
            tx.cur.execute(f"RELEASE SAVEPOINT {name}")
            raise
        tx.cur.execute(f"RELEASE SAVEPOINT {name}")
        return
    with tx.begin_nested():
        tx.connection()
        yield


def placeholders(n: int) -> str:
    """"?, ?, ?" for an IN list of n values."""
    return ", ".join("?" * n)


@lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """sqlite3's `?` placeholders as psycopg's `%s` (our SQL has no literal ? or %)."""
    assert "%" not in sql
    return sql.replace("?", "%s")


if TYPE_CHECKING:
    # A write transaction as the processing path gets it: the daemon's ORM session
    # (store.db.Database.write), or a Raw on a driver connection that no SQLAlchemy
    # holds (store.direct.DirectDatabase.write, for `maildesk ingest`). Hot-path code
    # only ever calls `raw(tx)` on it.
    Tx: TypeAlias = Session | Raw
