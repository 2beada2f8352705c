"""`maildesk ingest` (the MTA pipe, one process per message) processes a message the same
way whoever does it: the process itself when no daemon runs (the pipeline on a driver
connection, store.direct.DirectDatabase), or the running daemon it rings. Same tickets,
entries, inbox states and outgoing mail; `--json` reports the final state either way."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from maildesk.addresses import agent_reply_address
from maildesk.cli import main
from maildesk.store.direct import DirectDatabase, Reader, StoreUnavailable
from maildesk.store.raw import savepoint
from tests.helpers import REPO, SECRET, write_config
from tests.helpers import message as lf_message
from tests.test_serve import Daemon, message, running, wait_for

FIRST = "<path-1@customer.example>"


DESK = "support@example.com"
ALICE = "alice@agents.example.com"
ALICE_REPLY = agent_reply_address(DESK, SECRET, 1, ALICE)  # hers alone: her mail is verified


def conversation() -> list[tuple[bytes, str]]:
    """(message, envelope recipient): a new ticket, the customer's follow-up, the MTA
    delivering it twice, an agent's reply with a command (read whole at once, not from
    its headers; relayed to the customer), and an auto-reply (automatic: an entry, never
    answered)."""
    return [
        (message(frm="Nina <nina@customer.example>", subject="Scanner jammed", msgid=FIRST),
         DESK),
        (message(frm="nina@customer.example", subject="Re: Scanner jammed",
                 msgid="<path-2@customer.example>", in_reply_to=FIRST, body="Still jammed.\n"),
         DESK),
        (message(frm="nina@customer.example", subject="Re: Scanner jammed",
                 msgid="<path-2@customer.example>", in_reply_to=FIRST, body="Still jammed.\n"),
         DESK),
        (message(frm=f"Alice <{ALICE}>", to=ALICE_REPLY, subject="Re: Scanner jammed [MD#1]",
                 msgid="<path-3@agents.example.com>", in_reply_to=FIRST,
                 body="#priority high\nA new roller is on its way.\n"), ALICE_REPLY),
        (lf_message(frm="nina@customer.example", subject="Out of office: Re: Scanner jammed",
                    msgid="<path-4@customer.example>", in_reply_to=FIRST,
                    headers={"Auto-Submitted": "auto-replied"}), DESK),
    ]


def ingest(config: Path, raw: bytes, rcpt: str = DESK) -> tuple[dict[str, Any], set[str]]:
    """One `maildesk ingest --json` process, as an MTA runs it: its answer (exit 0), and
    the modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "maildesk.cli", "ingest", "--json",
         "--config", str(config), "--recipient", rcpt, "-"],
        input=raw, capture_output=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = proc.stderr.decode().splitlines()
    assert [line for line in lines if not line.startswith("import time")] == []
    imported = {line.split("|")[-1].strip() for line in lines}
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer, imported


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a user sees of the desk, without times and generated ids."""
    with Reader(url).read_raw() as r:
        outbox = []
        for ticket, entry, template, automatic, recipients, raw in r.rows(
                "SELECT ticket_id, entry_id, template, automatic, recipients, raw FROM outbox"
                " ORDER BY id"):
            mail = message_from_bytes(bytes(raw))
            outbox.append((ticket, entry, template, bool(automatic), recipients,
                           mail["Subject"], mail["To"], mail["In-Reply-To"]))
        return {
            "inbox": r.rows("SELECT id, message_id, state, reason, ticket_id, entry_id"
                            " FROM inbox ORDER BY id"),
            "tickets": r.rows("SELECT id, subject, status, priority, queue, assignee,"
                              " requester, tags FROM ticket ORDER BY id"),
            "entries": [(*row[:7], None if row[7] is None else bool(row[7]), *row[8:])
                        for row in r.rows(
                "SELECT id, ticket_id, inbox_id, kind, from_addr, subject, body, verified,"
                " message_id, thread_rule, thread_reason FROM entry ORDER BY id")],
            "participants": r.rows("SELECT ticket_id, address, role FROM participant"
                                   " ORDER BY id"),
            "deferred": r.rows("SELECT inbox_id FROM deferred"),
            "outbox": outbox,
        }


def follow_ups_done(url: str) -> bool:
    with Reader(url).read_raw() as r:
        found = r.one("SELECT count(*) FROM deferred")
    return found is not None and found[0] == 0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "daemon")
    yield from running(d)


def test_with_and_without_a_daemon_the_desk_ends_up_the_same(
    tmp_path: Path, db_url: str, daemon: Daemon
) -> None:
    """Without a daemon on SQLite and on PostgreSQL, against a daemon on SQLite."""
    alone = write_config(tmp_path, db_url)
    assert main(["db", "upgrade", "--config", str(alone)]) == 0  # as `serve` would have
    by_daemon = f"sqlite:///{daemon.folder}/maildesk.db"
    answers: dict[str, list[dict[str, Any]]] = {"alone": [], "daemon": []}
    for raw, rcpt in conversation():
        out, imported = ingest(alone, raw, rcpt)
        assert "sqlalchemy" not in imported  # the pipeline on a driver connection
        answers["alone"].append(out)
        out, imported = ingest(daemon.config, raw, rcpt)
        assert not imported & {"maildesk.pipeline", "sqlalchemy", "pydantic", "mailparser"}
        answers["daemon"].append(out)
        # one message at a time, its outgoing mail included, as the process alone does it
        wait_for("the daemon's follow-up", lambda: follow_ups_done(by_daemon))
    assert answers["alone"] == answers["daemon"]
    states = [(a["state"], a["ticket"]) for a in answers["alone"]]
    assert states == [("processed", 1), ("processed", 1), ("duplicate", 1), ("processed", 1),
                      ("processed", 1)]
    assert answers["alone"][2]["reason"] == "same message as inbox 2"

    desk = snapshot(db_url)
    assert desk == snapshot(by_daemon)
    assert desk["deferred"] == []
    [ticket] = desk["tickets"]
    assert ticket[1:6] == ("Scanner jammed", "pending", "high", "general", ALICE)
    entries = [(e[3], e[4], e[6]) for e in desk["entries"]]
    assert entries[:3] == [  # bodies filled in by the follow-up, or read whole at once
        ("customer", "nina@customer.example", "Hello,\nthe printer is on fire."),
        ("customer", "nina@customer.example", "Still jammed."),
        ("agent_reply", ALICE, "A new roller is on its way.")]
    assert [e[:2] for e in entries[3:]] == [("system", ALICE),  # what her command changed
                                            ("system", "nina@customer.example")]
    sent = [(o[2], o[6]) for o in desk["outbox"]]
    assert sent == [("ack", "nina@customer.example"),
                    ("new_ticket_agent", ALICE), ("new_ticket_agent", "bob@agents.example.com"),
                    ("customer_reply_agent", ALICE),
                    ("customer_reply_agent", "bob@agents.example.com"),
                    ("agent_reply", "nina@customer.example")]  # the auto-reply: none


@pytest.mark.postgres
def test_on_postgresql_ingest_rings_the_daemon_and_reports_its_result(
    tmp_path: Path, pg_url: str
) -> None:
    d = Daemon(tmp_path / "daemon")
    d.config.write_text(d.config.read_text().replace(
        f'url = "sqlite:///{d.folder}/maildesk.db"', f'url = "{pg_url}"'))
    try:
        d.start()
        first, imported = ingest(d.config, conversation()[0][0])
        assert (first["state"], first["ticket"]) == ("processed", 1)
        # committed with psycopg alone; the daemon did the processing
        assert not imported & {"maildesk.pipeline", "sqlalchemy", "pydantic", "mailparser"}
        [ack] = wait_for("the ack", lambda: d.mails_to("nina@customer.example"))
        assert ack["Subject"] == "Re: Scanner jammed [MD#1]"
        assert d.stop() == 0
        # no daemon any more: nobody at the door, the process does it itself
        reply, imported = ingest(d.config, conversation()[1][0])
        assert (reply["state"], reply["ticket"]) == ("processed", 1)
        assert "maildesk.pipeline" in imported and "sqlalchemy" not in imported
    finally:
        d.kill()


def test_a_direct_transaction_takes_savepoints_and_rolls_back_whole(tmp_path: Path) -> None:
    """What the pipeline's `isolate` retry relies on, on a DirectDatabase: a savepoint
    that raises is undone alone; a transaction that raises is undone whole."""
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/d.db")
    assert main(["db", "upgrade", "--config", str(cfg)]) == 0
    db = DirectDatabase(f"sqlite:///{tmp_path}/d.db")
    insert = "INSERT INTO suppression (address, reason, created_at) VALUES (?, 'x', '2026-01-01')"
    with db.write(durable=False) as tx:
        tx.run(insert, ("kept@example.com",))
        with pytest.raises(ZeroDivisionError), savepoint(tx):
            tx.run(insert, ("undone@example.com",))
            raise ZeroDivisionError
        with savepoint(tx):
            tx.run(insert, ("also-kept@example.com",))
    with pytest.raises(ZeroDivisionError), db.write() as tx:
        tx.run(insert, ("never@example.com",))
        raise ZeroDivisionError
    with db.read_raw() as r:
        assert r.rows("SELECT address FROM suppression ORDER BY address") == [
            ("also-kept@example.com",), ("kept@example.com",)]
    db.dispose()


def test_an_unreachable_database_is_a_temporary_failure(tmp_path: Path) -> None:
    """Exit 75 (EX_TEMPFAIL): the MTA keeps the message and tries again."""
    cfg = write_config(tmp_path, "postgresql://postgres@127.0.0.1:9/nowhere")
    for extra in ([], ["--queue"]):
        proc = subprocess.run(
            [sys.executable, "-m", "maildesk.cli", "ingest", *extra, "--config", str(cfg), "-"],
            input=message(), capture_output=True, cwd=REPO, check=False)
        assert proc.returncode == 75, proc.stderr
        assert b"database unavailable, try again later" in proc.stderr
    with pytest.raises(StoreUnavailable):
        DirectDatabase("postgresql+psycopg://postgres@127.0.0.1:9/nowhere").write_raw().__enter__()
