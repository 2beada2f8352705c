"""`[[rules]]` (SPEC §2.5): a pure function from a message and its context to actions.

Rules run in order on each new ticket and each customer reply. All conditions
of a rule must hold; its actions then apply, later rules overriding earlier
ones field by field (tags, templates and notify addresses accumulate), and
`stop` ends the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from maildesk.config import Match, Rule, RuleWhen
from maildesk.domain import ParsedMail, RuleOutcome


@dataclass(frozen=True)
class RuleContext:
    is_new_ticket: bool
    business_hours: bool  # is it business time now, in the desk's hours


def _addresses_match(m: Match | None, addrs: Sequence[str]) -> bool:
    return m is None or m.matches_any(addrs)


def _value_match(m: Match | None, value: str | None) -> bool:
    return m is None or (value is not None and m.matches(value))


def read_body(rules: Sequence[Rule]) -> bool:
    """Does any rule look at the body? Then messages are read whole before rules run."""
    return any(rule.when.body is not None for rule in rules)


def holds(when: RuleWhen, mail: ParsedMail, ctx: RuleContext) -> bool:
    return (
        _addresses_match(when.from_, [mail.from_addr] if mail.from_addr else [])
        and _addresses_match(when.to, mail.to)
        and _addresses_match(when.cc, mail.cc)
        and _value_match(when.subject, mail.subject)
        and _value_match(when.body, mail.text)
        and all(_value_match(m, mail.header(name)) for name, m in when.header.items())
        and (when.is_new_ticket is None or when.is_new_ticket == ctx.is_new_ticket)
        and (when.business_hours is None or when.business_hours == ctx.business_hours)
    )


def evaluate(rules: Sequence[Rule], mail: ParsedMail, ctx: RuleContext) -> RuleOutcome:
    out = RuleOutcome()
    for rule in rules:
        if not holds(rule.when, mail, ctx):
            continue
        then = rule.then
        out = RuleOutcome(
            fired=(*out.fired, rule.name),
            queue=then.queue or out.queue,
            priority=then.priority or out.priority,
            assignee=then.assignee or out.assignee,
            tags=tuple(dict.fromkeys((*out.tags, *then.tags))),
            status=then.status or out.status,
            reply_templates=(*out.reply_templates, *([then.reply_template]
                                                     if then.reply_template else [])),
            notify=tuple(dict.fromkeys((*out.notify, *then.notify))),
            drop=out.drop or then.drop,
        )
        if then.stop:
            break
    return out
