"""Which [[rules]] fired, and what they set: in `explain`, and in the inbox `reason`, apart
from the threading rule that placed the message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maildesk.cli import main
from maildesk.store import inbox
from tests.helpers import Desk, message, write_config
from tests.test_rules import RULES


def test_explain_lists_the_rules_that_fired_and_what_they_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db", RULES)
    eml = tmp_path / "m.eml"
    eml.write_bytes(message(subject="Invoice 42", msgid="<inv@customer.example>"))
    capsys.readouterr()
    assert main(["explain", "--config", str(cfg), "--json", str(eml)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rules"] == [
        {"name": "invoices to billing",
         "set": {"queue": "billing", "priority": "high", "tags": ["billing"]}},
        {"name": "never reached after vip", "set": {"tags": ["late"]}},
    ]
    assert report["outcome"]["reason"] == (
        "threading new_ticket: no ticket matched by token, tag, references or subject; "
        "rules: invoices to billing, never reached after vip")
    assert main(["explain", "--config", str(cfg), str(eml)]) == 0
    text = capsys.readouterr().out
    assert ("rule fired: 'invoices to billing': queue billing, priority high, tags billing"
            in text)
    eml.write_bytes(message(subject="Hello there", msgid="<plain@customer.example>"))
    assert main(["explain", "--config", str(cfg), str(eml)]) == 0
    assert "rules: none fired" in capsys.readouterr().out


def test_the_inbox_reason_names_the_threading_rule_and_the_rules_apart(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/m.db", RULES))
    first = desk.ingest(message(subject="Factura de octubre", msgid="<f1@customer.example>"))
    reply = desk.ingest(message(subject="Re: Factura de octubre", msgid="<f2@customer.example>",
                                in_reply_to="<f1@customer.example>"))
    reasons = {i.message_id: i.reason for i in inbox.list_items(desk.db)}
    assert reasons["f1@customer.example"] == (
        "threading new_ticket: no ticket matched by token, tag, references or subject; "
        "rules: invoices to billing")
    assert reasons["f2@customer.example"] is not None
    assert reasons["f2@customer.example"].startswith("threading references: ")
    assert reasons["f2@customer.example"].endswith("; rules: none fired")
    assert first.ticket_id == reply.ticket_id
    desk.db.dispose()
