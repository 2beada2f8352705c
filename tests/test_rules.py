"""[[rules]] (SPEC §2.5): pure evaluation, and their effect on stored tickets."""

from __future__ import annotations

from pathlib import Path

from maildesk.domain import InboxState, Priority, Status
from maildesk.identify import dkim_pass_for
from maildesk.parse import parse_message
from maildesk.rules import RuleContext, evaluate
from tests.helpers import Desk, message, write_config

RULES = """
[[agents]]
email = "carl@agents.example.com"

[[queues]]
name = "sales"
agents = ["alice@agents.example.com", "carl@agents.example.com"]

[[rules]]
name = "invoices to billing"
[rules.when]
subject = { contains = ["factura", "invoice"] }
is_new_ticket = true
[rules.then]
queue = "billing"
priority = "high"
tags = ["billing"]

[[rules]]
name = "vip"
[rules.when]
from = { regex = ["@vip\\\\.example$"] }
header = { "X-Priority" = { equals = "1" } }
[rules.then]
priority = "urgent"
tags = ["vip"]
stop = true

[[rules]]
name = "never reached after vip"
[rules.when]
subject = { contains = ["invoice"] }
[rules.then]
tags = ["late"]

[[rules]]
name = "spam"
[rules.when]
subject = { regex = ["^\\\\[spam\\\\]"] }
[rules.then]
drop = true

[[rules]]
name = "sales round robin"
[rules.when]
to = { equals = ["sales@example.com"] }
[rules.then]
queue = "sales"
assignee = "round_robin"
"""


def desk_with_rules(tmp_path: Path) -> Desk:
    return Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/r.db", RULES))


def test_conditions_all_hold_and_stop_ends_evaluation(tmp_path: Path) -> None:
    rules = desk_with_rules(tmp_path).settings.rules
    new = RuleContext(is_new_ticket=True, business_hours=True)
    vip = parse_message(message(frm="boss@vip.example", subject="Invoice 12",
                                headers={"X-Priority": "1"}))
    out = evaluate(rules, vip, new)
    assert out.fired == ("invoices to billing", "vip")
    assert (out.queue, out.priority, out.tags) == ("billing", Priority.URGENT, ("billing", "vip"))
    # Not a new ticket: the first rule's is_new_ticket fails; no X-Priority: vip fails.
    reply = parse_message(message(frm="boss@vip.example", subject="Re: invoice 12"))
    out = evaluate(rules, reply, RuleContext(is_new_ticket=False, business_hours=True))
    assert out.fired == ("never reached after vip",)


def test_rules_change_the_stored_ticket(tmp_path: Path) -> None:
    desk = desk_with_rules(tmp_path)
    out = desk.ingest(message(subject="Factura de octubre"))
    t = desk.ticket(out.ticket_id or 0)
    assert (t.queue, t.priority.value, t.tags) == ("billing", "high", ["billing"])


def test_drop_stores_the_message_but_creates_no_ticket(tmp_path: Path) -> None:
    desk = desk_with_rules(tmp_path)
    out = desk.ingest(message(subject="[SPAM] cheap watches"))
    assert out.state is InboxState.IGNORED and out.ticket_id is None
    assert "spam" in (out.reason or "")
    assert desk.tickets() == []


def test_round_robin_assigns_queue_agents_in_turn(tmp_path: Path) -> None:
    desk = desk_with_rules(tmp_path)
    got = []
    for n in range(3):
        out = desk.ingest(message(frm=f"c{n}@customer.example", to="sales@example.com",
                                  subject=f"quote {n}"))
        t = desk.ticket(out.ticket_id or 0)
        assert t.queue == "sales" and t.status is Status.NEW
        got.append(t.assignee)
    assert got == ["alice@agents.example.com", "carl@agents.example.com",
                   "alice@agents.example.com"]


def test_dkim_verification_needs_trusted_server_and_agent_domain() -> None:
    trusted = ["mx.example.com"]
    good = "mx.example.com; dkim=pass header.d=agents.example.com header.s=sel; spf=pass"
    assert dkim_pass_for(good, "agents.example.com", trusted)
    assert not dkim_pass_for(good, "agents.example.com", ["other.example"])
    assert not dkim_pass_for(good.replace("pass header.d", "fail header.d"),
                             "agents.example.com", trusted)
    assert not dkim_pass_for(good, "evil.example", trusted)
