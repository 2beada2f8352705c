"""`maildesk serve`: builds everything from Settings, runs it, stops it cleanly.

One asyncio loop in the main thread carries the SMTP listener, the metrics endpoint,
the signals and the systemd notifications; processing and sending run in a thread each,
so a slow smarthost or a long batch never delays a `250`. The scheduled jobs (SLA
reminders and breaches, auto-close, the digest: maildesk.scheduler) run in a thread of
their own every `[scheduler].interval`, on the leader node only. SIGTERM stops listening, lets
transactions in progress finish (their `250` is only sent after the commit), finishes
the batch and the message in hand, and exits 0; what is still queued stays in the
database for the next start. SIGHUP re-reads the config file and swaps rules, agents and
templates in between batches, without closing a connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from maildesk import health, logs, metrics
from maildesk.app import build_pipeline, open_database
from maildesk.config import ConfigError, Settings, load_settings
from maildesk.intake.doorbell import Doorbell
from maildesk.intake.smtp import SmtpIntake
from maildesk.outbound.render import Templates
from maildesk.outbound.sender import Sender
from maildesk.outbound.transports import make_transport
from maildesk.parse_pool import make_parser
from maildesk.scheduler import Scheduler
from maildesk.store import Database, StoreUnavailable, deferred, outbox, tickets
from maildesk.worker import FOLLOW_UP_QUIET, Worker

if TYPE_CHECKING:
    from maildesk.intake.imap_health import Failure

log = logging.getLogger("maildesk.service")
SHIPPED_TEMPLATES = ("ack", "solved", "command_error", "agent_reply", "new_ticket_agent",
                     "customer_reply_agent", "sla_reminder", "sla_breach")


class Intake(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float = 10) -> None: ...
    def reload(self, settings: Settings) -> None: ...
    def failures(self) -> dict[str, Failure]: ...


def check_templates(settings: Settings) -> list[str]:
    """Problems with the templates the daemon renders. The digest's (newer than SPEC's
    list, and absent from an operator's older copy of the folder) only warns: the digest
    is withheld, with a log line, until it is there."""
    templates = Templates(settings.desk.templates)
    if settings.scheduler.digest_time:
        for line in templates.check(["digest"]):
            log.warning("%s: no daily digest until it is there (see the shipped templates)",
                        line)
    return templates.check(SHIPPED_TEMPLATES)


def run(settings: Settings, config_path: Path | None = None) -> int:
    """The daemon's main: returns the exit status (0 after SIGTERM)."""
    logs.configure(settings.log)
    problems = check_templates(settings)
    if problems:
        for line in problems:
            log.error("%s", line)
        return 1
    return asyncio.run(Service(settings, config_path).serve())


