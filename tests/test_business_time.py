"""Business-time arithmetic (maildesk.business_time) on the calendars of real [[sla]]
policies: nights, weekends, holiday lists, a country calendar, DST in Europe/Madrid, pauses."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from maildesk.business_time import Calendar
from maildesk.config import SlaPolicy
from maildesk.sla import calendar

MADRID = ZoneInfo("Europe/Madrid")


def cal(hours: str = "Mon-Fri 09:00-18:00", holidays: Any = (), tz: str = "Europe/Madrid"
        ) -> Calendar:
    policy = SlaPolicy.model_validate({"name": "p", "business_hours": hours, "timezone": tz,
                                       "holidays": list(holidays) if not isinstance(holidays, str)
                                       else holidays})
    return calendar(policy)


def local(text: str) -> datetime:
    """'2026-11-30 10:00' in Madrid; a trailing '+01' / '+02' picks the offset (DST folds)."""
    if text[-3] in "+-":
        return datetime.fromisoformat(text + ":00").astimezone(UTC)
    return datetime.fromisoformat(text).replace(tzinfo=MADRID).astimezone(UTC)


def hm(text: str) -> timedelta:
    h, _, m = text.partition(":")
    return timedelta(hours=int(h), minutes=int(m or 0))


# 2026-11-30 is a Monday; 2026-12-04 a Friday; 2026-12-08 (Tuesday) is a national holiday in
# Spain (Inmaculada Concepción), and so is 2026-01-06 (Tuesday, Epiphany).
ADD_CASES = [
    # (what, calendar kwargs, start, business duration, expected due)
    ("inside one window", {}, "2026-11-30 10:00", "2:00", "2026-11-30 12:00"),
    ("ends exactly at closing", {}, "2026-11-30 17:00", "1:00", "2026-11-30 18:00"),
    ("across a night", {}, "2026-11-30 17:00", "2:00", "2026-12-01 10:00"),
    ("across a weekend", {}, "2026-12-04 17:00", "2:00", "2026-12-07 10:00"),
    ("starts on a Saturday", {}, "2026-12-05 12:00", "1:00", "2026-12-07 10:00"),
    ("starts before opening", {}, "2026-11-30 07:00", "0:30", "2026-11-30 09:30"),
    ("several days", {}, "2026-11-30 09:00", "27:00", "2026-12-02 18:00"),
    ("a lunch break", {"hours": "Mon-Fri 09:00-13:00,14:00-18:00"}, "2026-11-30 12:30", "1:00",
     "2026-11-30 14:30"),
    ("a holiday list: night and a holiday", {"holidays": ["2026-12-02"]}, "2026-12-01 17:00",
     "3:00", "2026-12-03 11:00"),
    ("a holiday list: weekend and a holiday Monday", {"holidays": ["2026-12-07"]},
     "2026-12-04 17:00", "2:00", "2026-12-08 10:00"),
    ("a country calendar (ES): a night and Inmaculada", {"holidays": "ES"}, "2026-12-07 16:00",
     "4:00", "2026-12-09 11:00"),
    ("a country calendar (ES): Epiphany", {"holidays": "ES"}, "2026-01-05 17:00", "2:00",
     "2026-01-07 10:00"),
    ("no country holiday without the calendar", {}, "2026-12-07 16:00", "4:00",
     "2026-12-08 11:00"),
    ("a region (ES-MD): Maundy Thursday, then Good Friday and a weekend",
     {"holidays": "ES-MD"}, "2026-04-01 17:00", "2:00", "2026-04-06 10:00"),
    ("the country (ES) alone: Maundy Thursday is a working day", {"holidays": "ES"},
     "2026-04-01 17:00", "2:00", "2026-04-02 10:00"),
    # DST: Europe/Madrid goes from +01 to +02 at 02:00 on 2026-03-29, back at 03:00 on
    # 2026-10-25. Office hours around the change keep their length...
    ("March change, office hours", {}, "2026-03-27 17:00", "2:00", "2026-03-30 10:00"),
    ("October change, office hours", {}, "2026-10-23 17:00", "2:00", "2026-10-26 10:00"),
    # ... and round the clock, four business hours are four hours of real time: the wall
    # clock shows five in March (the hour 02:00-03:00 does not exist) and three in October
    # (02:00-03:00 comes twice).
    ("March change, round the clock", {"hours": "Mon-Sun 00:00-24:00"}, "2026-03-29 00:30",
     "4:00", "2026-03-29 05:30"),
    ("October change, round the clock", {"hours": "24/7"}, "2026-10-25 00:30", "4:00",
     "2026-10-25 03:30"),
    ("October change, into the repeated hour", {"hours": "24/7"}, "2026-10-25 01:30", "1:30",
     "2026-10-25 02:00+01"),
]


@pytest.mark.parametrize(("what", "kwargs", "start", "duration", "expected"), ADD_CASES,
                         ids=[c[0] for c in ADD_CASES])
def test_add_business_time(what: str, kwargs: dict[str, Any], start: str, duration: str,
                           expected: str) -> None:
    c = cal(**kwargs)
    due = c.add(local(start), hm(duration))
    assert due == local(expected), (what, due and due.astimezone(MADRID))
    assert c.elapsed(local(start), local(expected)) == hm(duration)


ELAPSED_CASES = [
    ("a working day", {}, "2026-11-30 00:00", "2026-12-01 00:00", "9:00"),
    ("a weekend", {}, "2026-12-05 00:00", "2026-12-07 00:00", "0:00"),
    ("a week with a holiday", {"holidays": "ES"}, "2026-12-07 00:00", "2026-12-14 00:00",
     "36:00"),
    ("the short day of March", {"hours": "24/7"}, "2026-03-29 00:00", "2026-03-30 00:00",
     "23:00"),
    ("the long day of October", {"hours": "24/7"}, "2026-10-25 00:00", "2026-10-26 00:00",
     "25:00"),
    ("a window on the other side of the March change", {"hours": "Sun 01:00-04:00"},
     "2026-03-29 00:00", "2026-03-30 00:00", "2:00"),
    ("a window on the other side of the October change", {"hours": "Sun 01:00-04:00"},
     "2026-10-25 00:00", "2026-10-26 00:00", "4:00"),
]


@pytest.mark.parametrize(("what", "kwargs", "start", "end", "expected"), ELAPSED_CASES,
                         ids=[c[0] for c in ELAPSED_CASES])
def test_elapsed_business_time(what: str, kwargs: dict[str, Any], start: str, end: str,
                               expected: str) -> None:
    assert cal(**kwargs).elapsed(local(start), local(end)) == hm(expected), what


PAUSE_CASES = [
    # (what, start, duration, pauses, expected due)
    ("pending in the middle, back next morning", "2026-11-30 10:00", "4:00",
     [("2026-11-30 11:00", "2026-12-01 10:00")], "2026-12-01 13:00"),
    ("pending in the middle, back the same evening", "2026-11-30 10:00", "4:00",
     [("2026-11-30 11:00", "2026-11-30 20:00")], "2026-12-01 12:00"),
    ("two pauses", "2026-11-30 09:00", "3:00",
     [("2026-11-30 10:00", "2026-11-30 11:00"), ("2026-11-30 12:00", "2026-11-30 15:00")],
     "2026-11-30 16:00"),
    ("a pause outside business hours changes nothing", "2026-11-30 17:00", "2:00",
     [("2026-11-30 19:00", "2026-12-01 08:00")], "2026-12-01 10:00"),
    ("a pause after the due time changes nothing", "2026-11-30 10:00", "1:00",
     [("2026-11-30 12:00", "2026-11-30 15:00")], "2026-11-30 11:00"),
    ("a pause that began before the clock", "2026-11-30 10:00", "1:00",
     [("2026-11-30 08:00", "2026-11-30 12:00")], "2026-11-30 13:00"),
]


@pytest.mark.parametrize(("what", "start", "duration", "pauses", "expected"), PAUSE_CASES,
                         ids=[c[0] for c in PAUSE_CASES])
def test_add_with_pauses(what: str, start: str, duration: str, pauses: list[tuple[str, str]],
                         expected: str) -> None:
    c = cal()
    spans = [(local(a), local(b)) for a, b in pauses]
    assert c.add(local(start), hm(duration), spans) == local(expected), what
    assert c.elapsed(local(start), local(expected), spans) == hm(duration)


def test_a_pause_still_running_stops_the_clock() -> None:
    c = cal()
    assert c.add(local("2026-11-30 10:00"), hm("4:00"), [(local("2026-11-30 11:00"), None)]) is None
    # ... unless the time runs out before it began
    assert c.add(local("2026-11-30 10:00"), hm("0:30"),
                 [(local("2026-11-30 11:00"), None)]) == local("2026-11-30 10:30")


def test_open_and_next_open() -> None:
    c = cal(holidays=["2026-12-07"])
    assert c.is_open(local("2026-11-30 09:00")) and not c.is_open(local("2026-11-30 18:00"))
    assert c.is_open(local("2026-11-30 18:00"), inclusive_end=True)
    assert c.next_open(local("2026-11-30 10:00")) == local("2026-11-30 10:00")
    assert c.next_open(local("2026-11-30 20:00")) == local("2026-12-01 09:00")
    assert c.next_open(local("2026-12-04 18:30")) == local("2026-12-08 09:00")  # holiday Monday


def test_results_are_exact_whatever_was_computed_before() -> None:
    """Due times are part of a unique key: two processes must compute the same instant to
    the microsecond, whichever days each computed first."""
    rng = random.Random(11)
    base = local("2026-01-01 00:00")
    starts = [base + timedelta(microseconds=rng.randrange(365 * 86400 * 10**6))
              for _ in range(300)]
    goals = [timedelta(microseconds=rng.randrange(1, 60 * 3600 * 10**6)) for _ in starts]
    forward, backward = cal(holidays="ES"), cal(holidays="ES")
    backward.position(base + timedelta(days=400))  # fill its days from the other end
    a = [forward.add(s, g) for s, g in zip(starts, goals, strict=True)]
    b = [backward.add(s, g) for s, g in zip(starts, goals, strict=True)]
    assert a == b
    for s, g, due in zip(starts, goals, a, strict=True):
        assert due is not None and forward.elapsed(s, due) == g
        assert forward.is_open(due, inclusive_end=True)
