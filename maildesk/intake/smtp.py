"""SMTP intake (SPEC §2.1, §2.8): the only importer of aiosmtpd.

RCPT is accepted only for desk addresses, their `+` reply forms, the VERP bounce
address and `postmaster` at the desks' domains (RFC 5321 §4.5.1): the server never
relays. DATA is answered `250` only once the raw message is
committed to the inbox; when the commit fails the answer is `451 4.3.0` and the sending
MTA retries later. Concurrent DATA commands share one transaction ("group commit"): while
one commit is in progress the next messages gather, and go to disk together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

from maildesk import metrics
from maildesk.addresses import is_desk_recipient, is_postmaster
from maildesk.config import Settings
from maildesk.domain import Source
from maildesk.identity import identity
from maildesk.logs import about
from maildesk.store import Database, StoreUnavailable, inbox
from maildesk.store.inbox import Incoming

log = logging.getLogger(__name__)
MAX_GROUP = 64  # messages per group commit


class GroupCommitter:
    """Commits inbox rows from the event loop; rows that arrive together commit together.

    A message alone (`alone()`: no other DATA waiting for its commit) is committed right
    on the event loop, as the bare server of bench/ingest.py writes its files: the
    hand-off to the commit thread and back costs a tenth of a one-connection round.
    That commit never waits for a lock (store.inbox.add_now): when the worker or another
    process holds it, or on PostgreSQL, the message takes the commit thread instead."""

    def __init__(self, db: Database, alone: Callable[[], bool] = lambda: False) -> None:
        self.db = db
        self.alone = alone
        self._pending: list[tuple[Incoming, asyncio.Future[int]]] = []
        self._busy = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inbox-commit")

    async def commit(self, row: Incoming) -> int:
        """The inbox id once committed; raises StoreUnavailable (or another DB error)."""
        if self.db.is_sqlite and not self._busy and self.alone():
            try:
                return inbox.add_now(self.db, row)
            except Exception as exc:  # a lock is taken, or the database refused: try the
                log.debug("commit on the loop not possible (%r): on the commit thread", exc)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                rows = [row for row, _ in group]
                results = await loop.run_in_executor(self._executor, self._write, rows)
                for (_, future), result in zip(group, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._busy = False

    def _write(self, rows: list[Incoming]) -> list[int | BaseException]:
        """One transaction for the group. If it fails for a reason other than the database
        being unavailable, each row is tried alone: one bad row never fails the others."""
        try:
            ids = inbox.add_many(self.db, rows)
            if len(ids) == len(rows):
                return list(ids)
            raise StoreUnavailable("the group commit returned fewer ids than rows")
        except StoreUnavailable as exc:
            return [exc] * len(rows)
        except Exception as exc:
            if len(rows) == 1:
                return [exc]
        return [result for row in rows for result in self._write([row])]

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class IntakeHandler:
    """aiosmtpd handler: RCPT policy and the committed DATA."""

    def __init__(self, settings: Settings, committer: GroupCommitter,
                 on_commit: Callable[[Sequence[int]], None]) -> None:
        self.settings = settings
        self.committer = committer
        self.on_commit = on_commit
        self.in_flight = 0  # DATA commands between end of data and our answer
        self.last_answer = 0.0  # monotonic time of the last DATA answered

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        desks = self.settings.desk_addresses()
        if not (is_desk_recipient(address, desks) or is_postmaster(address, desks)):
            metrics.smtp_rejected.labels("550").inc()
            return (f"550 5.1.1 <{_printable(address)}>: no such mailbox here"
                    " (this server does not relay)")
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            metrics.smtp_rejected.labels("452").inc()
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.in_flight += 1
        try:
            row = self._row(raw, session, envelope)
            try:
                inbox_id = await self.committer.commit(row)
            except Exception as exc:  # StoreUnavailable or any database error: never lose it
                metrics.smtp_rejected.labels("451").inc()
                log.warning("smtp <%s> from %s: not stored, answered 451: %s",
                            row.message_id or "", session.peer, exc,
                            extra=about(message_id=row.message_id))
                return "451 4.3.0 Cannot store the message now, try again later"
        finally:
            self.in_flight -= 1
            self.last_answer = time.monotonic()
        metrics.received.labels(Source.SMTP.value).inc()
        if isinstance(server, DeskSMTP):
            server.last_message = time.monotonic()
        log.info("inbox %s <%s>: received by SMTP from %s (%d bytes)", inbox_id,
                 row.message_id or "", session.peer, len(raw),
                 extra=about(inbox=inbox_id, message_id=row.message_id))
        self.on_commit([inbox_id])
        return f"250 2.0.0 OK: queued as {inbox_id}"

    @staticmethod
    def _row(raw: bytes, session: Session, envelope: Envelope) -> Incoming:
        message_id, digest = identity(raw)
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        sender = (envelope.mail_from or "").strip().lower()
        return inbox.new_row(
            raw, source=Source.SMTP, message_id=message_id[:998] if message_id else None,
            content_hash=digest, envelope_from="" if sender == "<>" else sender,
            envelope_to=tuple(a.lower() for a in envelope.rcpt_tos), origin=f"smtp {peer}"[:500],
        )


def _printable(address: str) -> str:
    return "".join(c for c in address if c.isprintable())[:200]


class _Connections:
    """Live sessions, for max_connections and for draining at SIGTERM.

    A full house does not keep new clients out while its sessions only idle: a slow-loris
    client that sends NOOP (or MAIL and RSET) every few minutes resets aiosmtpd's timeout
    forever and would hold its slot for good. So a newcomer to a full house closes the
    session that has been idle longest, once that is longer than `idle_after`; only when
    there is none is it refused (421). Idle is: no message sent (connecting counts as
    one), or, in the middle of a DATA, no bytes received (a client that stalls with its
    message half sent, holding what it sent in our memory). A DATA that keeps trickling
    is bounded by aiosmtpd's timeout (`connection_timeout`), which counts the whole DATA:
    it is not reset while data arrives."""

    def __init__(self, limit: int, idle_after: float) -> None:
        self.limit = limit
        self.idle_after = idle_after
        self.live: set[DeskSMTP] = set()

    def idlest(self, now: float) -> DeskSMTP | None:
        """The session to close for a newcomer, or None."""
        idle = [c for c in self.live if not c.closing and now - c.idle_since > self.idle_after]
        return min(idle, key=lambda c: c.idle_since, default=None)


_TOO_BIG = {
    "552 Error: Too much mail data": "552 5.3.4 Message too big for this server",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds the fixed maximum message size",
}


class DeskSMTP(SMTP):
    """aiosmtpd's SMTP with a connection limit (421 beyond it) and a graceful close."""

    def __init__(self, handler: IntakeHandler, connections: _Connections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._refused = False
        self._shut = False
        self.in_data = False
        self.last_message = time.monotonic()  # connected, or the last message accepted
        self.last_heard = self.last_message  # the last bytes received

    @property
    def closing(self) -> bool:
        return self._shut

    @property
    def idle_since(self) -> float:
        return self.last_heard if self.in_data else self.last_message

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None  # not the STARTTLS upgrade of a live session
        if first and len(self._connections.live) >= self._connections.limit \
                and not self._make_room():
            self._refused = True
            metrics.smtp_rejected.labels("421").inc()
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
            transport.close()
            return
        self._connections.live.add(self)
        super().connection_made(transport)

    def _make_room(self) -> bool:
        """Close the idlest session for this newcomer (see _Connections); False: none."""
        idle = self._connections.idlest(time.monotonic())
        if idle is None:
            return False
        metrics.smtp_rejected.labels("421").inc()
        log.info("smtp %s: closed, idle for %.0f s%s while all %d connections are taken",
                 idle.session.peer if idle.session else "?", time.monotonic() - idle.idle_since,
                 " in its DATA" if idle.in_data else "", self._connections.limit)
        idle.shut(b"421 4.4.2 Idle while the server is busy, closing the connection\r\n")
        return True

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._connections.live.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's replies, with the enhanced status code (RFC 3463) on the size
        rejections it writes itself: `552 5.3.4` at MAIL FROM SIZE= and at DATA."""
        if isinstance(status, str) and status in _TOO_BIG:
            await super().push(_TOO_BIG[status])
            return
        await super().push(status)

    @property
    def in_transaction(self) -> bool:
        """MAIL FROM given and the transaction not finished yet (its DATA may be on the way)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    def shut(self, reply: bytes = b"421 4.3.2 Service shutting down, try again later\r\n"
             ) -> None:
        """Say 421 and hang up (SIGTERM, or room for a newcomer). A session whose transport
        is already going away (the client quit, or a TLS layer is tearing down) is only
        closed: asyncio's TLS transport raises on a write once its protocol is gone."""
        transport = self.transport
        if transport is None or self._shut:
            return
        self._shut = True
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            with contextlib.suppress(AttributeError, RuntimeError, OSError):
                transport.write(reply)
        transport.close()


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    cfg = settings.smtp
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    return context


def _authenticator(settings: Settings) -> Callable[..., AuthResult]:
    import hmac

    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              auth_data: object) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        users = settings.smtp.auth_users()  # re-read: a changed file needs no restart
        user = auth_data.login.decode("utf-8", "replace")
        password = users.get(user)
        ok = password is not None and hmac.compare_digest(
            password.encode(), auth_data.password)
        # handled=False: aiosmtpd answers 535 itself (True would leave the client waiting)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    return check


