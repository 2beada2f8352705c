"""Drains the outbox: claim due rows, deliver, record the result (SPEC §2.1, §2.6).

A temporary failure (4xx, network, Maildir I/O) is retried with exponential backoff, 1
minute doubling up to 1 hour, until the tries span `outbound.max_retry` (2 days by
default); a permanent one (5xx) marks the row failed at once, visible in `maildesk outbox
list` and retried by `maildesk outbox retry ID`. A row is marked sent right after the
transport accepted it. A crash in between leaves it claimed: the Maildir transport finds
its earlier copy and delivers nothing twice, and the SMTP transport has had the row marked
`sending` right before the end of DATA, which a restart counts as sent (store.outbox.
recover): a crash never makes the smarthost get a message twice (see transports).

A daemon that is the only sender of its database (`sole`: on SQLite, the one that owns
the database's doorbell) takes back at start what its dead predecessor had claimed, at
once; otherwise a claim lapses after store.outbox.LEASE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from maildesk import metrics
from maildesk.background import BackgroundLoop
from maildesk.logs import about
from maildesk.outbound.transports import DeliveryError, Transport
from maildesk.store import Database, StoreUnavailable, outbox
from maildesk.store.inbox import utcnow
from maildesk.store.outbox import Claimed

log = logging.getLogger(__name__)
FIRST_DELAY = timedelta(minutes=1)
MAX_DELAY = timedelta(hours=1)


def _about(item: outbox.OutboxItem) -> dict[str, object]:
    """The ids a log line about an outgoing message carries (JSON log format)."""
    return about(outbox=item.id, message_id=item.message_id, ticket=item.ticket_id)


def backoff(attempts: int) -> timedelta:
    """Delay before try number `attempts + 1`, after `attempts` failed tries."""
    delay: timedelta = FIRST_DELAY * 2 ** min(max(0, attempts - 1), 16)
    return min(delay, MAX_DELAY)


def gives_up(attempts: int, max_retry: timedelta) -> bool:
    """True when the tries so far already span max_retry on the backoff schedule."""
    waited = sum((backoff(n) for n in range(1, attempts + 1)), timedelta(0))
    return waited >= max_retry


@dataclass
class DrainResult:
    sent: int = 0
    retried: int = 0
    failed: int = 0


class Sender(BackgroundLoop):
    thread_name = "outbox-sender"

    def __init__(
        self, db: Database, transport_factory: Callable[[], Transport], *,
        max_retry: timedelta, batch: int = 50, poll: float = 5.0, linger: float = 0.05,
        yield_to: Callable[[], bool] | None = None, max_defer: float = 2.0,
        sole: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__()
        self.sole = sole or (lambda: False)
        self._recovered_at = -float("inf")
        self.db = db
        self.transport_factory = transport_factory
        self.max_retry = max_retry
        self.batch = batch
        self.poll = poll
        self.linger = linger  # after a wake-up, let more mail gather: fewer commits and fsyncs
        # Intake and processing go first: in a burst, sending competes with them for the
        # one core the GIL gives us, so while `yield_to()` says clients are sending or
        # messages wait to become tickets, sending waits too, up to `max_defer` seconds
        # (acks still go out at once at low load).
        self.yield_to = yield_to or (lambda: False)
        self.max_defer = max_defer
        # Left over when the database went away mid-batch: results of deliveries made but
        # not recorded, and rows claimed but not tried. Settled before anything new is
        # claimed, so a delivered message is not sent again (a smarthost would deliver a
        # second copy) and none waits out its lease (outbox.LEASE) once the database is back.
        self._unrecorded: list[outbox.Result] = []
        self._unreleased: list[int] = []

    def configure(self, transport_factory: Callable[[], Transport], max_retry: timedelta) -> None:
        """SIGHUP: the next drain uses the new outbound settings."""
        self.transport_factory, self.max_retry = transport_factory, max_retry

    def drain(self, now: datetime | None = None) -> DrainResult:
        """Send everything due at `now`, batch by batch, until nothing is left."""
        result = DrainResult()
        self._settle()
        self._recover(now)
        transport = self.transport_factory()
        try:
            while not self._stop.is_set():
                self._defer()
                claimed = outbox.claim_due(self.db, now=now, limit=self.batch)
                self._send_batch(transport, claimed, now, result)
                if len(claimed) < self.batch:
                    break
        finally:
            transport.close()
        return result

    def _recover(self, now: datetime | None) -> None:
        """What a dead sender left: at the first drain, then once per LEASE (outbox.recover)."""
        if time.monotonic() - self._recovered_at < outbox.LEASE.total_seconds():
            return
        for item in outbox.recover(self.db, now=now, sole=self.sole()):
            log.warning("outbox %s <%s>: %s", item.id, item.message_id, outbox.PRESUMED_SENT,
                        extra=_about(item))
        self._recovered_at = time.monotonic()

    def _defer(self) -> None:
        deadline = time.monotonic() + self.max_defer
        while self.yield_to() and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(0.005)

    def _send_batch(self, transport: Transport, claimed: list[Claimed], now: datetime | None,
                    result: DrainResult) -> None:
        """Deliver claimed rows. Results are recorded after each message, or once per batch
        when the transport is idempotent (a repeat leaves one copy): fewer commits."""
        done: list[outbox.Result] = []
        try:
            for i, c in enumerate(claimed):
                if self._stop.is_set():  # stopping: the rest is due again at once
                    self._release([x.item.id for x in claimed[i:]])
                    break
                done.append(self._deliver(transport, c, now or utcnow(), result))
                if not transport.idempotent:
                    results, done = done, []
                    try:
                        self._record(results)
                    except StoreUnavailable:
                        self._unreleased += [x.item.id for x in claimed[i + 1:]]
                        raise
        finally:
            if done:
                transport.sync()  # raises DeliveryError: nothing recorded, all sent again
                self._record(done)

    def _record(self, results: list[outbox.Result]) -> None:
        try:
            outbox.record(self.db, results)
        except StoreUnavailable:
            self._unrecorded += results
            raise

    def _release(self, ids: list[int]) -> None:
        try:
            outbox.release(self.db, ids)
        except StoreUnavailable:
            self._unreleased += ids
            raise

    def _settle(self) -> None:
        """Record and give back what a database outage left in hand (see __init__)."""
        if self._unrecorded:
            outbox.record(self.db, self._unrecorded)
            log.info("outbox: recorded %d deliveries made while the database was away",
                     len(self._unrecorded))
            self._unrecorded = []
        if self._unreleased:
            outbox.release(self.db, self._unreleased)
            self._unreleased = []

    def _deliver(self, transport: Transport, claimed: Claimed, now: datetime,
                 result: DrainResult) -> outbox.Result:
        item = claimed.item
        mark = None if transport.idempotent else lambda: outbox.mark_sending(self.db, item.id)
        try:
            note = transport.send(item.id, item.envelope_from, item.recipients, claimed.raw,
                                  maybe_sent=claimed.reclaimed, before_end=mark)
        except DeliveryError as exc:
            tries = item.attempts + 1
            if exc.permanent or gives_up(tries, self.max_retry):
                why = str(exc) if exc.permanent else f"gave up after {tries} tries: {exc}"
                metrics.outbox_failed.inc()
                result.failed += 1
                log.warning("outbox %s <%s>: failed: %s", item.id, item.message_id, why,
                            extra=_about(item))
                return outbox.Result(item.id, outbox.FAILED, why)
            later = now + backoff(tries)
            result.retried += 1
            log.info("outbox %s <%s>: retry at %s: %s", item.id, item.message_id,
                     later.isoformat(timespec="seconds"), exc, extra=_about(item))
            return outbox.Result(item.id, outbox.PENDING, str(exc), later)
        metrics.outbox_sent.inc()
        result.sent += 1
        log.info("outbox %s <%s>: sent to %s%s", item.id, item.message_id,
                 ", ".join(item.recipients), f" ({note})" if note else "", extra=_about(item))
        return outbox.Result(item.id, outbox.SENT, note, now)

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._event.wait(self.poll):
                self._stop.wait(self.linger)
            self._event.clear()
            if self._stop.is_set():
                break
            try:
                self.drain()
                metrics.outbox_backlog.set(outbox.backlog(self.db))
            except StoreUnavailable as exc:
                log.warning("outbox: database unavailable, retrying: %s", exc)
            except Exception:
                log.exception("outbox: unexpected error while sending")
