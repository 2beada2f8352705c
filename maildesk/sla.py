"""Service levels (SPEC §2.7), pure: which `[[sla]]` policy a ticket falls under, its three
due times, and the reminders and breaches they call for.

- `policy_for`: the first policy whose `match` holds (queue and/or priority; empty: any).
- `due(facts, policy)`: `first_response` counts from the ticket's creation and is met by
  its `first_response_at`; `next_response` counts from the first customer message after
  an agent reply (`next_response_from`) and is met by the next agent reply
  (`next_response_at`); `resolution` counts from creation and is met when the ticket is
  solved. Each is business time of the policy's calendar (maildesk.business_time). The
  clock stops while the ticket waits (`pending`, and `solved` until it reopens): the
  closed pauses are passed in, the open one is `paused_since`. While a target is unmet
  and the clock stopped, its due time is None: it is computed again, later, when the
  clock runs again (a new due time, so a new reminder and a new breach).
- `events(dues)`: a reminder when `remind_before` of business time is left (none when the
  target is no longer than that) and a breach at the due time, for each unmet target.

Only the standard library, maildesk.domain and maildesk.business_time are imported; the
policies are `config.SlaPolicy` objects, read through the attributes named in `Policy`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Protocol, TypeVar

from maildesk.business_time import Calendar, Pause, Week
from maildesk.domain import Priority, Status

WAITING = (Status.PENDING.value, Status.SOLVED.value)  # the SLA clock stops
DONE = (Status.SOLVED.value, Status.CLOSED.value)  # nothing more is sent


class Target(StrEnum):
    FIRST_RESPONSE = "first_response"
    NEXT_RESPONSE = "next_response"
    RESOLUTION = "resolution"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


class Kind(StrEnum):
    REMINDER = "reminder"
    BREACH = "breach"


class Match(Protocol):
    @property
    def queue(self) -> Sequence[str]: ...
    @property
    def priority(self) -> Sequence[Priority]: ...


class Policy(Protocol):
    """What this module reads of a `config.SlaPolicy`."""

    @property
    def name(self) -> str: ...
    @property
    def match(self) -> Match: ...
    @property
    def first_response(self) -> timedelta | None: ...
    @property
    def next_response(self) -> timedelta | None: ...
    @property
    def resolution(self) -> timedelta | None: ...
    @property
    def remind_before(self) -> timedelta: ...
    @property
    def hours(self) -> Week: ...
    @property
    def tzinfo(self) -> tzinfo: ...
    def is_holiday(self, day: date) -> bool: ...


_calendars: dict[int, tuple[object, Calendar]] = {}


def calendar(policy: Policy) -> Calendar:
    """The policy's calendar, built once per policy object (its day cache is kept)."""
    found = _calendars.get(id(policy))
    if found is None or found[0] is not policy:
        if len(_calendars) > 256:  # many reloads: forget the old settings' calendars
            _calendars.clear()
        found = _calendars[id(policy)] = (policy, Calendar(policy.hours, policy.tzinfo,
                                                           policy.is_holiday))
    return found[1]


def default_calendar(week: Week, zone: tzinfo, is_holiday: Callable[[date], bool] | None = None
                     ) -> Calendar:
    return Calendar(week, zone, is_holiday or (lambda _day: False))


P = TypeVar("P", bound=Policy)


def policy_for(policies: Sequence[P], queue: str, priority: str) -> P | None:
    for p in policies:
        if ((not p.match.queue or queue in p.match.queue)
                and (not p.match.priority or priority in p.match.priority)):
            return p
    return None


@dataclass(frozen=True)
class Facts:
    """What the due times depend on, as the ticket stores it."""

    status: str
    created_at: datetime
    first_response_at: datetime | None
    next_response_from: datetime | None
    next_response_at: datetime | None
    solved_at: datetime | None
    paused_since: datetime | None
    pauses: tuple[tuple[datetime, datetime], ...] = ()  # closed pauses, oldest first


@dataclass(frozen=True)
class TargetDue:
    target: Target
    goal: timedelta
    start: datetime | None  # when this clock started; None: not running (no cycle)
    due: datetime | None  # None: not running, or stopped while unmet
    met_at: datetime | None
    paused: bool  # unmet, and the clock is stopped now
    pauses: tuple[Pause, ...]  # the pauses that counted
    remind_at: datetime | None


@dataclass(frozen=True)
class Event:
    at: datetime
    target: Target
    kind: Kind
    due: datetime


_memo: dict[tuple[int, Facts], tuple[object, dict[Target, TargetDue]]] = {}


def due(facts: Facts, policy: Policy) -> dict[Target, TargetDue]:
    """The due time of each target the policy sets (remembered for the last few thousand
    facts: a reply that changes no clock leaves them as they were)."""
    key = (id(policy), facts)
    found = _memo.get(key)
    if found is not None and found[0] is policy:
        return found[1]
    if len(_memo) > 4096:
        _memo.clear()
    out = _due(facts, policy)
    _memo[key] = (policy, out)
    return out


def _due(facts: Facts, policy: Policy) -> dict[Target, TargetDue]:
    cal = calendar(policy)
    solved = facts.solved_at if facts.status in DONE else None
    clocks = (
        (Target.FIRST_RESPONSE, policy.first_response, facts.created_at, facts.first_response_at),
        (Target.NEXT_RESPONSE, policy.next_response, facts.next_response_from,
         facts.next_response_at),
        (Target.RESOLUTION, policy.resolution, facts.created_at, solved),
    )
    out: dict[Target, TargetDue] = {}
    for target, goal, start, met in clocks:
        if goal is None:
            continue
        if start is None:
            out[target] = TargetDue(target, goal, None, None, None, False, (), None)
            continue
        pauses = _pauses(facts, start, met)
        stopped = met is None and any(end is None for _, end in pauses)
        when = remind = None
        if stopped:
            pass
        elif met is None and timedelta(0) < policy.remind_before < goal:
            remind, when = cal.add_all(start, (goal - policy.remind_before, goal), pauses)
        else:
            when = cal.add(start, goal, pauses)
        out[target] = TargetDue(target, goal, start, when, met, stopped, pauses, remind)
    return out


def _pauses(facts: Facts, start: datetime, met: datetime | None) -> tuple[Pause, ...]:
    """The pauses that stop this clock: after its start, and before it was met (cut
    there: once met, later waiting changes nothing)."""
    every: list[Pause] = list(facts.pauses)
    if facts.paused_since is not None:
        every.append((facts.paused_since, None))
    out: list[Pause] = []
    for ps, pe in every:
        if pe is not None and pe <= start:
            continue
        if met is not None:
            if ps >= met:
                continue
            pe = met if pe is None else min(pe, met)
        out.append((max(ps, start), pe))
    return tuple(out)


def events(dues: dict[Target, TargetDue], status: str) -> list[Event]:
    """Reminders and breaches still to come for unmet targets, earliest first."""
    if status in DONE:
        return []
    out = []
    for d in dues.values():
        if d.due is None or d.met_at is not None:
            continue
        if d.remind_at is not None:
            out.append(Event(d.remind_at, d.target, Kind.REMINDER, d.due))
        out.append(Event(d.due, d.target, Kind.BREACH, d.due))
    return sorted(out, key=lambda e: (e.at, e.kind != Kind.REMINDER))


def state(due_at: datetime | None, met_at: datetime | None, now: datetime) -> str | None:
    """met | breached | open; None without a due time and unmet (no target, or paused)."""
    if met_at is not None:
        if due_at is None:
            return "met"
        return "met" if met_at <= due_at else "breached"
    if due_at is None:
        return None
    return "breached" if now > due_at else "open"
