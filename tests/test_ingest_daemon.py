"""`maildesk ingest` (the MTA pipe, without --queue) next to a running daemon: it commits,
rings the daemon's doorbell, and reports the daemon's result; with nobody at the door it
processes the message itself."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk.intake import doorbell
from tests.helpers import REPO, write_config
from tests.helpers import message as lf_message
from tests.test_serve import Daemon, message, running, wait_for


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("ingest-daemon"))
    yield from running(d)


def ingest(config: Path, raw: bytes, *extra: str) -> tuple[dict[str, object], set[str]]:
    """One `maildesk ingest --json` process, as an MTA runs it: its answer, and the modules
    it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "maildesk.cli", "ingest", "--json",
         "--config", str(config), "--recipient", "support@example.com", *extra, "-"],
        input=raw, capture_output=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = proc.stderr.decode().splitlines()
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time")}
    assert [line for line in lines if not line.startswith("import time")] == []
    return json.loads(proc.stdout), imported


def test_the_daemon_processes_it_and_ingest_reports_its_result(daemon: Daemon) -> None:
    first, imported = ingest(daemon.config, message(
        frm="Nina <nina@customer.example>", subject="Scanner jammed",
        msgid="<n1@customer.example>"))
    assert first["state"] == "processed" and isinstance(first["ticket"], int)
    assert first["reason"] == ("threading new_ticket: no ticket matched by token, tag, references"
                               " or subject; rules: none fired")
    # the daemon did the work: this process never loaded the pipeline, nor SQLAlchemy
    assert not imported & {"maildesk.pipeline", "sqlalchemy", "pydantic", "mailparser"}
    [ack] = wait_for("the ack", lambda: daemon.mails_to("nina@customer.example"))
    assert ack["Subject"] == f"Re: Scanner jammed [MD#{first['ticket']}]"

    answer = message(frm="nina@customer.example", subject="Re: " + ack["Subject"],
                     msgid="<n2@customer.example>", in_reply_to=ack["Message-ID"])
    reply, _ = ingest(daemon.config, answer)
    assert (reply["state"], reply["ticket"]) == ("processed", first["ticket"])
    again, _ = ingest(daemon.config, answer)  # the MTA delivers it a second time
    assert again["state"] == "duplicate" and again["ticket"] == first["ticket"]
    assert again["inbox"] == reply["inbox"] + 1  # type: ignore[operator]


def test_a_daemon_that_does_not_answer_in_time_leaves_it_queued(tmp_path: Path) -> None:
    """Someone listens at the door but processes nothing (a daemon that hangs): after
    --wait seconds ingest answers "queued", exit 0; the message is stored for later."""
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db")
    subprocess.run([sys.executable, "-m", "maildesk.cli", "db", "upgrade", "--config",
                    str(cfg)], cwd=REPO, check=True, capture_output=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bell:
        bell.bind(doorbell.address(f"sqlite:///{tmp_path}/m.db"))
        out, imported = ingest(cfg, lf_message(msgid="<late@customer.example>"), "--wait", "0.3")
        assert bell.recv(64) == str(out["inbox"]).encode()  # it rang, with the inbox id
    assert out == {"inbox": 1, "ticket": None, "state": "queued",
                   "reason": "stored; the running daemon processes it"}
    assert "maildesk.pipeline" not in imported
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT message_id, state FROM inbox").fetchall() == [
            ("late@customer.example", "queued")]


def test_without_a_daemon_ingest_processes_it_itself(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db")
    out, imported = ingest(cfg, lf_message(msgid="<alone@customer.example>"))
    assert (out["state"], out["ticket"]) == ("processed", 1)
    assert "maildesk.pipeline" in imported
    again, _ = ingest(cfg, lf_message(msgid="<alone2@customer.example>", subject="Other"))
    assert (again["inbox"], again["state"], again["ticket"]) == (2, "processed", 2)