class Service:
    def __init__(self, settings: Settings, config_path: Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.db: Database = open_database(settings)
        self.sender = Sender(self.db, lambda: make_transport(self.settings.outbound),
                             max_retry=settings.outbound.max_retry,
                             yield_to=lambda: self.worker.backlogged
                             or self._intake_busy(FOLLOW_UP_QUIET),
                             sole=lambda: self.doorbell.sole_sender)
        self.smtp: SmtpIntake | None = None
        # [workers] parse_processes: follow-ups are read whole in processes of our own.
        self.parser = make_parser(settings.workers.parse_processes)
        self.worker = Worker(self.db, build_pipeline(settings, self.db, self.parser),
                             after_batch=self.sender.wake, yield_to=self._intake_busy)
        if settings.smtp.enabled:
            hostname = settings.smtp.hostname or socket.getfqdn()
            self.smtp = SmtpIntake(settings, self.db, self.worker.wake, hostname)
        self.imap: Intake | None = None
        self.metrics: MetricsServer | None = None
        self.scheduler = Scheduler(settings, self.db, after=self.sender.wake)
        self.doorbell = Doorbell(settings.database.url, self.worker.wake)  # `maildesk ingest`
        self._stopping = asyncio.Event()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        # Before anything listens: a SIGTERM that comes while the rest starts (the scheduler
        # imports APScheduler after SMTP listens) is a stop once started, not a kill.
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        # The parsing processes start first: mail is taken in once it can be read at speed.
        parser_started = loop.run_in_executor(None, self.parser.start)
        self.doorbell.start()  # first: it tells the sender whether it is the only one
        self.worker.start()
        self.sender.start()
        if self.settings.metrics.listen:  # first: /healthz answers once mail is taken in
            self.metrics = MetricsServer(self.db, self._health_problems)
            await self.metrics.start(self.settings.metrics.host or "127.0.0.1",
                                     self.settings.metrics.port or 0)
        await parser_started
        if self.smtp is not None:
            await self.smtp.start()
        self._start_imap(self.settings)
        self.scheduler.start()
        # Everything built so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise stall processing for tens of ms.
        gc.freeze()
        self.worker.wake()  # whatever an earlier run or `ingest --queue` left queued
        self.sender.wake()
        watchdog = loop.create_task(self._watchdog())
        sd_notify("READY=1\nSTATUS=accepting mail")
        log.info("maildesk is running (pid %s)", os.getpid())
        await self._stopping.wait()
        sd_notify("STOPPING=1")
        log.info("stopping: draining SMTP transactions, the batch and the message in hand")
        watchdog.cancel()
        await self._shutdown()
        log.info("stopped")
        return 0

    def _start_imap(self, settings: Settings) -> None:
        if settings.mailboxes and self.imap is None:
            from maildesk.intake.imap import ImapIntake

            self.imap = ImapIntake(settings, self.db, self.worker.wake)
            self.imap.start()

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        self.doorbell.stop()
        if self.smtp is not None:
            await self.smtp.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        for stop in (self.imap.stop if self.imap else None, self.scheduler.stop,
                     self.worker.stop, self.sender.stop):
            if stop is not None:
                await loop.run_in_executor(None, stop)
        await loop.run_in_executor(None, self.parser.close)  # the worker has stopped
        self.db.dispose()

    async def reload(self) -> None:
        """SIGHUP: a new config applies from the next batch; a bad one changes nothing."""
        if self.config_path is None:
            log.warning("SIGHUP: no config file to re-read")
            return
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, load_settings, self.config_path)
            problems = check_templates(new)
            if problems:
                raise ConfigError(problems)
            pipeline = build_pipeline(new, self.db, self.parser)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded:\n%s", "\n".join(exc.problems))
            return
        for what, old_value, new_value in (
            ("smtp", self.settings.smtp, new.smtp),
            ("database", self.settings.database, new.database),
        ):
            if old_value != new_value:
                log.warning("SIGHUP: [%s] changed; it takes effect at the next restart", what)
        sla_changed = [p.model_dump() for p in new.sla] != [
            p.model_dump() for p in self.settings.sla]
        self.settings = new
        self.worker.set_pipeline(pipeline)
        if self.smtp is not None:
            self.smtp.reload(new)
        self.sender.configure(lambda: make_transport(new.outbound), new.outbound.max_retry)
        if self.imap is not None:
            self.imap.reload(new)
        self._start_imap(new)
        self.scheduler.reload(new)
        if sla_changed:
            log.warning("SIGHUP: [[sla]] changed: open tickets take the new policies at their"
                        " next change; `maildesk sla recompute` applies them to all now")
        log.info("SIGHUP: reloaded rules, agents, queues and templates from %s", self.config_path)

    def _intake_busy(self, quiet: float) -> bool:
        return self.smtp is not None and self.smtp.busy(quiet)

    def _healthy(self) -> bool:
        """The watchdog's question: are the threads alive? (Not the database: a restart
        does not bring it back.)"""
        return self.worker.alive and self.sender.alive and not self._stopping.is_set()

    def _health_problems(self) -> list[str]:
        """What /healthz reports (see maildesk.health); [] when healthy."""
        problems = [f"{name} thread not running" for name, loop in
                    (("worker", self.worker), ("sender", self.sender)) if not loop.alive]
        if self._stopping.is_set():
            problems.append("stopping")
        problems += [p for p in [health.database_problem(self.db)] if p] or [
            p for p in [health.write_problem(self.db)] if p]
        if self.imap is not None:
            problems += health.mailbox_problems(self.imap.failures(), datetime.now(UTC),
                                                self.settings.desk.alert_after)
        return problems

    async def _watchdog(self) -> None:
        """systemd WatchdogSec: ping at half the interval while the workers are alive."""
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if not usec or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            return
        while True:
            await asyncio.sleep(usec / 2_000_000)
            if self._healthy():
                sd_notify("WATCHDOG=1")


def sd_notify(state: str) -> None:
    """The systemd notify protocol: one datagram to $NOTIFY_SOCKET; nothing without it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("systemd notify failed: %s", exc)


class MetricsServer:
    """GET /metrics (Prometheus text format) and GET /healthz on `metrics.listen`:
    200 "ok", or 503 "unhealthy" and one line per problem that `problems()` lists."""

    def __init__(self, db: Database, problems: Callable[[], list[str]]) -> None:
        self.db = db
        self.problems = problems
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port)
        log.info("metrics on http://%s:%s/metrics", host, self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1].decode("ascii", "replace") if b" " in request else ""
            status, ctype, body = await asyncio.get_running_loop().run_in_executor(
                None, self._respond, path.split("?", 1)[0])
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _respond(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            try:
                metrics.outbox_backlog.set(outbox.backlog(self.db))
                metrics.outbox_failed_messages.set(outbox.failed_count(self.db))
                metrics.follow_ups.set(deferred.count(self.db))
                for status, n in tickets.count_by_status(self.db).items():
                    metrics.tickets.labels(status).set(n)
                metrics.database_up.set(1)
            except StoreUnavailable:
                metrics.database_up.set(0)
            return ("200 OK", *metrics.exposition())
        if path == "/healthz":
            problems = self.problems()
            if not problems:
                return "200 OK", "text/plain", b"ok\n"
            body = "unhealthy\n" + "".join(f"{p}\n" for p in problems)
            return "503 Service Unavailable", "text/plain; charset=utf-8", body.encode()
        return "404 Not Found", "text/plain", b"not found\n"
