"""`maildesk sla show ID`: a ticket's due times and how each was computed (the policy, its
business hours and holidays, when each clock started, the pauses), what was met and when,
and the SLA mail sent; `due_fields` is the same in `tickets show --json`.
`maildesk sla recompute`: after [[sla]] changed, the due times of every open ticket again
(otherwise a ticket takes the new policies at its next change)."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import EX_OK, CliError, database, print_json, reader, settings
from maildesk.cli.parser import Adder, group

if TYPE_CHECKING:
    from maildesk.config import Settings, SlaPolicy
    from maildesk.domain import TicketView
    from maildesk.store.tickets import Ticket

TARGETS = ("first_response", "next_response", "resolution")


def due_fields(t: TicketView, now: datetime | None = None) -> dict[str, Any]:
    """`<target>_due`, `<target>_met` (true: in time, false: breached, null: not yet or no
    target) and `<target>_met_at` for the three targets, and `sla_policy`."""
    from datetime import UTC

    from maildesk.sla import state

    now = now or datetime.now(UTC)
    out: dict[str, Any] = {"sla_policy": t.sla_policy}
    for target, due, met_at in (
        ("first_response", t.first_response_due, t.first_response_at),
        ("next_response", t.next_response_due, t.next_response_at),
        ("resolution", t.resolution_due, t.solved_at),
    ):
        found = state(due, met_at, now) if due or met_at else None
        out[f"{target}_due"] = due
        out[f"{target}_met"] = {"met": True, "breached": False}.get(found or "")
        out[f"{target}_met_at"] = met_at if due else None
    return out


def explain(cfg: Settings, s: Any, ticket: Ticket, now: datetime) -> dict[str, Any]:
    """Everything `sla show` prints, as JSON-ready data."""
    from maildesk import deadlines, sla
    from maildesk.store import sla as store

    policy = sla.policy_for(cfg.sla, ticket.queue, ticket.priority)
    out: dict[str, Any] = {
        "ticket": ticket.id, "subject": ticket.subject, "status": ticket.status,
        "priority": ticket.priority, "queue": ticket.queue, "assignee": ticket.assignee,
        "policy": _policy(policy) if policy else None, "targets": [], "pauses": [],
        "sent": [{"kind": m.kind, "target": m.target, "due": m.due_at, "at": m.created_at,
                  "to": list(m.recipients)} for m in store.sent(s, ticket.id)],
    }
    facts = deadlines.facts(s, ticket)
    spans = [*facts.pauses, *([(facts.paused_since, None)] if facts.paused_since else [])]
    cal = sla.calendar(policy) if policy else None
    for start, end in spans:
        out["pauses"].append({"start": start, "end": end, "wall_seconds": _secs(
            (end or now) - start), "business_seconds": _secs(cal.elapsed(start, end or now))
            if cal else None})
    if ticket.status == "pending" and ticket.paused_since is not None:
        wait = deadlines.auto_close_after(cfg, ticket)
        out["auto_close_at"] = ticket.paused_since + wait if wait > timedelta(0) else None
    if policy is None or cal is None:
        return out
    stored = {"first_response": ticket.first_response_due,
              "next_response": ticket.next_response_due, "resolution": ticket.resolution_due}
    for target, d in sla.due(facts, policy).items():
        lost = (cal.elapsed(d.start, d.met_at or d.due or now)
                - cal.elapsed(d.start, d.met_at or d.due or now, d.pauses)) if d.start else None
        out["targets"].append({
            "target": target.value, "goal": _span(d.goal), "start": d.start, "due": d.due,
            "stored_due": stored[target.value], "met_at": d.met_at, "paused": d.paused,
            "state": "paused" if d.paused else sla.state(d.due, d.met_at, now),
            "paused_business_seconds": _secs(lost) if lost is not None else None,
            "remind_at": d.remind_at,
        })
    return out


def _policy(p: SlaPolicy) -> dict[str, Any]:
    return {
        "name": p.name, "match": {"queue": list(p.match.queue),
                                  "priority": [x.value for x in p.match.priority]},
        "business_hours": p.business_hours, "timezone": p.timezone,
        "holidays": p.holidays if isinstance(p.holidays, str) else [str(d) for d in p.holidays],
        "remind_before": _span(p.remind_before), "escalate_to": list(p.escalate_to),
        "auto_close_after": _span(p.auto_close_after),
    }


def cmd_show(args: argparse.Namespace) -> int:
    from datetime import UTC

    from maildesk.store import tickets

    cfg = settings(args)
    now = datetime.now(UTC)
    with reader(cfg).read_raw() as r:
        ticket = tickets.get_row(r, args.id)
        if ticket is None:
            raise CliError(f"no ticket #{args.id}")
        data = explain(cfg, r, ticket, now)
    if args.json:
        print_json(data)
        return EX_OK
    for line in describe(data, cfg.desk.tzinfo):
        print(line)
    return EX_OK


def describe(d: dict[str, Any], desk_zone: tzinfo) -> list[str]:
    """The text of `sla show`: times in the policy's zone (else the desk's)."""
    from zoneinfo import ZoneInfo

    p = d["policy"]
    tz = ZoneInfo(p["timezone"]) if p else desk_zone

    def t(x: datetime | None) -> str:
        return f"{x.astimezone(tz):%Y-%m-%d %H:%M %Z}" if x else "-"

    lines = [f"#{d['ticket']} {d['subject']!r}: {d['status']}, priority {d['priority']}, "
             f"queue {d['queue']}, assignee {d['assignee'] or '-'}"]
    if p is None:
        lines.append(f"no [[sla]] policy matches queue {d['queue']!r} and priority "
                     f"{d['priority']!r}: no due times")
    else:
        match = " and ".join(f"{k} {'/'.join(v)}" for k, v in p["match"].items() if v) or "any"
        holidays = (p["holidays"] if isinstance(p["holidays"], str)
                    else ", ".join(p["holidays"]) or "none")
        lines += [f"policy {p['name']} (matches {match})",
                  f"  business hours {p['business_hours']} in {p['timezone']}, holidays "
                  f"{holidays}; reminder {p['remind_before']} of business time ahead; "
                  f"breaches also to {', '.join(p['escalate_to']) or 'nobody else'}"]
    for x in d["pauses"]:
        biz = x["business_seconds"]
        lines.append(f"waited on the customer {t(x['start'])} to "
                     f"{t(x['end']) if x['end'] else 'now'}"
                     + (f": {_span(timedelta(seconds=biz))} of business time" if biz else ""))
    for x in d["targets"]:
        lines.append(_target_line(x, t))
    if d.get("auto_close_at"):
        lines.append(f"auto-close (solved) at {t(d['auto_close_at'])} unless the customer answers")
    for m in d["sent"]:
        lines.append(f"sent {m['kind']} for {m['target'].replace('_', ' ')} (due {t(m['due'])})"
                     f" at {t(m['at'])} to {', '.join(m['to']) or 'nobody'}")
    return lines


def _target_line(x: dict[str, Any], t: Any) -> str:
    name = x["target"].replace("_", " ")
    if x["start"] is None:
        return f"{name} {x['goal']}: not running (no customer message after an agent reply)"
    lost = x["paused_business_seconds"]
    how = f"{x['goal']} of business time from {t(x['start'])}"
    if lost:
        how += f", plus {_span(timedelta(seconds=lost))} stopped while waiting"
    if x["paused"]:
        return f"{name}: {how}: clock stopped (waiting on the customer): no due time now"
    line = f"{name}: {how}: due {t(x['due'])}"
    state = x["state"]
    if x["met_at"]:
        line += f", met {t(x['met_at'])} ({'in time' if state == 'met' else 'late'})"
    elif state:
        line += f", {state}" + (f" (reminder at {t(x['remind_at'])})"
                                if x["remind_at"] and state == "open" else "")
    if x["stored_due"] != x["due"]:
        line += f" [stored {t(x['stored_due'])}: the config changed since the ticket did]"
    return line


def _secs(d: timedelta) -> int:
    return int(d.total_seconds())


def _span(d: timedelta) -> str:
    """A duration as the config writes it: "1d", "1h30m", "90s"."""
    secs, out = int(d.total_seconds()), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            out += f"{secs // size}{unit}"
            secs %= size
    return out or "0"


def cmd_recompute(args: argparse.Namespace) -> int:
    from datetime import UTC

    from maildesk.deadlines import recompute_open

    cfg = settings(args)
    changed = recompute_open(database(cfg), cfg, datetime.now(UTC))
    if args.json:
        print_json({"changed": changed})
    else:
        print(f"due times changed on {changed} open ticket{'s' if changed != 1 else ''}")
    return EX_OK


def register(sub: Any, add: Adder) -> None:
    sl = group(sub, "sla", "service levels")
    add(sl, "show", cmd_show, "a ticket's due times and how they were computed").add_argument(
        "id", type=int)
    add(sl, "recompute", cmd_recompute,
        "after changing [[sla]]: the due times of every open ticket again")
