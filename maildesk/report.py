"""`maildesk report`: volumes, first-response and resolution times, SLA attainment.

Pure: what the store counted and measured in, numbers out (the CLI reads and prints).
Times are in seconds, as wall-clock time and as business time (the calendar of the
ticket's policy, else the desk's default hours: maildesk.deadlines records them when they
happen); waiting on the customer is not taken out of either. Attainment is per target
(first response, next response, resolution): `met` (in time), `breached` (late, or still
open past its due time), `open` (not yet due, or its clock stopped while waiting), and
`attainment` = met / (met + breached). Each next-response clock of a ticket counts; the
others count once a ticket, and only where the ticket's policy sets that target. Grouped
in total, by queue, by assignee and by policy.

A desk holds a million tickets after some years, so nothing here looks at one ticket
twice: tickets alike in all the report counts come in as one `Tally` with their number;
the durations of each (queue, assignee, priority) come sorted, the desk's are merged from
them once (Timsort merges sorted runs), and a group's median and p90 are found in those
by bisection (`_select`) rather than by merging the group's parts again.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from maildesk.sla import Policy

TARGETS = ("first_response", "next_response", "resolution")
TIMES = ("first_response_seconds", "first_response_business_seconds", "resolution_seconds",
         "resolution_business_seconds")

Leaf = tuple[str, str | None, str]  # queue, assignee, priority: what the groups are made of


@dataclass(frozen=True)
class Tally:
    """Tickets alike in all the report counts (store.tickets.report_tallies' columns)."""

    queue: str
    assignee: str | None
    priority: str
    status: str
    first_response: str | None  # sla.state: met | breached | open | None (no due time)
    resolution: str | None
    next_response: str | None  # the running next-response clock's state; None: none runs
    next_response_met: int  # earlier next-response clocks
    next_response_breached: int


@dataclass
class Times:
    """The durations of one leaf, in seconds (TIMES order), each sorted."""

    lists: tuple[list[float], ...] = field(default_factory=lambda: ([], [], [], []))

    def add(self, values: Sequence[float | None]) -> None:
        for into, v in zip(self.lists, values, strict=True):
            if v is not None:
                into.append(v)

    def sort(self) -> None:
        for values in self.lists:
            values.sort()


PolicyOf = Callable[[str, str], Policy | None]  # (queue, priority) -> its policy


def report(tallies: Mapping[Tally, int], times: Mapping[Leaf, Times],
           policy_of: PolicyOf) -> dict[str, Any]:
    """The whole report; `times` sorted (Times.sort)."""
    policies: dict[tuple[str, str], Policy | None] = {}

    def policy(queue: str, priority: str) -> Policy | None:
        key = (queue, priority)
        if key not in policies:
            policies[key] = policy_of(queue, priority)
        return policies[key]

    def groups(queue: str, assignee: str | None, priority: str) -> list[tuple[str, str]]:
        found = [("total", ""), ("by_queue", queue)]
        if assignee:
            found.append(("by_agent", assignee))
        p = policy(queue, priority)
        if p is not None:
            found.append(("by_policy", p.name))
        return found

    counted: dict[tuple[str, str], dict[Tally, int]] = {}
    for tally, n in tallies.items():
        for g in groups(tally.queue, tally.assignee, tally.priority):
            counted.setdefault(g, {})[tally] = n
    timed: dict[tuple[str, str], list[Times]] = {}
    for leaf, t in times.items():
        for g in groups(*leaf):
            timed.setdefault(g, []).append(t)
    # each time of the whole desk sorted once (its leaves' sorted runs merged): the
    # groups' quantiles are found in it (_select), not by merging their leaves again
    every = [_merged([t.lists[i] for t in times.values()]) for i in range(len(TIMES))]

    def summary(g: tuple[str, str]) -> dict[str, Any]:
        parts = timed.get(g, [])
        tallied = counted.get(g, {})
        out = _volumes(tallied)
        for i, name in enumerate(TIMES):
            out[name] = _stats([t.lists[i] for t in parts if t.lists[i]], every[i])
        out["sla"] = attainment(tallied, policy)
        return out

    out: dict[str, Any] = {"total": summary(("total", ""))}
    for kind in ("by_queue", "by_agent", "by_policy"):
        names = sorted({name for k, name in counted if k == kind})
        out[kind] = {name: summary((kind, name)) for name in names}
    return out


def _volumes(tallies: Mapping[Tally, int]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for t, n in tallies.items():
        by_status[t.status] = by_status.get(t.status, 0) + n
    return {"tickets": sum(tallies.values()), "by_status": dict(sorted(by_status.items()))}


def attainment(tallies: Mapping[Tally, int], policy: Callable[[str, str], Policy | None]
               ) -> dict[str, dict[str, Any]]:
    out = {t: {"met": 0, "breached": 0, "open": 0} for t in TARGETS}
    for t, n in tallies.items():
        p = policy(t.queue, t.priority)
        if p is None:
            continue
        if p.first_response:
            out["first_response"][t.first_response or "open"] += n
        if p.resolution:
            out["resolution"][t.resolution or "open"] += n
        if p.next_response:
            nr = out["next_response"]
            nr["met"] += t.next_response_met * n
            nr["breached"] += t.next_response_breached * n
            if t.next_response is not None:
                nr[t.next_response] += n
    result: dict[str, dict[str, Any]] = {}
    for target, c in out.items():
        judged = c["met"] + c["breached"]
        result[target] = {**c, "attainment": round(c["met"] / judged, 3) if judged else None}
    return result


def _merged(parts: Sequence[list[float]]) -> list[float]:
    if len(parts) == 1:
        return parts[0]
    return sorted(chain.from_iterable(parts))  # sorted runs: merged, not sorted again


def _select(parts: Sequence[list[float]], every: list[float], k: int) -> float:
    """The k-th smallest (from 0) of the sorted `parts` together, found in `every` (all
    values, sorted; the parts' values among them): the first value of `every` with more
    than k of the parts' values at or below it, by bisection (O(parts × log² n))."""
    lo, hi = 0, len(every) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(bisect_right(p, every[mid]) for p in parts) > k:
            hi = mid
        else:
            lo = mid + 1
    return every[lo]


def _stats(parts: Sequence[list[float]], every: list[float]) -> dict[str, float | int | None]:
    """Count, median and p90 of the sorted `parts` together (the p90 as
    statistics.quantiles(n=10, method="inclusive") gives it)."""
    n = sum(len(p) for p in parts)
    if not n:
        return {"count": 0, "median": None, "p90": None}

    def at(k: int) -> float:
        return parts[0][k] if len(parts) == 1 else _select(parts, every, k)

    mid = n // 2
    median = at(mid) if n % 2 else (at(mid - 1) + at(mid)) / 2
    if n == 1:
        p90 = at(0)
    else:
        j, delta = divmod(9 * (n - 1), 10)
        p90 = (at(j) * (10 - delta) + at(j + 1) * delta) / 10
    return {"count": n, "median": round(median, 1), "p90": round(p90, 1)}


def count(rows: Iterable[tuple[Any, ...]]) -> dict[Tally, int]:
    """Rows of store.tickets.report_tallies, counted (in C: they are few kinds)."""
    from collections import Counter

    return {Tally(*row): n for row, n in Counter(rows).items()}


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
