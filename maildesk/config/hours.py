"""Business hours ("Mon-Fri 09:00-18:00") and holiday lists or calendars for SLA policies.

The `holidays` package is imported only when a policy names a country.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from maildesk.config.values import Loc, _fail

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class BusinessHours:
    """Opening windows per weekday (Monday = 0) as (start, end) minutes since midnight."""

    week: tuple[tuple[tuple[int, int], ...], ...]

    def windows(self, weekday: int) -> tuple[tuple[int, int], ...]:
        return self.week[weekday]

    def is_open(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.week[local.weekday()])


def _day(token: str, spec: str) -> int:
    t = token.strip().lower()
    if t in _DAY_NAMES:
        return _DAY_NAMES.index(t)
    if t in _FULL_DAYS:
        return _FULL_DAYS.index(t)
    raise ValueError(f"invalid business hours {spec!r}: unknown day {token.strip()!r}")


def _minutes(hh: str, mm: str, spec: str, *, end: bool) -> int:
    h, m = int(hh), int(mm)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise ValueError(f"invalid business hours {spec!r}: bad time {hh}:{mm}")
    return h * 60 + m


def parse_business_hours(spec: str) -> BusinessHours:
    """"Mon-Fri 09:00-18:00", "Mon,Wed 08:00-12:00,13:00-17:00; Sat 10:00-14:00" or "24/7"."""
    if spec.strip().lower() in ("24/7", "always"):
        return BusinessHours((((0, 1440),),) * 7)
    hint = f'invalid business hours {spec!r}: expected e.g. "Mon-Fri 09:00-18:00"'
    week: list[list[tuple[int, int]]] = [[] for _ in range(7)]
    for clause in spec.split(";"):
        m = re.fullmatch(r"\s*([A-Za-z][A-Za-z,\s-]*?)\s+(\d[\d:,\s-]*?)\s*", clause)
        if not m:
            raise ValueError(hint)
        days: list[int] = []
        for item in m[1].split(","):
            first, _, last = item.partition("-")
            a = _day(first, spec)
            b = _day(last, spec) if last else a
            days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
        for window in m[2].split(","):
            t = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", window)
            if not t:
                raise ValueError(hint)
            start = _minutes(t[1], t[2], spec, end=False)
            end = _minutes(t[3], t[4], spec, end=True)
            if start >= end:
                raise ValueError(f"invalid business hours {spec!r}: {window.strip()} ends early")
            for d in days:
                week[d].append((start, end))
    merged: list[tuple[tuple[int, int], ...]] = []
    for spans in week:
        out: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        merged.append(tuple(out))
    return BusinessHours(tuple(merged))


def _business_hours(v: str) -> str:
    parse_business_hours(v)
    return v


def _holidays(v: object) -> object:
    if isinstance(v, str):
        m = re.fullmatch(r"([A-Z]{2,3})(?:-([A-Z0-9]{1,5}))?", v.strip().upper())
        if not m:
            raise ValueError(f"expected a country code such as 'ES' or 'ES-MD', got {v!r}")
        import holidays  # lazy: only configs that name a country pay for it

        supported: dict[str, list[str]] = holidays.list_supported_countries()
        if m[1] not in supported:
            raise ValueError(f"unknown holiday country code {m[1]!r}")
        if m[2] and m[2] not in supported[m[1]]:
            raise ValueError(f"country {m[1]!r} has no subdivision {m[2]!r}")
        return m[0]
    if not isinstance(v, list):
        raise ValueError(f"expected a country code or a list of dates, got {v!r}")
    out: list[date] = []
    bad: list[tuple[Loc, str]] = []
    for i, item in enumerate(v):
        try:
            if isinstance(item, date) and not isinstance(item, datetime):
                out.append(item)
            elif isinstance(item, str):
                out.append(date.fromisoformat(item.strip()))
            else:
                raise ValueError
        except ValueError:
            bad.append(((i,), f"not a date (YYYY-MM-DD): {item!r}"))
    if bad:
        raise _fail(bad)
    return out
