"""The daemon's periodic jobs (SPEC §2.7) on APScheduler 3.x: the only importer of apscheduler.

Every `[scheduler].interval` one tick asks the `Leadership` whether this node runs the
jobs now (always on SQLite; on PostgreSQL the holder of an advisory lock, store.leader;
a node that does not lead asks every LEADER_POLL in between) and, if so, runs them in
order, each a plain function of `now`:
1. auto-close (maildesk.autoclose): pending tickets the customer left unanswered;
2. the SLA scan (maildesk.escalation): reminders and breaches;
3. the digest (maildesk.digest): once a day per agent, at digest_at.
Their state is in our tables, and each effect commits with its mail under a unique key,
so a restart, a crash or a second node repeats nothing. `Jobs.run(now)` is what a tick
does, for tests and tools with a clock of their own; `Scheduler` only adds the timer
(one thread, at most one tick at a time; ticks missed while one ran are skipped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from maildesk import metrics
from maildesk.autoclose import auto_close
from maildesk.config import Settings
from maildesk.digest import digest
from maildesk.escalation import scan
from maildesk.outbound.compose import Composer
from maildesk.outbound.render import Templates
from maildesk.store import Database, StoreUnavailable
from maildesk.store.leader import leadership

log = logging.getLogger(__name__)
JOB_ID = "maildesk-jobs"
WATCH_ID = "maildesk-leader-watch"
# A node that does not lead asks this often (when `interval` is longer), and runs the jobs
# as soon as it leads: SPEC §5 wants the jobs back within 30 s of the leader's death, and
# a dead host's lock is free ~20 s after it died (store.direct.PG_SILENCE_LIMITS), a killed
# process's at once; waiting for the next 30 s tick could take twice that.
LEADER_POLL = timedelta(seconds=5)


class Leadership(Protocol):
    def leads(self) -> bool: ...
    def close(self) -> None: ...


@dataclass
class TickResult:
    led: bool = True
    closed: int = 0
    reminders: int = 0
    breaches: int = 0
    digests: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def queued(self) -> int:
        return self.closed + self.reminders + self.breaches + self.digests


class Jobs:
    """The jobs for one version of the settings (SIGHUP builds new ones)."""

    def __init__(self, settings: Settings, db: Database, templates: Templates | None = None
                 ) -> None:
        self.settings = settings
        self.db = db
        self.composer = Composer(settings, templates or Templates(settings.desk.templates))

    def run(self, now: datetime) -> TickResult:
        """One tick's work at `now`: each job runs even when another failed."""
        out = TickResult()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("auto-close", lambda: self._close(now, out)),
            ("SLA scan", lambda: self._scan(now, out)),
            ("digest", lambda: self._digest(now, out)),
        ]
        for name, step in steps:
            try:
                step()
            except StoreUnavailable as exc:
                log.warning("scheduler: %s skipped, database unavailable: %s", name, exc)
            except Exception:
                log.exception("scheduler: %s failed", name)
        return out

    def _close(self, now: datetime, out: TickResult) -> None:
        r = auto_close(self.db, self.settings, self.composer, now)
        out.closed, out.lines = len(r.closed), out.lines + r.lines

    def _scan(self, now: datetime, out: TickResult) -> None:
        r = scan(self.db, self.settings, self.composer, now)
        out.reminders, out.breaches, out.lines = r.reminders, r.breaches, out.lines + r.lines

    def _digest(self, now: datetime, out: TickResult) -> None:
        r = digest(self.db, self.settings, self.composer, now)
        out.digests, out.lines = len(r.sent), out.lines + r.lines


class Scheduler:
    """Runs `Jobs` every interval in a thread of its own, while this node leads."""

    def __init__(self, settings: Settings, db: Database, *,
                 after: Callable[[], None] = lambda: None,
                 leader: Leadership | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.jobs = Jobs(settings, db)
        self.interval = settings.scheduler.interval
        self.after = after  # e.g. wake the sender when a tick queued mail
        self.leader: Leadership = leader or leadership(db.url)
        self.clock = clock
        self._timer: Any = None
        self._leading = False  # as of the last tick

    def tick(self, now: datetime | None = None) -> TickResult:
        now = now or self.clock()
        try:
            led = self.leader.leads()
        except Exception:
            log.exception("scheduler: leadership check failed")
            led = False
        metrics.scheduler_leader.set(1 if led else 0)
        self._leading = led
        if not led:
            return TickResult(led=False)
        result = self.jobs.run(now)
        if result.queued:
            self.after()
        return result

    def start(self) -> None:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line a tick otherwise
        self._timer = BackgroundScheduler(
            timezone=UTC, executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self._timer.add_job(self.tick, _trigger(self.interval), id=JOB_ID,
                            next_run_time=datetime.now(UTC))
        self._timer.add_job(self._watch, _trigger(LEADER_POLL), id=WATCH_ID)
        self._timer.start()
        log.info("scheduler: jobs every %s", self.interval)

    def _watch(self) -> None:
        """Between ticks, a node that does not lead asks again, and ticks once it leads
        (the same thread as the ticks: never two at once)."""
        if not self._leading and self.interval > LEADER_POLL:
            self.tick()

    @property
    def alive(self) -> bool:
        return self._timer is not None and bool(self._timer.running)

    def reload(self, settings: Settings) -> None:
        """SIGHUP: the next tick uses the new settings (and interval)."""
        self.jobs = Jobs(settings, self.jobs.db)
        if settings.scheduler.interval != self.interval:
            self.interval = settings.scheduler.interval
            if self._timer is not None:
                self._timer.reschedule_job(JOB_ID, trigger=_trigger(self.interval))

    def stop(self) -> None:
        """Let a tick in progress finish, then give up leadership."""
        if self._timer is not None:
            self._timer.shutdown(wait=True)
            self._timer = None
        self.leader.close()
        metrics.scheduler_leader.set(0)


def _trigger(interval: timedelta) -> IntervalTrigger:
    return IntervalTrigger(seconds=interval.total_seconds(), timezone=UTC)
