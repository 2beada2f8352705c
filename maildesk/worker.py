"""The processing loop: committed inbox messages become ticket changes.

Intake calls `wake()` right after a commit, so a message is processed within
milliseconds, not on the next tick. The loop also polls every `poll` seconds, which
picks up messages queued by `maildesk ingest --queue`, by another node, or left queued
by a crash (their lease runs out). Messages are claimed in batches and processed in one
transaction each (`Pipeline.process_batch`): under load many messages share a commit.
Most are stored from their headers; their follow-ups (body, attachments, outgoing mail:
`Pipeline.follow_up`) run when no new message is waiting and intake has paused, and
before new mail once the oldest has waited `max_defer`: under sustained load they keep
pace instead of piling up.

Intake goes first. The daemon is one process, so processing and SMTP share one CPU's
worth of Python, and on SQLite a processing transaction makes SMTP commits wait. While
intake says it is busy (a session in the middle of a mail transaction), a batch waits,
but never lets the oldest message it knows of wait more than `short_defer` seconds, or
`max_defer` in a burst (the previous wait ran out too: intake has been busy without a
pause): latency stays low at moderate load, and a burst (an MTA flushing its queue) is
taken in at wire speed first and processed right after, as a mail server's queue would. When
the bound forces its hand it takes a large batch (`catch_up`), so processing keeps up under
sustained load instead of being capped at one small batch per deferral. Once intake is
quiet, a backlog left by a burst goes `backlog` at a time: a third less work per message
than small batches. At low load nothing waits: a message is processed right after its
commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from maildesk import metrics
from maildesk.background import BackgroundLoop
from maildesk.domain import InboxState
from maildesk.logs import about
from maildesk.pipeline import Outcome, Pipeline
from maildesk.store import Database, StoreUnavailable, deferred, inbox
from maildesk.store.inbox import utcnow

log = logging.getLogger(__name__)
# Commit times of messages another node processed (PostgreSQL) are never popped here:
# past this many, those older than this are forgotten.
FORGET_AFTER_COUNT = 10_000
FORGET_AFTER_SECONDS = 600.0
INTAKE_POLL = 0.001  # seconds between looks at a busy intake
BURST_POLL = 0.01  # the same in a burst, when the wait may last max_defer
# How long intake must have been quiet (no DATA answered) before a batch of new mail, and
# before a batch of follow-ups: a client sending mail after mail starts the next one within
# a millisecond; follow-ups, ten times the work of a new message, wait for a real pause.
NEW_MAIL_QUIET = 0.001
FOLLOW_UP_QUIET = 0.005


class Worker(BackgroundLoop):
    thread_name = "worker"

    def __init__(
        self, db: Database, pipeline: Pipeline, *, batch: int = 32, catch_up: int = 64,
        backlog: int = 256, poll: float = 1.0, linger: float = 0.01,
        after_batch: Callable[[], None] | None = None,
        yield_to: Callable[[float], bool] | None = None, max_defer: float = 10.0,
        short_defer: float = 0.05,
    ) -> None:
        super().__init__()
        self.db = db
        self.pipeline = pipeline
        self.batch = batch
        self.catch_up = catch_up
        self.backlog = backlog
        self.poll = poll
        self.linger = linger  # after a wake-up, let concurrent messages join the batch
        self._busy = False  # the last batch had company: messages are arriving together
        self.after_batch = after_batch or (lambda: None)
        # Intake goes first (see the module docstring): is it busy, or has it answered a
        # DATA less than the given seconds ago?
        self.yield_to = yield_to or (lambda quiet: False)
        self.max_defer = max_defer
        self.short_defer = short_defer
        self._burst = False  # the last wait for intake ran out
        self._committed: dict[int, float] = {}  # inbox id -> monotonic commit time (latency)
        self._lock = threading.Lock()
        self._held: list[int] = []  # claimed, not yet processed
        self._full = False  # the last claim filled a whole batch
        self._new_mail = False  # woken with committed messages since the last claim

    def wake(self, committed: Sequence[int] = ()) -> None:
        """New messages are committed: process them now. Safe from any thread."""
        if committed:
            self._new_mail = True
            t = time.monotonic()
            with self._lock:
                self._committed.update(dict.fromkeys(committed, t))
                if len(self._committed) > FORGET_AFTER_COUNT:  # another node processed them
                    self._committed = {i: c for i, c in self._committed.items()
                                       if t - c < FORGET_AFTER_SECONDS}
        super().wake()

    def set_pipeline(self, pipeline: Pipeline) -> None:
        """SIGHUP: the next batch runs with the new rules, agents and templates."""
        self.pipeline = pipeline

    def run_once(self) -> list[Outcome]:
        """Claim one batch and process it; [] when nothing is queued."""
        idle = self._wait_for_intake(NEW_MAIL_QUIET)
        # A backlog (the last batch was full) with intake quiet, after a burst: big batches
        # cost a third less per message (fewer commits, index pages written once).
        limit = (self.backlog if self._full else self.batch) if idle else self.catch_up
        while self._follow_ups_overdue():  # new mail never keeps them waiting longer
            if not self._follow_up(self.catch_up):
                break
        # A batch whose transaction failed (database outage) is still leased to us:
        # take it up again first instead of letting it wait out the lease.
        self._new_mail = False
        ids = self._held or inbox.claim(self.db, limit=limit)
        if not ids:
            self._full = False
            return []
        self._held = ids
        self._busy = len(ids) > 1
        self._full = len(ids) >= limit
        outcomes = self.pipeline.process_batch(ids)
        self._held = []
        done = time.monotonic()
        with self._lock:
            started = [self._committed.pop(o.inbox_id, None) for o in outcomes]
        for outcome, t0 in zip(outcomes, started, strict=True):
            metrics.processed.labels(outcome.state.value).inc()
            if outcome.state is InboxState.FAILED:
                metrics.failed.inc()
                log.warning("inbox %s: failed: %s", outcome.inbox_id, outcome.reason,
                            extra=about(inbox=outcome.inbox_id))
            if t0 is not None:
                metrics.latency.observe(done - t0)
        self.after_batch()
        return outcomes

    def _wait_for_intake(self, quiet: float, give_way: bool = False) -> bool | None:
        """Wait while intake is busy, until the oldest message we know of has waited
        `short_defer`, or `max_defer` in a burst, since its commit. True when intake is
        idle (a normal batch), False when the wait ran out (a catch-up batch); with
        `give_way`, None as soon as a new message is committed."""
        with self._lock:
            oldest = min(self._committed.values(), default=time.monotonic())
        deadline = oldest + (self.max_defer if self._burst else self.short_defer)
        # Each look at intake takes the GIL from the event loop: in a burst, look less often.
        pause = BURST_POLL if self._burst else INTAKE_POLL
        while self.yield_to(quiet):
            if give_way and self._new_mail:
                return None
            if time.monotonic() >= deadline or self._stop.is_set():
                self._burst = True
                return False
            time.sleep(pause)
        self._burst = False
        return True

    def follow_up_once(self) -> int | None:
        """One batch of follow-ups (bodies and outgoing mail of messages stored from their
        headers), once intake has paused for FOLLOW_UP_QUIET (within the same bounds as
        new mail); 0 when none is waiting, None when new mail came meanwhile: it goes
        first."""
        idle = self._wait_for_intake(FOLLOW_UP_QUIET, give_way=True)
        if idle is None:
            return None
        return self._follow_up(self.batch if idle else self.catch_up)

    def _follow_ups_overdue(self) -> bool:
        oldest = deferred.oldest(self.db)
        return oldest is not None and (utcnow() - oldest).total_seconds() > self.max_defer

    def _follow_up(self, limit: int) -> int:
        done = self.pipeline.follow_up(limit=limit)
        self._full = done >= limit
        if done:
            self.after_batch()
        return done

    def run_until_empty(self) -> int:
        """Process batches, then follow-ups, until none is left; returns how many messages
        were processed (follow-ups not counted)."""
        n = 0
        while not self._stop.is_set():
            outcomes = self.run_once()
            n += len(outcomes)
            if not outcomes and self.follow_up_once() == 0:
                break
        return n

    @property
    def backlogged(self) -> bool:
        """The last batch was full: more messages are probably waiting to be processed."""
        return self._full

    def start(self) -> None:
        if self.db.is_sqlite:  # one daemon per SQLite file: any lease is a dead process's
            released = inbox.release_leases(self.db)
            if released:
                log.info("took back %d messages leased by a previous run", released)
        super().start()  # stop() finishes the batch in hand; queued messages stay queued

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_until_empty()
            except StoreUnavailable as exc:
                log.warning("processing paused, database unavailable: %s", exc)
            except Exception:
                log.exception("processing loop error; retrying")
            if self._event.wait(self.poll) and self._busy:
                self._stop.wait(self.linger)  # under load only: at low load, no added latency
            self._event.clear()
