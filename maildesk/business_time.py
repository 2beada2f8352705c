"""Business-time arithmetic: how much opening time lies between two instants, and when a
business duration that starts at an instant runs out.

Pure (standard library only). A `Calendar` is a week of opening windows (`BusinessHours`,
minutes since local midnight), an IANA time zone and a holiday test. Every instant is an
aware datetime; everything is computed on UTC instants and whole microseconds, so:
- a DST change moves no business time: a window's two ends are turned into instants by
  the zone, and the time between them is what really passes (09:00-18:00 is 9 hours on
  the day the clocks change; "Mon-Sun 00:00-24:00" has a 23-hour day in March and a
  25-hour day in October, and an hour of it is an hour of the clock on the wall too);
  a window end that does not exist that night (02:30 in March) is read as the instant
  the clock jumps over it, one that exists twice (02:30 in October) as the first;
- results are exact and the same in every process, whatever was computed before: a due
  time is part of the key that makes SLA mail exactly once (maildesk.store.sla).

`position(t)` is the business time between a fixed origin and `t`; the elapsed business
time between two instants is the difference of their positions, so a report over a
million tickets costs a dictionary lookup per instant. Per local day the calendar keeps
its windows as instants and the position at its start (filled in day by day, under a lock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Protocol

MAX_DAYS = 3660  # look no further than ten years for opening time
_US = timedelta(microseconds=1)
_ONE_DAY = timedelta(days=1)
_MEMO = 8192  # instants whose local day is remembered (a due time is asked for often)
Interval = tuple[datetime, datetime]
Span = tuple[datetime, datetime, int]  # start, end, length in microseconds
Pause = tuple[datetime, datetime | None]  # end None: still paused


class Week(Protocol):
    """Opening windows per weekday (Monday = 0): config.hours.BusinessHours."""

    def windows(self, weekday: int) -> tuple[tuple[int, int], ...]: ...


def _us(delta: timedelta) -> int:
    return delta // _US


class Calendar:
    """Business hours in a time zone, minus holidays."""

    def __init__(self, week: Week, zone: tzinfo, is_holiday: Callable[[date], bool]) -> None:
        self.week = week
        self.zone = zone
        self.is_holiday = is_holiday
        self._lock = threading.Lock()
        self._days: dict[date, tuple[Span, ...]] = {}
        self._start: dict[date, int] = {}  # position at the start of each known day
        self._local: dict[datetime, date] = {}
        self._first: date | None = None
        self._last: date | None = None

    # --- days ---------------------------------------------------------------------------

    def day_of(self, t: datetime) -> date:
        """The local date of an instant (remembered: zone conversions are the slow part)."""
        found = self._local.get(t)
        if found is None:
            if len(self._local) > _MEMO:
                self._local.clear()
            found = self._local[t] = t.astimezone(self.zone).date()
        return found

    def intervals(self, day: date) -> tuple[Interval, ...]:
        """The opening windows of one local day as UTC instants (none on a holiday)."""
        return tuple((a, b) for a, b, _ in self._spans(day))

    def _spans(self, day: date) -> tuple[Span, ...]:
        found = self._days.get(day)
        if found is None:
            found = self._days[day] = self._compute(day)
        return found

    def _compute(self, day: date) -> tuple[Span, ...]:
        if self.is_holiday(day):
            return ()
        out = []
        for start, end in self.week.windows(day.weekday()):
            a, b = self._instant(day, start), self._instant(day, end)
            if b > a:
                out.append((a, b, _us(b - a)))
        return tuple(out)

    def _instant(self, day: date, minute: int) -> datetime:
        if minute >= 1440:
            day, minute = day + timedelta(days=1), minute - 1440
        local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=self.zone)
        return local.astimezone(UTC)

    def _day_start(self, day: date) -> int:
        """Business microseconds from the calendar's origin to the start of `day`."""
        found = self._start.get(day)
        if found is not None:
            return found
        with self._lock:
            if self._first is None or self._last is None:
                self._first = self._last = day
                self._start[day] = 0
            while self._last < day:
                nxt = self._last + _ONE_DAY
                self._start[nxt] = self._start[self._last] + self._length(self._last)
                self._last = nxt
            while self._first > day:
                prev = self._first - _ONE_DAY
                self._start[prev] = self._start[self._first] - self._length(prev)
                self._first = prev
            return self._start[day]

    def _length(self, day: date) -> int:
        return sum(length for _, _, length in self._spans(day))

    # --- questions ----------------------------------------------------------------------

    def position(self, t: datetime) -> int:
        """Business microseconds from the origin to `t` (only differences mean anything)."""
        day = self.day_of(t)
        pos = self._day_start(day)
        for a, b, length in self._spans(day):
            if t <= a:
                break
            pos += length if t >= b else _us(t - a)
        return pos

    def elapsed(self, start: datetime, end: datetime, pauses: Sequence[Pause] = ()) -> timedelta:
        """Business time in [start, end), less the business time of `pauses` in it."""
        if end <= start:
            return timedelta(0)
        total = self.position(end) - self.position(start)
        for ps, pe in pauses:
            a, b = max(ps, start), min(pe or end, end)
            if b > a:
                total -= self.position(b) - self.position(a)
        return timedelta(microseconds=total)

    def add(self, start: datetime, duration: timedelta,
            pauses: Sequence[Pause] = ()) -> datetime | None:
        """The instant at which `duration` of business time has run since `start`, the
        clock stopped during `pauses` (sorted, not overlapping). None when the clock is
        stopped for good (a pause without end comes first) or no opening time is near."""
        return self.add_all(start, (duration,), pauses)[0]

    def add_all(self, start: datetime, durations: Sequence[timedelta],
                pauses: Sequence[Pause] = ()) -> list[datetime | None]:
        """`add` for several durations (shortest first) in one walk."""
        want = [_us(d) for d in durations]
        out: list[datetime | None] = []
        used = 0  # business time run before `cursor`
        cursor, at = start, self.position(start)
        for ps, pe in pauses:
            if pe is not None and pe <= cursor:
                continue
            ps = max(ps, cursor)
            available = self.position(ps) - at
            while len(out) < len(want) and want[len(out)] - used <= available:
                out.append(self._run(cursor, at, want[len(out)] - used))
            if len(out) == len(want):
                return out
            used += available
            if pe is None:
                return out + [None] * (len(want) - len(out))
            cursor, at = pe, self.position(pe)
        while len(out) < len(want):
            out.append(self._run(cursor, at, want[len(out)] - used))
        return out

    def _run(self, cursor: datetime, at: int, remaining: int) -> datetime | None:
        return cursor if remaining <= 0 else self._reach(cursor, at + remaining)

    def _reach(self, after: datetime, target: int) -> datetime | None:
        """The first instant after `after` whose position is `target` (> its own)."""
        day = self.day_of(after)
        for _ in range(MAX_DAYS):
            nxt = day + _ONE_DAY
            if self._day_start(nxt) < target:  # the whole day runs out before the target
                day = nxt
                continue
            pos = self._day_start(day)
            for a, _, length in self._spans(day):
                if pos + length >= target:
                    return a + timedelta(microseconds=target - pos)
                pos += length
            day = nxt
        return None

    def is_open(self, t: datetime, *, inclusive_end: bool = False) -> bool:
        """Is `t` inside an opening window (with `inclusive_end`, its closing instant too)?"""
        day = self.day_of(t)
        for d in (day - _ONE_DAY, day):
            for a, b, _ in self._spans(d):
                if a <= t < b or (inclusive_end and t == b):
                    return True
        return False

    def next_open(self, t: datetime) -> datetime | None:
        """`t` when open, else the start of the next opening window (None: none near)."""
        day = self.day_of(t)
        for _ in range(MAX_DAYS):
            for a, b, _ in self._spans(day):
                if t < b:
                    return max(a, t)
            day += _ONE_DAY
        return None
