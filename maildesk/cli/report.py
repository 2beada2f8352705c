"""`maildesk report [--since DATE]`: volumes, response and resolution times, SLA attainment."""

from __future__ import annotations

import argparse
from typing import Any

from maildesk.cli.common import EX_OK, print_json, reader, settings
from maildesk.cli.parser import Adder


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from maildesk.report import TicketFacts, report
    from maildesk.store import tickets

    since = datetime.fromisoformat(args.since) if args.since else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with reader(settings(args)).read_raw() as r:
        facts = [TicketFacts(
            queue=t.queue, assignee=t.assignee, status=t.status, created_at=t.created_at,
            first_response_at=t.first_response_at, solved_at=t.solved_at,
            first_response_due=t.first_response_due, resolution_due=t.resolution_due,
        ) for t in tickets.report_rows(r, since)]
    result = report(facts)
    if args.json:
        print_json(result)
        return EX_OK
    print(f"{'':<24} {'tickets':>7} {'1st resp med':>12} {'p90':>8} {'resolve med':>12} {'p90':>8}")
    rows = [("total", result["total"])] + [(f"queue {q}", v) for q, v in result["by_queue"].items()]
    rows += [(f"agent {a}", v) for a, v in result["by_agent"].items()]
    for name, v in rows:
        fr, rs = v["first_response_seconds"], v["resolution_seconds"]
        print(f"{name[:24]:<24} {v['tickets']:>7} {_hours(fr['median']):>12} "
              f"{_hours(fr['p90']):>8} {_hours(rs['median']):>12} {_hours(rs['p90']):>8}")
    return EX_OK


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f}h"


def register(sub: Any, add: Adder) -> None:
    add(sub, "report", cmd_report, "volumes, response and resolution times").add_argument(
        "--since", help="ISO date or time, e.g. 2026-11-01")
