"""`maildesk explain FILE.eml`: a dry run of the whole pipeline; nothing is stored or sent."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import EX_OK, database, print_json, read_message, settings
from maildesk.cli.parser import Adder

if TYPE_CHECKING:
    from maildesk.agent_mail import AgentPlan
    from maildesk.config import Settings


def cmd_explain(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from maildesk.app import build_pipeline

    raw = read_message(args.file)
    loaded = settings(args)
    result = build_pipeline(loaded, database(loaded)).explain(raw)
    mail, c, sender, d, o = (result.mail, result.classification, result.sender,
                             result.decision, result.outcome)
    report: dict[str, Any] = {
        "parse": {"parser": mail.parser, "message_id": mail.message_id, "from": mail.from_addr,
                  "subject": mail.subject, "to": list(mail.to), "cc": list(mail.cc),
                  "in_reply_to": list(mail.in_reply_to), "references": list(mail.references),
                  "attachments": [a.filename for a in mail.attachments],
                  "defects": list(mail.defects)},
        "classification": asdict(c) if c else None,
        "sender": asdict(sender) if sender else None,
        "thread": {"ticket": d.ticket_id, "rule": d.rule.value, "reason": d.reason,
                   "merge": list(d.merge), "link": list(d.link_to)} if d else None,
        "agent": _agent_json(result.agent) if result.agent else None,
        "outcome": {"state": o.state.value, "ticket": o.ticket_id, "reason": o.reason}
        if o else None,
        "rules": fired_rules(loaded, o.rules.fired if o and o.rules else ()),
        "actions": result.actions,
    }
    if args.json:
        print_json(report)
        return EX_OK
    print(f"parsed with {mail.parser}: <{mail.message_id or ''}> from {mail.from_addr} "
          f"subject {mail.subject!r}")
    if c:
        print(f"loop check: automatic={c.automatic or 'no'} bulk={c.bulk or 'no'}")
    if sender:
        print(f"sender: {sender.address} ({sender.why})")
    if d:
        target = f"ticket #{d.ticket_id}" if d.ticket_id else "a new ticket"
        print(f"thread: {target} by rule {d.rule.value}: {d.reason}")
    for line in result.agent.describe() if result.agent else []:
        print(line)
    if result.agent and result.agent.handling.value == "reply":
        print("relayed text:\n" + "".join(f"  | {t}\n" for t in result.agent.text.split("\n")),
              end="")
    if not report["rules"]:
        print("rules: none fired")
    for rule in report["rules"]:
        what = ", ".join(f"{k} {' '.join(v) if isinstance(v, list) else v}"
                         for k, v in rule["set"].items())
        print(f"rule fired: {rule['name']!r}: {what or 'sets nothing'}")
    if o:
        print(f"outcome: {o.state.value}" + (f" ({o.reason})" if o.reason else ""))
    for line in result.actions:
        print(f"action: {line}")
    print("(dry run: nothing was stored or sent)")
    return EX_OK


def _agent_json(plan: AgentPlan) -> dict[str, Any]:
    from maildesk.agent_mail import describe_command

    return {"address": plan.agent, "verified": plan.verified, "why": plan.why,
            "handling": plan.handling.value,
            "commands": [{"line": line, "does": describe_command(c)} for line, c in plan.commands],
            "errors": [{"line": e.line, "why": e.why} for e in plan.errors],
            "text": plan.text, "withheld": list(plan.withheld)}
def fired_rules(cfg: Settings, names: Sequence[str]) -> list[dict[str, Any]]:
    """Each rule that fired, in order, with the actions it sets (its non-default `then`)."""
    by_name = {r.name: r for r in cfg.rules}
    return [{"name": n, "set": by_name[n].then.model_dump(mode="json", exclude_defaults=True)
             if n in by_name else {}} for n in names]


def register(sub: Any, add: Adder) -> None:
    add(sub, "explain", cmd_explain, "dry run for one message").add_argument("file")
