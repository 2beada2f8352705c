"""`maildesk report`: volumes, first-response and resolution times, SLA attainment.

Pure: ticket facts in, numbers out (the CLI reads the rows and prints). Times are in
seconds, as wall-clock time and as business time (the calendar of the ticket's policy,
else the desk's default hours: the first policy's, or Mon-Fri 09:00-18:00 in
desk.timezone); waiting on the customer is not taken out of either. Attainment is per
target (first response, next response, resolution): `met` (in time), `breached` (late, or
still open past its due time), `open` (not yet due, or its clock stopped while waiting),
and `attainment` = met / (met + breached). Each next-response clock of a ticket counts;
the others count once a ticket. Grouped in total, by queue, by assignee and by policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median, quantiles
from typing import Any, Protocol

from maildesk.business_time import Calendar
from maildesk.sla import DONE, Policy, calendar, policy_for, state

TARGETS = ("first_response", "next_response", "resolution")


@dataclass(frozen=True)
class TicketFacts:
    queue: str
    assignee: str | None
    status: str
    created_at: datetime
    first_response_at: datetime | None
    solved_at: datetime | None
    first_response_due: datetime | None
    resolution_due: datetime | None
    policy: str | None = None
    targets: frozenset[str] = frozenset()  # the targets its policy sets
    next_response_due: datetime | None = None
    next_response_running: bool = False  # a customer waits for the next agent reply
    next_response_met: int = 0  # earlier next-response clocks
    next_response_breached: int = 0
    first_response_business: float | None = None  # seconds
    resolution_business: float | None = None


class Row(Protocol):
    """What the report reads of a ticket row (store.tables.TicketRow)."""

    queue: str
    priority: str
    assignee: str | None
    status: str
    created_at: datetime
    first_response_at: datetime | None
    solved_at: datetime | None
    closed_at: datetime | None
    updated_at: datetime
    first_response_due: datetime | None
    next_response_due: datetime | None
    resolution_due: datetime | None
    next_response_from: datetime | None
    next_response_at: datetime | None
    next_response_met: int
    next_response_breached: int


def facts_of(row: Row, policies: Sequence[Policy], default: Calendar) -> TicketFacts:
    policy = policy_for(policies, row.queue, row.priority)
    cal = calendar(policy) if policy else default
    solved = (row.solved_at or row.closed_at or row.updated_at) if row.status in DONE else None
    targets = frozenset(t for t in TARGETS if policy is not None and getattr(policy, t))
    return TicketFacts(
        queue=row.queue, assignee=row.assignee, status=row.status, created_at=row.created_at,
        first_response_at=row.first_response_at, solved_at=solved,
        first_response_due=row.first_response_due, resolution_due=row.resolution_due,
        policy=policy.name if policy else None, targets=targets,
        next_response_due=row.next_response_due,
        next_response_running=row.next_response_from is not None and row.next_response_at is None,
        next_response_met=row.next_response_met, next_response_breached=row.next_response_breached,
        first_response_business=_biz(cal, row.created_at, row.first_response_at),
        resolution_business=_biz(cal, row.created_at, solved),
    )


def _biz(cal: Calendar, start: datetime, end: datetime | None) -> float | None:
    return cal.elapsed(start, end).total_seconds() if end is not None else None


def _stats(seconds: Sequence[float]) -> dict[str, float | int | None]:
    if not seconds:
        return {"count": 0, "median": None, "p90": None}
    p90 = quantiles(seconds, n=10, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
    return {"count": len(seconds), "median": round(median(seconds), 1), "p90": round(p90, 1)}


def _count(into: dict[str, int], outcome: str | None) -> None:
    into[outcome or "open"] += 1


_NA = "n/a"  # a target the ticket's policy does not set


def _outcomes(t: TicketFacts, now: datetime) -> tuple[str | None, str | None, str | None]:
    """The ticket's first response, resolution and running next response: met, breached,
    open (None: no due time yet) or _NA."""
    return (
        state(t.first_response_due, t.first_response_at, now)
        if "first_response" in t.targets else _NA,
        state(t.resolution_due, t.solved_at, now) if "resolution" in t.targets else _NA,
        state(t.next_response_due, None, now)
        if "next_response" in t.targets and t.next_response_running else _NA,
    )


def attainment(tickets: Iterable[TicketFacts], now: datetime,
               memo: dict[int, tuple[str | None, str | None, str | None]] | None = None
               ) -> dict[str, dict[str, Any]]:
    """`memo` keeps each ticket's outcomes for the next group it is counted in."""
    out = {t: {"met": 0, "breached": 0, "open": 0} for t in TARGETS}
    for t in tickets:
        found = memo.get(id(t)) if memo is not None else None
        if found is None:
            found = _outcomes(t, now)
            if memo is not None:
                memo[id(t)] = found
        first, resolution, running = found
        if first is not _NA:
            _count(out["first_response"], first)
        if resolution is not _NA:
            _count(out["resolution"], resolution)
        if "next_response" in t.targets:
            nr = out["next_response"]
            nr["met"] += t.next_response_met
            nr["breached"] += t.next_response_breached
            if running is not _NA:
                _count(nr, running)
    result: dict[str, dict[str, Any]] = {}
    for target, c in out.items():
        judged = c["met"] + c["breached"]
        result[target] = {**c, "attainment": round(c["met"] / judged, 3) if judged else None}
    return result


