"""The command line as an MTA pipe and an operator use it (SPEC §3)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maildesk.cli import main
from maildesk.domain import InboxState
from maildesk.store.tables import InboxRawRow, InboxRow
from tests.helpers import CORPUS, REPO, Desk, message, write_config


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_ingest_file_makes_a_ticket_and_lists_show_it(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(message(subject="Cannot log in", msgid="<cli1@customer.example>"))
    res = run_json(capsys, "ingest", "--config", str(config_path), "--json", str(eml))
    assert isinstance(res, dict)
    assert res["state"] == "processed" and isinstance(res["ticket"], int) and res["inbox"]

    listed = run_json(capsys, "tickets", "list", "--config", str(config_path), "--json")
    assert isinstance(listed, list) and len(listed) == 1
    t = listed[0]
    assert {k: t[k] for k in ("id", "subject", "status", "priority", "queue", "assignee",
                              "requester", "tags")} == {
        "id": res["ticket"], "subject": "Cannot log in", "status": "new", "priority": "normal",
        "queue": "general", "assignee": None, "requester": "carol@customer.example", "tags": []}

    shown = run_json(capsys, "tickets", "show", str(res["ticket"]), "--config",
                     str(config_path), "--json")
    assert isinstance(shown, dict)
    [entry] = shown["entries"]
    assert entry["kind"] == "customer" and entry["from"] == "carol@customer.example"
    assert entry["message_id"] == "cli1@customer.example" and entry["thread_rule"] == "new_ticket"
    assert "printer is on fire" in entry["body"] and entry["created_at"]

    items = run_json(capsys, "inbox", "list", "--config", str(config_path), "--json")
    assert isinstance(items, list)
    assert [(i["state"], i["ticket"], i["source"]) for i in items] == [
        ("processed", res["ticket"], "cli")]


def test_ingest_from_stdin_with_queue_only_stores(config_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "maildesk.cli", "ingest", "--queue", "--json",
         "--config", str(config_path), "-"],
        input=message(), capture_output=True, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["state"] == "queued" and out["ticket"] is None


def test_ingest_exits_75_when_the_database_is_unreachable(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
    eml = tmp_path / "m.eml"
    eml.write_bytes(message())
    assert main(["ingest", "--config", str(cfg), str(eml)]) == 75


def test_explain_shows_decision_and_changes_nothing(
    tmp_path: Path, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first.eml"
    first.write_bytes(message(msgid="<e1@customer.example>"))
    reply = tmp_path / "reply.eml"
    reply.write_bytes(message(subject="Re: Printer on fire", in_reply_to="<e1@customer.example>"))
    run_json(capsys, "ingest", "--config", str(config_path), "--json", str(first))

    assert main(["explain", "--config", str(config_path), str(reply)]) == 0
    text = capsys.readouterr().out
    assert "by rule references" in text and "In-Reply-To/References" in text
    assert "nothing was stored" in text
    report = run_json(capsys, "explain", "--config", str(config_path), "--json", str(reply))
    assert isinstance(report, dict) and report["thread"]["rule"] == "references"
    items = run_json(capsys, "inbox", "list", "--config", str(config_path), "--json")
    tickets = run_json(capsys, "tickets", "show", "1", "--config", str(config_path), "--json")
    assert isinstance(items, list) and len(items) == 1
    assert isinstance(tickets, dict) and len(tickets["entries"]) == 1


def test_failed_message_is_listed_and_retried(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    desk = Desk.open(config_path)
    # A message parked as failed by an earlier run (e.g. a bug since fixed).
    with desk.db.write() as s:
        row = InboxRow(received_at=datetime.now(UTC), source="smtp", content_hash="x" * 64,
            message_id="f1@customer.example", size=10,
            state=InboxState.FAILED.value, reason="RuntimeError: boom", attempts=1)
        s.add(row)
        s.flush()
        inbox_id = row.id
        assert inbox_id is not None
        s.add(InboxRawRow(inbox_id=inbox_id, raw=message(msgid="<f1@customer.example>")))
    failed = run_json(capsys, "inbox", "list", "--failed", "--config", str(config_path), "--json")
    assert isinstance(failed, list)
    assert [(f["id"], f["state"], f["reason"]) for f in failed] == [
        (inbox_id, "failed", "RuntimeError: boom")]
    assert main(["inbox", "retry", str(inbox_id), "--config", str(config_path)]) == 0
    assert "processed ticket #1" in capsys.readouterr().out
    assert run_json(capsys, "inbox", "list", "--failed", "--config", str(config_path),
                    "--json") == []


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(REPO / "config.example.toml")]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[desk]\naddress = "not-an-address"\nsecret = "x"\nbogus = 1\n'
                   '[threading]\nsubject_window = "forever"\n')
    assert main(["check-config", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    for key in ("desk.address", "desk.bogus", "threading.subject_window"):
        assert key in err


def test_a_regular_install_finds_its_templates(tmp_path: Path) -> None:
    """`pip install .` (not editable, as an operator or an MTA pipe runs it) must carry the
    shipped templates: the example config, which leaves desk.templates at its default,
    checks out and a message gets its acknowledgement."""
    source = tmp_path / "src"  # a copy: a build leaves build/ behind, stale the next time
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".*", "build", "dist", "var", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("maildesk-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    config = tmp_path / "config.toml"
    config.write_text((REPO / "config.example.toml").read_text())

    def installed(*argv: str, stdin: bytes = b"") -> str:
        """Run the unpacked wheel, ahead of this checkout's editable install."""
        done = subprocess.run([sys.executable, *argv], input=stdin, capture_output=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)})
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    where = installed("-c", "import maildesk; print(maildesk.__file__)").strip()
    assert Path(where).is_relative_to(site)  # the installed copy, not this checkout
    cli = ("-m", "maildesk.cli")
    assert "ticket #1" in installed(*cli, "ingest", "--config", str(config), "-", stdin=message())
    outbox = installed(*cli, "outbox", "list", "--json", "--config", str(config))
    assert [m["template"] for m in json.loads(outbox)] == ["ack"]


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.fail(f"the shared corpus is missing at {CORPUS} (set MAILDESK_CORPUS)")
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix != ".md"
                  and not p.name.startswith("."))