class SmtpIntake:
    """The listener on `smtp.listen`, its handler and its group committer."""

    def __init__(self, settings: Settings, db: Database,
                 on_commit: Callable[[Sequence[int]], None], hostname: str) -> None:
        self.settings = settings
        self.hostname = hostname
        self.committer = GroupCommitter(db, alone=lambda: self.handler.in_flight <= 1)
        self.handler = IntakeHandler(settings, self.committer, on_commit)
        self.connections = _Connections(settings.smtp.max_connections,
                                        settings.smtp.busy_idle_timeout.total_seconds())
        self.tls = tls_context(settings)  # loaded once: not on every connection
        self.server: asyncio.Server | None = None

    def _protocol(self) -> DeskSMTP:
        cfg, context = self.settings.smtp, self.tls
        return DeskSMTP(
            self.handler, self.connections, hostname=self.hostname, ident="maildesk",
            data_size_limit=cfg.max_message_size, enable_SMTPUTF8=True,
            tls_context=context, require_starttls=cfg.require_tls and context is not None,
            timeout=cfg.connection_timeout.total_seconds(),
            authenticator=_authenticator(self.settings) if cfg.auth_users_file else None,
            auth_require_tls=True,
        )

    async def start(self) -> tuple[str, int]:
        cfg = self.settings.smtp
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, host=cfg.host, port=cfg.port,
                                               reuse_address=True)
        sock = self.server.sockets[0].getsockname()
        log.info("SMTP intake listening on %s:%s", sock[0], sock[1])
        return str(sock[0]), int(sock[1])

    def busy(self, quiet: float) -> bool:
        """Is a client in the middle of sending: a received message waiting for its commit,
        a session between MAIL FROM and the end of its DATA, or a DATA answered less than
        `quiet` seconds ago (a client sending mail after mail starts the next one at once)?
        The worker asks before each batch, from its own thread (a copy of the set, and a
        retry-free answer if it changes meanwhile)."""
        if self.handler.in_flight or time.monotonic() - self.handler.last_answer < quiet:
            return True
        try:
            return any(c.in_transaction for c in list(self.connections.live))
        except RuntimeError:  # the set changed while copied: a connection came or went
            return True

    def reload(self, settings: Settings) -> None:
        """New desk addresses, limits and certificates apply to new commands and
        connections; the listening address stays until a restart."""
        self.settings = settings
        self.handler.settings = settings
        self.connections.limit = settings.smtp.max_connections
        self.connections.idle_after = settings.smtp.busy_idle_timeout.total_seconds()
        self.tls = tls_context(settings)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening; idle sessions close now, transactions get `grace` seconds."""
        if self.server is not None:
            self.server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            for conn in [c for c in self.connections.live if not c.in_transaction]:
                conn.shut()
            if not self.connections.live and not self.handler.in_flight:
                break
            if loop.time() > deadline and not self.handler.in_flight:
                for conn in list(self.connections.live):
                    conn.shut()
                break
            await asyncio.sleep(0.02)
        await loop.run_in_executor(None, self.committer.close)
