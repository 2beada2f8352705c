"""`maildesk ingest --queue` on SQLite: the standard-library path for MTA pipes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maildesk import identity
from maildesk.cli import main
from maildesk.parse import parse_message
from maildesk.store import inbox
from tests.helpers import CORPUS, REPO, Desk, message, write_config


def test_header_only_message_id_matches_the_full_parse_on_the_whole_corpus() -> None:
    files = [p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md"]
    assert len(files) > 250
    samples = [p.read_bytes() for p in files] + [
        message(msgid="<=?utf-8?q?odd?=@x.example>"), b"Message-ID: \xff<a@b>\n\nx",
        b"no headers at all", b""]
    for raw in samples:
        assert identity.header_message_id(raw) == parse_message(raw).message_id
        assert len(identity.content_hash(raw)) == 64


def test_queued_row_is_what_the_full_path_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/q.db")
    assert main(["db", "upgrade", "--config", str(cfg)]) == 0
    eml = tmp_path / "m.eml"
    eml.write_bytes(message(msgid="<q1@customer.example>"))
    capsys.readouterr()
    assert main(["ingest", "--queue", "--json", "--config", str(cfg), "--sender",
                 "carol@customer.example", "--recipient", "Support@Example.com", str(eml)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"inbox": 1, "ticket": None, "state": "queued", "reason": None}
    desk = Desk.open(cfg)
    item = inbox.get(desk.db, 1)
    assert item is not None
    assert (item.source, item.state.value, item.message_id, item.envelope_from,
            item.envelope_to, item.size, item.attempts, item.origin) == (
        "cli", "queued", "q1@customer.example", "carol@customer.example",
        ("support@example.com",), len(eml.read_bytes()), 0, str(eml))
    assert item.content_hash == identity.content_hash(eml.read_bytes())
    assert abs(item.received_at - datetime.now(UTC)) < timedelta(minutes=1)
    # the daemon's worker takes it from there
    [outcome] = desk.pipeline.process_batch(inbox.claim(desk.db, limit=10))
    assert outcome.state.value == "processed" and outcome.ticket_id == 1
    desk.db.dispose()


def test_without_a_schema_the_full_path_creates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/fresh.db")
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    assert main(["ingest", "--queue", "--config", str(cfg), str(eml)]) == 0
    assert capsys.readouterr().out.strip() == "inbox 1: queued"


def test_ingest_queue_does_not_import_the_world(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/q.db")
    assert main(["db", "upgrade", "--config", str(cfg)]) == 0
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "maildesk.cli", "ingest", "--queue",
         "--config", str(cfg), "-"], input=message(), capture_output=True, cwd=REPO, check=True)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines()}
    assert not imported & {"sqlalchemy", "sqlmodel", "pydantic", "mailparser", "aiosmtpd",
                           "jinja2", "email.parser"}


def test_ingest_queue_answers_through_a_pipe_and_the_row_is_committed(tmp_path: Path) -> None:
    """The quick exit after `ingest --queue` (cli.run) loses neither the answer, which an
    MTA may read from a pipe, nor the row."""
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/q.db")
    assert main(["db", "upgrade", "--config", str(cfg)]) == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as an MTA runs it
    proc = subprocess.run(
        [sys.executable, "-m", "maildesk.cli", "ingest", "--queue", "--json", "--config",
         str(cfg), "-"], input=message(msgid="<piped@customer.example>"), capture_output=True,
        cwd=REPO, env=env, check=True)
    assert json.loads(proc.stdout) == {"inbox": 1, "ticket": None, "state": "queued",
                                       "reason": None}
    assert proc.stderr == b""
    with sqlite3.connect(tmp_path / "q.db") as conn:
        assert conn.execute("SELECT message_id, state FROM inbox").fetchall() == [
            ("piped@customer.example", "queued")]
