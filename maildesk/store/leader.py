"""Which node runs the scheduled jobs (SPEC §5): a PostgreSQL session advisory lock.

`AdvisoryLeader.leads()` holds `pg_try_advisory_lock(SCHEDULER_LOCK_KEY)` on a connection
of its own (autocommit, outside any pool). The node that got it leads while the
connection lives; the others ask again at each tick. When the leader dies, PostgreSQL
ends its session and frees the lock, so another node takes over at its next tick; a
leader that loses its connection stops leading at once and asks again next time. On
SQLite there is one node: `AlwaysLeader`. The jobs' unique keys (store.sla) make a
moment with two leaders harmless anyway.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from maildesk.store import direct

log = logging.getLogger(__name__)
SCHEDULER_LOCK_KEY = 0x6D64736B  # "mdsk"


class AlwaysLeader:
    def leads(self) -> bool:
        return True

    def close(self) -> None:
        pass


class AdvisoryLeader:
    def __init__(self, url: str, key: int = SCHEDULER_LOCK_KEY) -> None:
        # direct.connect: TCP keepalives both ways, so a dead host's lock is freed soon
        self.engine = create_engine(url, poolclass=NullPool,
                                    creator=lambda: direct.connect(url, timeout=5))
        self.key = key
        self.conn: Connection | None = None
        self.leading = False

    def leads(self) -> bool:
        try:
            if self.conn is None:
                self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if self.leading:
                self.conn.execute(text("SELECT 1"))  # still alive, so still ours
            else:
                got = self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                        {"k": self.key}).scalar()
                self.leading = bool(got)
                if self.leading:
                    log.info("this node runs the scheduled jobs (advisory lock %#x)", self.key)
        except SQLAlchemyError as exc:
            if self.leading:
                log.warning("scheduler: lost the leader's connection: %s", exc)
            self._drop()
        return self.leading

    def _drop(self) -> None:
        self.leading = False
        if self.conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.conn.close()
            self.conn = None

    def close(self) -> None:
        """Give up leadership: unlock at once (closing the session would free the lock too,
        but the server may take a moment to notice)."""
        if self.leading and self.conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        self._drop()
        self.engine.dispose()


def leadership(url: str) -> AlwaysLeader | AdvisoryLeader:
    return AlwaysLeader() if url.startswith("sqlite") else AdvisoryLeader(url)