def test_every_corpus_message_is_stored_and_none_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/corpus.db")
    files = corpus_files()
    assert len(files) > 250
    for path in files:
        assert main(["ingest", "--config", str(cfg), "--json", str(path)]) == 0, path
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(results) == len(files)
    failed = [(str(f), r["reason"]) for f, r in zip(files, results, strict=True)
              if r["state"] == "failed"]
    assert failed == []
    states = {r["state"] for r in results}
    assert states <= {"processed", "duplicate", "ignored"}


CONCURRENT_WORKER = """
import sys
from maildesk.cli import main
cfg, files = sys.argv[1], sys.argv[2:]
for f in files:
    code = main(["ingest", "--config", cfg, f])
    if code != 0:
        sys.exit(code)
"""


def test_two_ingest_processes_at_once_lose_nothing(tmp_path: Path, db_url: str) -> None:
    """200 messages of 50 conversations, shuffled, fed by two processes at once."""
    cfg = write_config(tmp_path, db_url)
    files = []
    for conv in range(50):
        ids = [f"<c{conv}-m{i}@customer.example>" for i in range(4)]
        for i in range(4):
            path = tmp_path / f"c{conv}-{i}.eml"
            path.write_bytes(message(
                frm=f"user{conv}@customer.example", subject=("Re: " if i else "") + f"case {conv}",
                msgid=ids[i], in_reply_to=ids[i - 1] if i else None, references=ids[:i] or None))
            files.append(str(path))
    random.Random(7).shuffle(files)
    assert main(["db", "upgrade", "--config", str(cfg)]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WORKER, str(cfg), *files[k::2]],
                              cwd=REPO, env=env) for k in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    desk = Desk.open(cfg)
    tickets = desk.tickets()
    assert len(tickets) == 50
    assert sum(len(desk.entries(t.id)) for t in tickets) == 200
    assert all(len(desk.entries(t.id)) == 4 for t in tickets)


def test_report_counts_tickets_and_response_times(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from maildesk import addresses
    from tests.helpers import SECRET

    desk = Desk.open(config_path)
    first = desk.ingest(message(msgid="<rep1@customer.example>"))
    desk.ingest(message(frm="other@customer.example", to="billing@example.com",
                        subject="Invoice"), envelope_to=("billing@example.com",))
    own = addresses.agent_reply_address("support@example.com", SECRET, first.ticket_id or 0,
                                        "alice@agents.example.com")
    desk.ingest(message(frm="alice@agents.example.com", to=own, subject="Re: Printer"),
                envelope_to=(own,))
    result = run_json(capsys, "report", "--config", str(config_path), "--json")
    assert isinstance(result, dict)
    total = result["total"]
    assert total["tickets"] == 2 and total["by_status"] == {"new": 1, "pending": 1}
    assert total["first_response_seconds"]["count"] == 1
    assert set(result["by_queue"]) == {"general", "billing"}
    assert main(["report", "--config", str(config_path), "--since", "2999-01-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["tickets"] == 0
