"""Rough edges found by trying maildesk as a new user (issue 12, part 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maildesk.cli import main
from maildesk.store import outbox
from tests.helpers import REPO, Desk, message, write_config


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_retrying_a_processed_message_changes_nothing(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(message(msgid="<retry1@customer.example>"))
    code, out, _ = _run(capsys, "ingest", "--config", str(config_path), "--json", str(eml))
    inbox_id, ticket_id = json.loads(out)["inbox"], json.loads(out)["ticket"]
    desk = Desk.open(config_path)
    mail_before = len(outbox.list_items(desk.db))
    for _ in range(2):
        code, out, _ = _run(capsys, "inbox", "retry", str(inbox_id), "--config", str(config_path))
        assert code == 0 and "already processed" in out and f"#{ticket_id}" in out
    assert len(desk.entries(ticket_id)) == 1
    assert len(outbox.list_items(desk.db)) == mail_before


def test_retrying_a_failed_message_reprocesses_it_once(
    config_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from maildesk.domain import InboxState, Source
    from maildesk.store import inbox

    desk = Desk.open(config_path)
    row = inbox.new_row(message(msgid="<f2@customer.example>"), source=Source.CLI,
                        message_id="f2@customer.example", content_hash="y" * 64)
    inbox_id = inbox.add(desk.db, row)
    inbox.record_failure(desk.db, inbox_id, "RuntimeError: boom")
    assert inbox.get(desk.db, inbox_id).state is InboxState.FAILED  # type: ignore[union-attr]
    code, out, _ = _run(capsys, "inbox", "retry", str(inbox_id), "--config", str(config_path))
    assert code == 0 and "processed ticket #1" in out
    code, out, _ = _run(capsys, "inbox", "retry", str(inbox_id), "--config", str(config_path))
    assert "already processed" in out
    [ticket] = desk.tickets()
    assert len(desk.entries(ticket.id)) == 1
    sent = sorted(o.template for o in outbox.list_items(desk.db))
    assert sent == ["ack", "new_ticket_agent", "new_ticket_agent"]  # once, to each agent


@pytest.mark.parametrize("argv", [
    ["report", "--since", "garbage"],
    ["tickets", "list", "--status", "bogus"],
    ["tickets", "list", "--queue", "nosuchqueue"],
    ["tickets", "show", "abc"],
    ["tickets", "show", "0"],
    ["inbox", "retry", "-3"],
    ["outbox", "retry", "x"],
    ["outbox", "list", "--state", "lost"],
    ["tickets", "frobnicate"],
], ids=lambda a: "-".join(a))
def test_a_bad_argument_is_one_line_and_exit_2(
    config_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
) -> None:
    capsys.readouterr()
    try:
        code = main([*argv, "--config", str(config_path)])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_report_since_takes_dates(config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for since in ("2026-11-01", "2026-11-01T09:00", "2026-11-01T09:00+02:00"):
        assert _run(capsys, "report", "--since", since, "--config", str(config_path))[0] == 0


def test_check_config_compiles_every_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    for f in (REPO / "templates").iterdir():
        (templates / f.name).write_text(f.read_text())
    (templates / "vip.txt").write_text("Subject: VIP\n\nHello {{ ticket.id }\n")
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db",
                       '\n[[rules]]\nname = "vip"\n[rules.when]\nsubject = { contains = ["vip"] }'
                       '\n[rules.then]\nreply_template = "vip"\n')
    cfg.write_text(cfg.read_text().replace('secret = "', f'templates = "{templates}"\nsecret = "'))
    code, _, err = _run(capsys, "check-config", "--config", str(cfg))
    assert code == 1 and "vip.txt" in err
    (templates / "vip.txt").write_text("Subject: VIP\n\nHello {{ ticket.id }}\n")
    (templates / "ack.html").write_text("<p>{% if %}</p>")
    code, _, err = _run(capsys, "check-config", "--config", str(cfg))
    assert code == 1 and "ack.html" in err and "vip" not in err
    (templates / "ack.html").unlink()
    assert _run(capsys, "check-config", "--config", str(cfg))[0] == 0


MAILBOX = """
[[mailboxes]]
name = "hosted"
host = "127.0.0.1"
port = 1
username = "support@example.com"
"""


def test_read_only_commands_need_no_mailbox_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MAILDESK_MAILBOX_HOSTED_PASSWORD", raising=False)
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db", MAILBOX)
    for argv in (["tickets", "list"], ["outbox", "list"], ["inbox", "list"], ["report"]):
        assert _run(capsys, *argv, "--config", str(cfg))[0] == 0, argv
    code, _, err = _run(capsys, "check-config", "--config", str(cfg))
    assert code == 1 and "mailboxes[0].password: required" in err
    assert "MAILDESK_MAILBOX_HOSTED_PASSWORD" in err
    code, _, err = _run(capsys, "serve", "--config", str(cfg))
    assert code == 1 and "mailboxes[0].password: required" in err


@pytest.mark.parametrize("raw", [b"", b"\n\r\n", b"\x00\xff\xfe" * 3000,
                                 bytes(range(256)) * 40],
                         ids=["empty", "blank", "binary", "all-bytes"])
def test_empty_and_binary_input_opens_no_ticket(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes,
) -> None:
    eml = tmp_path / "junk"
    eml.write_bytes(raw)
    code, out, _ = _run(capsys, "ingest", "--config", str(config_path), "--json", str(eml))
    result = json.loads(out)
    assert code == 0 and result["ticket"] is None and result["state"] == "ignored"
    assert result["reason"].startswith("not an email message")
    desk = Desk.open(config_path)
    assert desk.tickets() == [] and outbox.list_items(desk.db) == []
    items = json.loads(_run(capsys, "inbox", "list", "--json", "--config", str(config_path))[1])
    assert [i["state"] for i in items] == ["ignored"]


def test_tickets_show_full_prints_the_whole_text(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    body = ("Still broken.\n\nOn Mon, 2 Nov 2026 at 10:00, Desk <support@example.com> wrote:\n"
            "> Did the update help?\n")
    eml = tmp_path / "m.eml"
    eml.write_bytes(message(body=body))
    _run(capsys, "ingest", "--config", str(config_path), str(eml))
    code, short, _ = _run(capsys, "tickets", "show", "1", "--config", str(config_path))
    assert code == 0 and "Still broken." in short and "Did the update help?" not in short
    code, full, _ = _run(capsys, "tickets", "show", "1", "--full", "--config", str(config_path))
    assert code == 0 and "Still broken." in full and "> Did the update help?" in full
    code, out, _ = _run(capsys, "tickets", "show", "1", "--full", "--json", "--config",
                        str(config_path))
    [entry] = json.loads(out)["entries"]
    assert entry["body"] == "Still broken." and "> Did the update help?" in entry["full_body"]


def test_the_systemd_unit_says_templates_come_with_the_package() -> None:
    unit = (REPO / "systemd" / "maildesk.service").read_text()
    assert "does not carry the templates" not in unit
    assert "come with the package" in unit
