"""`maildesk report [--since DATE]`: volumes, response and resolution times, SLA attainment."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import EX_OK, iso_time, print_json, reader, settings
from maildesk.cli.parser import Adder

if TYPE_CHECKING:
    from maildesk.config import Settings
    from maildesk.report import Leaf, Times
    from maildesk.store.raw import Tx


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from maildesk.report import count, report, text
    from maildesk.sla import policy_for
    from maildesk.store import tickets

    cfg = settings(args)
    now = datetime.now(UTC)
    with reader(cfg).read_raw() as r:
        tallies = count(tickets.report_tallies(r, args.since, now))
        times = _times(r, cfg, tickets.report_times(r, args.since))
    result = report(tallies, times, lambda queue, priority: policy_for(cfg.sla, queue,
                                                                        priority))
    if args.json:
        print_json(result)
        return EX_OK
    for line in text(result):
        print(line)
    return EX_OK


def _times(r: Tx, cfg: Settings, rows: Any) -> dict[Leaf, Times]:
    """store.tickets.report_times' rows by leaf, sorted; the business times a ticket of an
    older release never recorded are computed here, as maildesk.deadlines would have."""
    from maildesk.report import Times

    found: dict[Leaf, Times] = {}
    unrecorded: dict[int, tuple[Times, float | None, float | None]] = {}
    for queue, assignee, priority, wall1, biz1, wall2, biz2, old in rows:  # a million: tight
        t = found.get((queue, assignee, priority))
        if t is None:
            t = found[(queue, assignee, priority)] = Times()
        if old is not None:
            unrecorded[old] = (t, wall1, wall2)
            continue
        first, first_biz, done, done_biz = t.lists
        if wall1 is not None:
            first.append(wall1)
            first_biz.append(biz1)
        if wall2 is not None:
            done.append(wall2)
            done_biz.append(biz2)
    for i, (biz1, biz2) in _business_times(r, cfg, list(unrecorded)).items():
        t, wall1, wall2 = unrecorded[i]
        t.add((wall1, biz1, wall2, biz2))  # each None with its wall time
    for t in found.values():
        t.sort()
    return found


def _business_times(r: Tx, cfg: Settings, ids: list[int]
                    ) -> dict[int, tuple[float | None, float | None]]:
    """maildesk.deadlines' business times of these tickets, by id."""
    from maildesk import deadlines
    from maildesk.sla import policy_for
    from maildesk.store import tickets
    from maildesk.store.raw import placeholders

    out: dict[int, tuple[float | None, float | None]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for t in tickets.find(r, f"id IN ({placeholders(len(chunk))})", chunk):
            deadlines.track_business_times(t, deadlines.business_calendar(
                cfg, policy_for(cfg.sla, t.queue, t.priority)))
            out[t.id] = (t.first_response_business, t.resolution_business)
    return out


def register(sub: Any, add: Adder) -> None:
    add(sub, "report", cmd_report, "volumes, response and resolution times").add_argument(
        "--since", type=iso_time,
        help="ISO date or time, e.g. 2026-11-01 (UTC unless it says otherwise)")