def summarise(tickets: Sequence[TicketFacts], now: datetime,
              memo: dict[int, tuple[str | None, str | None, str | None]] | None = None
              ) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for t in tickets:
        by_status[t.status] = by_status.get(t.status, 0) + 1
    answered = [t for t in tickets if t.first_response_at]
    solved = [t for t in tickets if t.solved_at]
    return {
        "tickets": len(tickets),
        "by_status": dict(sorted(by_status.items())),
        "first_response_seconds": _stats(
            [(t.first_response_at - t.created_at).total_seconds()
             for t in answered if t.first_response_at]),
        "first_response_business_seconds": _stats(
            [t.first_response_business for t in answered if t.first_response_business is not None]),
        "resolution_seconds": _stats(
            [(t.solved_at - t.created_at).total_seconds() for t in solved if t.solved_at]),
        "resolution_business_seconds": _stats(
            [t.resolution_business for t in solved if t.resolution_business is not None]),
        "sla": attainment(tickets, now, memo),
    }


def report(tickets: Sequence[TicketFacts], now: datetime) -> dict[str, Any]:
    # grouped in one pass: a filter over all tickets per queue, agent and policy cost
    # more than the figures themselves on a large desk
    by_queue: dict[str, list[TicketFacts]] = {}
    by_agent: dict[str, list[TicketFacts]] = {}
    by_policy: dict[str, list[TicketFacts]] = {}
    for t in tickets:
        by_queue.setdefault(t.queue, []).append(t)
        if t.assignee:
            by_agent.setdefault(t.assignee, []).append(t)
        if t.policy:
            by_policy.setdefault(t.policy, []).append(t)
    memo: dict[int, tuple[str | None, str | None, str | None]] = {}  # outcomes, once each
    return {
        "total": summarise(tickets, now, memo),
        "by_queue": {q: summarise(by_queue[q], now, memo) for q in sorted(by_queue)},
        "by_agent": {a: summarise(by_agent[a], now, memo) for a in sorted(by_agent)},
        "by_policy": {p: summarise(by_policy[p], now, memo) for p in sorted(by_policy)},
    }


def text(result: dict[str, Any]) -> list[str]:
    """The table `maildesk report` prints (hours; business time in brackets)."""
    lines = [f"{'':<24} {'tickets':>7} {'1st resp med':>16} {'p90':>14} "
             f"{'resolve med':>16} {'p90':>14}"]
    rows = [("total", result["total"])] + [(f"queue {q}", v) for q, v in result["by_queue"].items()]
    rows += [(f"agent {a}", v) for a, v in result["by_agent"].items()]
    rows += [(f"policy {p}", v) for p, v in result["by_policy"].items()]
    for name, v in rows:
        cells = []
        for what in ("first_response", "resolution"):
            wall, biz = v[f"{what}_seconds"], v[f"{what}_business_seconds"]
            cells += [f"{_h(wall['median'])} ({_h(biz['median'])})",
                      f"{_h(wall['p90'])} ({_h(biz['p90'])})"]
        lines.append(f"{name[:24]:<24} {v['tickets']:>7} {cells[0]:>16} {cells[1]:>14} "
                     f"{cells[2]:>16} {cells[3]:>14}")
    lines.append("")
    lines.append(f"{'SLA attainment':<24} {'target':<15} {'met':>6} {'breached':>9} "
                 f"{'open':>6} {'met %':>6}")
    for name, v in [("total", result["total"]), *((f"policy {p}", x)
                                                  for p, x in result["by_policy"].items())]:
        for target, a in v["sla"].items():
            if a["met"] + a["breached"] + a["open"]:
                share = "-" if a["attainment"] is None else f"{a['attainment'] * 100:.0f}%"
                lines.append(f"{name[:24]:<24} {target.replace('_', ' '):<15} {a['met']:>6} "
                             f"{a['breached']:>9} {a['open']:>6} {share:>6}")
    return lines


def _h(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f}h"
