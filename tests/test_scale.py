"""A desk with years of mail: the reads that must not grow with it use an index, and
bench/scale.py (the figures) runs and prints what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from maildesk.store import tickets
from tests.sla_desk import SlaDesk, at

REPO = Path(__file__).resolve().parents[1]


def test_report_since_reads_its_period_from_an_index(sd: SlaDesk) -> None:
    sd.customer("2026-10-05 10:00", frm="old@customer.example", subject="Old")
    sd.customer("2026-11-23 10:00", frm="a@customer.example", subject="Monday")
    sd.customer("2026-11-24 09:00", frm="b@customer.example", subject="Tuesday")
    with sd.desk.db.read() as s:
        now = at("2026-11-23 10:30")  # only the old one is past its due time
        every = [row[4] for row in tickets.report_tallies(s, None, now)]
        since = [row[4] for row in tickets.report_tallies(s, at("2026-11-23 10:00"), now)]
        if not sd.desk.db.is_sqlite:  # a three-row table: make the planner show the index
            s.connection().exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = tickets.report_plan(s, at("2026-11-23 10:00"))
    # their first responses: the old one long past due, the others still to come
    assert sorted(every, key=str) == ["breached", "open", "open"]
    assert since == ["open", "open"]  # from its first instant on
    assert "ix_ticket_live_created" in plan, plan


def test_the_scale_bench_prints_its_figures(tmp_path: Path) -> None:
    """A small run of bench/scale.py (its ingest shortened to 30 messages, each read
    command run once): one JSON line with the figures the README's table quotes."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--tickets", "2000", "--messages",
         "30", "--reads", "1", "--json", "--keep", str(tmp_path / "desk")],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    for key in ("tickets", "ingest_empty_msg_s", "ingest_full_msg_s", "sla_scan_s", "report_s",
                "list_open_s", "show_s", "list_open_read_ms", "show_read_ms", "thread_lookup_ms",
                "db_bytes_per_message"):
        assert isinstance(figures[key], int | float), key
    assert figures["tickets"] == 2000 and figures["rows"]["ticket"] == 2000
    assert 2 <= figures["rows"]["entry"] / 2000 <= 4  # ~3 entries a ticket
    assert figures["full_scans"] == []
    assert (tmp_path / "desk" / "maildesk.toml").exists()  # --keep: the CLI can use it
    listed = subprocess.run(
        [sys.executable, "-m", "maildesk.cli", "tickets", "list", "--status", "open", "--json",
         "--limit", "3", "--config", str(tmp_path / "desk" / "maildesk.toml")],
        capture_output=True, text=True, timeout=60, check=True)
    assert [t["status"] for t in json.loads(listed.stdout)] == ["open"] * 3
