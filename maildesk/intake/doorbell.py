"""The daemon's doorbell: how `maildesk ingest` tells a running daemon that a message is
waiting, and finds out that one runs.

The daemon binds a Unix datagram socket in Linux's abstract namespace, named after its
database (one name per database, so a daemon of another desk on the host never answers).
`maildesk ingest` commits a message and rings: it sends the inbox id. A daemon that
hears it processes the message at once instead of at its next poll, and `ingest` waits
for the result in the database; a ring that nobody answers (ECONNREFUSED) means no daemon
runs on this host for this database, and `ingest` processes the message itself.

An abstract socket needs no file: nothing to clean up after a crash, no stale path that
looks like a running daemon, no permissions to set. Any local process may ring; a ring
only makes the worker look for queued messages. Without the abstract namespace (not
Linux), nobody answers and `ingest` does the work itself, as it always did.

Standard library only, and neither asyncio nor logging until the daemon listens: `ingest`
rings once per message, and asyncio alone costs it more than its commit does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging
    import socket


def address(database_url: str) -> str:
    """The doorbell's abstract socket name for the database of `database_url` (for SQLite,
    the file's real path: the daemon and `ingest` may name it differently; PostgreSQL's
    URL as config.Database spells it, `postgresql+psycopg://`)."""
    key = database_url
    if database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///"):].partition("?")[0]
        key = "sqlite:" + os.path.realpath(path)
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            key = "postgresql+psycopg://" + database_url[len(prefix):]
    return "\0maildesk-doorbell-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def ring(database_url: str, inbox_id: int) -> bool:
    """Tell the daemon of this database that message `inbox_id` is committed; False when
    no daemon listens."""
    import _socket  # the C module alone: `socket` builds its enums, ~10 ms per message

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        sock.sendto(str(inbox_id).encode(), address(database_url))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Doorbell:
    """The daemon's side: on the event loop, every ring calls `on_ring(inbox ids)`."""

    def __init__(self, database_url: str, on_ring: Callable[[Sequence[int]], None]) -> None:
        self.address = address(database_url)
        self.sqlite = database_url.startswith("sqlite")
        self.on_ring = on_ring
        self.sock: socket.socket | None = None

    def start(self) -> None:
        """Listen. When another daemon of the same database on this host already listens
        (several nodes of one PostgreSQL on a host), that one answers `ingest` and this one
        goes on without; a system without abstract sockets is warned about: `ingest` then
        processes its messages itself. On PostgreSQL a ring wakes this host's daemon only:
        `ingest` on a host without one processes its message itself (the threading lock
        and the queued-state check keep a node from processing it twice)."""
        import errno
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self.address)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                _log().info("ingest doorbell: another daemon of this database on this host "
                            "answers it")
            else:
                _log().warning("ingest doorbell not available (%s): `maildesk ingest` next to "
                               "this daemon processes its messages itself", exc)
            return
        import asyncio

        sock.setblocking(False)
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)

    @property
    def sole_sender(self) -> bool:
        """No other daemon can be sending this database's outbox. On SQLite, holding its
        doorbell means no other daemon on this host runs on that file; on PostgreSQL the
        doorbell is per host, and nodes on other hosts share the outbox: never."""
        return self.sock is not None and self.sqlite

    def _read(self) -> None:
        assert self.sock is not None
        ids: list[int] = []
        while True:
            try:
                data = self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                _log().warning("ingest doorbell: %s", exc)
                break
            if data.isdigit():
                ids.append(int(data))
        if ids:
            self.on_ring(ids)

    def stop(self) -> None:
        if self.sock is not None:
            import asyncio

            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


def _log() -> logging.Logger:
    import logging

    return logging.getLogger(__name__)
