"""`maildesk report [--since DATE]`: volumes, response and resolution times, SLA attainment."""

from __future__ import annotations

import argparse
from typing import Any

from maildesk.cli.common import EX_OK, iso_time, print_json, reader, settings
from maildesk.cli.parser import Adder


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from maildesk.config import parse_business_hours
    from maildesk.report import facts_of, report, text
    from maildesk.sla import calendar, default_calendar
    from maildesk.store import tickets

    cfg = settings(args)
    # Business time of tickets no policy covers: the hours rules use (pipeline.DEFAULT_HOURS).
    default = (calendar(cfg.sla[0]) if cfg.sla else default_calendar(
        parse_business_hours("Mon-Fri 09:00-18:00"), cfg.desk.tzinfo))
    with reader(cfg).read_raw() as r:
        facts = [facts_of(t, cfg.sla, default) for t in tickets.report_rows(r, args.since)]
    result = report(facts, datetime.now(UTC))
    if args.json:
        print_json(result)
        return EX_OK
    for line in text(result):
        print(line)
    return EX_OK


def register(sub: Any, add: Adder) -> None:
    add(sub, "report", cmd_report, "volumes, response and resolution times").add_argument(
        "--since", type=iso_time,
        help="ISO date or time, e.g. 2026-11-01 (UTC unless it says otherwise)")
