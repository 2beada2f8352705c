"""`maildesk tickets list`: pages, newest first, and the total of the filter (SPEC §3); and
the read commands stay quick: they import neither SQLAlchemy nor the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maildesk.cli import main
from maildesk.domain import Source
from maildesk.identity import content_hash, header_message_id
from maildesk.store import inbox, tickets
from maildesk.store.raw import raw
from tests.helpers import REPO, Desk, message


def fill(desk: Desk, n: int, **kw: str) -> list[int]:
    """n new tickets in one batch through the real pipeline; their ids."""
    rows = []
    for i in range(n):
        tag = kw.get("tag", "m")
        raw_message = message(frm=f"{tag}{i}@customer.example", subject=f"case {tag}{i}",
                              msgid=f"<{tag}{i}@customer.example>",
                              **({"to": kw["to"]} if "to" in kw else {}))
        rows.append(inbox.new_row(raw_message, source=Source.CLI,
                                  message_id=header_message_id(raw_message),
                                  content_hash=content_hash(raw_message),
                                  envelope_to=(kw.get("to", "support@example.com"),)))
    outcomes = desk.pipeline.process_batch(inbox.add_many(desk.db, rows))
    return [o.ticket_id for o in outcomes if o.ticket_id]


def listed(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> list[int]:
    capsys.readouterr()
    assert main(["tickets", "list", "--json", "--config", str(config), *args]) == 0
    return [t["id"] for t in json.loads(capsys.readouterr().out)]


def text(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["tickets", "list", "--config", str(config), *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_pages_newest_first_with_limit_before_and_all(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk.open(config_path)
    ids = fill(desk, 57)
    assert len(ids) == 57
    newest = sorted(ids, reverse=True)
    assert listed(capsys, config_path) == newest[:50]  # 50 by default
    assert listed(capsys, config_path, "--limit", "7") == newest[:7]
    assert listed(capsys, config_path, "--limit", "7", "--before", str(newest[6])) == (
        newest[7:14])
    assert listed(capsys, config_path, "--before", str(newest[49])) == newest[50:]
    assert listed(capsys, config_path, "--limit", "0") == newest  # all
    assert listed(capsys, config_path, "--before", str(min(ids))) == []

    lines = text(capsys, config_path, "--limit", "7")
    assert len(lines) == 8 and lines[0].startswith(f"#{newest[0]} ")
    assert lines[-1] == f"57 tickets, 7 shown; next page: --before {newest[6]}"
    lines = text(capsys, config_path, "--before", str(newest[49]))
    assert lines[-1] == f"57 tickets, 7 shown older than #{newest[49]}"  # the last page
    assert text(capsys, config_path, "--limit", "0")[-1] == "57 tickets"
    desk.db.dispose()


def test_the_total_counts_the_filter_and_merged_tickets_are_left_out(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk.open(config_path)
    general = fill(desk, 5)
    billing = fill(desk, 3, to="billing@example.com", tag="b")
    with desk.db.write() as s:  # one ticket merged away, one linked, one pending
        r = raw(s)
        r.run("UPDATE ticket SET merged_into = ?, status = 'closed' WHERE id = ?",
              (general[0], general[1]))
        r.run("UPDATE ticket SET status = 'pending' WHERE id = ?", (billing[0],))
        tickets.link(s, general[2], general[3], "test")
        tickets.add_participants(s, general[2], ["cc1@customer.example",
                                                 "cc2@customer.example"])
    assert listed(capsys, config_path, "--queue", "billing") == sorted(billing, reverse=True)
    assert listed(capsys, config_path, "--status", "new", "--queue", "billing") == sorted(
        billing[1:], reverse=True)
    assert text(capsys, config_path, "--queue", "billing", "--limit", "1")[-1] == (
        f"3 tickets (queue billing), 1 shown; next page: --before {billing[-1]}")
    assert text(capsys, config_path, "--status", "new")[-1] == "6 tickets (status new)"
    everything = listed(capsys, config_path)
    assert general[1] not in everything and len(everything) == 7
    assert text(capsys, config_path)[-1] == "7 tickets"
    assert text(capsys, config_path, "--status", "closed")[-1] == "0 tickets (status closed)"

    capsys.readouterr()
    assert main(["tickets", "list", "--json", "--config", str(config_path)]) == 0
    page = {t["id"]: t for t in json.loads(capsys.readouterr().out)}
    assert page[general[2]]["cc"] == ["cc1@customer.example", "cc2@customer.example"]
    assert page[general[2]]["linked"] == [general[3]]
    assert page[general[3]]["linked"] == [general[2]]
    assert page[general[4]]["cc"] == [] and page[general[4]]["linked"] == []
    assert page[billing[0]]["status"] == "pending" and page[billing[0]]["queue"] == "billing"
    assert page[general[0]]["requester"] == "m0@customer.example"
    desk.db.dispose()


READ_COMMANDS = [["tickets", "list"], ["tickets", "show", "1"], ["inbox", "list"],
                 ["outbox", "list"], ["report"], ["tickets", "list", "--json"],
                 ["sla", "show", "1"]]


def test_read_commands_import_neither_sqlalchemy_nor_the_pipeline(tmp_path: Path) -> None:
    """What makes `maildesk tickets list` take a second instead of a third of one: the
    ORM, the pipeline and what it imports (mail-parser, Jinja2), Alembic."""
    from tests.helpers import write_config

    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/r.db")
    desk = Desk.open(cfg)
    desk.ingest(message())
    desk.db.dispose()
    for argv in READ_COMMANDS:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "maildesk.cli", *argv, "--config",
             str(cfg)], capture_output=True, cwd=REPO, check=True)
        imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()}
        assert not imported & {"sqlalchemy", "sqlmodel", "alembic", "mailparser", "jinja2",
                               "aiosmtpd", "maildesk.pipeline", "prometheus_client"}, argv
        assert proc.stdout, argv


def test_a_read_command_with_the_database_down_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers import write_config

    cfg = write_config(tmp_path, "postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
    assert main(["tickets", "list", "--config", str(cfg)]) == 75
    assert "database unavailable, try again later" in capsys.readouterr().err
