"""`maildesk report`: volumes, first-response and resolution times, SLA attainment.

Pure: it takes ticket facts and returns numbers; the CLI reads and prints them.
Times are wall-clock durations in seconds (business-time SLA targets are the
SLA scheduler's job; attainment here compares the stored due times).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median, quantiles
from typing import Any


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


def _stats(seconds: Sequence[float]) -> dict[str, float | int | None]:
    if not seconds:
        return {"count": 0, "median": None, "p90": None}
    p90 = quantiles(seconds, n=10, method="inclusive")[-1] if len(seconds) > 1 else seconds[0]
    return {"count": len(seconds), "median": round(median(seconds), 1), "p90": round(p90, 1)}


def _attainment(pairs: Iterable[tuple[datetime | None, datetime | None]]) -> float | None:
    """Share of due times met: done before due (pending ones not yet late count as met)."""
    judged = [(done, due) for done, due in pairs if due is not None]
    if not judged:
        return None
    met = sum(1 for done, due in judged if done is not None and done <= due)
    return round(met / len(judged), 3)


def summarise(tickets: Sequence[TicketFacts]) -> dict[str, Any]:
    first = [(t.first_response_at - t.created_at).total_seconds()
             for t in tickets if t.first_response_at]
    solved = [(t.solved_at - t.created_at).total_seconds() for t in tickets if t.solved_at]
    by_status: dict[str, int] = {}
    for t in tickets:
        by_status[t.status] = by_status.get(t.status, 0) + 1
    return {
        "tickets": len(tickets),
        "by_status": dict(sorted(by_status.items())),
        "first_response_seconds": _stats(first),
        "resolution_seconds": _stats(solved),
        "sla_first_response_met": _attainment(
            (t.first_response_at, t.first_response_due) for t in tickets),
        "sla_resolution_met": _attainment((t.solved_at, t.resolution_due) for t in tickets),
    }


def report(tickets: Sequence[TicketFacts]) -> dict[str, Any]:
    queues = sorted({t.queue for t in tickets})
    agents = sorted({t.assignee for t in tickets if t.assignee})
    return {
        "total": summarise(tickets),
        "by_queue": {q: summarise([t for t in tickets if t.queue == q]) for q in queues},
        "by_agent": {a: summarise([t for t in tickets if t.assignee == a]) for a in agents},
    }
