"""What an operator sees of service levels: `report` on a seeded history with known numbers,
the due times in `tickets show --json`, and `sla show` explaining them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk.cli import main
from tests.sla_desk import SlaDesk, at

ALICE = "alice@agents.example.com"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert main(list(argv)) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, dict)
    return out


@pytest.fixture
def history(tmp_path: Path, db_url: str) -> Iterator[SlaDesk]:
    """Four tickets in the week of Monday 2026-11-23 (policy "office": first response 1h,
    next response 2h, resolution 1d, Mon-Fri 09:00-18:00 Madrid)."""
    d = SlaDesk.open(tmp_path, db_url)
    # A: answered in 30 min, solved at 14:00
    a = d.customer("2026-11-23 10:00", frm="a@customer.example", subject="A")
    d.agent_reply("2026-11-23 10:30", a)
    d.change("2026-11-23 14:00", a, status="solved", solved_at=at("2026-11-23 14:00"),
             assignee=ALICE)
    # B: in at 17:30, answered at 09:45 the next day (1h15 of business time: late); the
    # customer's answer at 10:00 is answered at 13:00 (late); left pending
    b = d.customer("2026-11-23 17:30", frm="b@customer.example", subject="B")
    d.agent_reply("2026-11-24 09:45", b)
    d.customer("2026-11-24 10:00", frm="b@customer.example", ticket=b)
    d.agent_reply("2026-11-24 13:00", b)
    # C: to billing, never answered
    d.customer("2026-11-23 11:00", frm="c@customer.example", subject="C", ticket=None)
    # D: answered in 20 min; the customer's next message answered in 30 min; the one
    # after that not at all
    dd = d.customer("2026-11-24 10:00", frm="d@customer.example", subject="D")
    d.change("2026-11-24 10:01", dd, assignee=ALICE)
    d.agent_reply("2026-11-24 10:20", dd)
    d.customer("2026-11-24 11:00", frm="d@customer.example", ticket=dd)
    d.agent_reply("2026-11-24 11:30", dd)
    d.customer("2026-11-24 12:00", frm="d@customer.example", ticket=dd)
    yield d
    d.close()


def test_report_gives_the_known_medians_and_attainment(
    history: SlaDesk, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(history.config)
    with history.desk.db.write() as s:  # C went to billing@: move it there as a rule would
        s.connection().exec_driver_sql("UPDATE ticket SET queue = 'billing' WHERE subject = 'C'")
    r = run_json(capsys, "report", "--config", cfg, "--json")
    total = r["total"]
    assert total["tickets"] == 4
    assert total["by_status"] == {"new": 1, "open": 1, "pending": 1, "solved": 1}
    # first responses: 30 min, 16h15 (1h15 of business time), 20 min
    assert total["first_response_seconds"] == {"count": 3, "median": 1800.0, "p90": 47160.0}
    assert total["first_response_business_seconds"] == {"count": 3, "median": 1800.0,
                                                        "p90": 3960.0}
    assert total["resolution_seconds"] == {"count": 1, "median": 14400.0, "p90": 14400.0}
    assert total["resolution_business_seconds"]["median"] == 14400.0
    assert total["sla"] == {
        "first_response": {"met": 2, "breached": 2, "open": 0, "attainment": 0.5},
        # B late; D one in time and one still unanswered past its due time
        "next_response": {"met": 1, "breached": 2, "open": 0, "attainment": 0.333},
        # A in time; B waiting on its customer (clock stopped); C and D past due
        "resolution": {"met": 1, "breached": 2, "open": 1, "attainment": 0.333},
    }
    assert set(r["by_queue"]) == {"general", "billing"}
    assert r["by_queue"]["billing"]["sla"]["first_response"]["breached"] == 1
    assert r["by_policy"]["office"]["tickets"] == 4
    alice = r["by_agent"][ALICE]
    # A and D, and B, which her first reply assigned to her: 30 min, 20 min, 16h15
    assert alice["tickets"] == 3 and alice["first_response_seconds"]["median"] == 1800.0
    since = run_json(capsys, "report", "--config", cfg, "--json", "--since", "2026-11-24")
    assert since["total"]["tickets"] == 1  # D only (B came in on Monday evening)
    assert main(["report", "--config", cfg]) == 0
    text = capsys.readouterr().out
    assert "policy office" in text and "first response" in text and "50%" in text


def test_report_reads_the_business_times_recorded_and_computes_missing_ones(
    history: SlaDesk, capsys: pytest.CaptureFixture[str]
) -> None:
    """maildesk.deadlines records each ticket's business times as they happen (what the
    report reads on a large desk); tickets of a release before it have none, and the
    report computes theirs: the same figures either way."""
    a, b = history.ticket(1), history.ticket(2)
    assert (a.first_response_business, a.resolution_business) == (1800.0, 14400.0)
    assert (b.first_response_business, b.resolution_business) == (4500.0, None)  # pending
    cfg = str(history.config)
    recorded = run_json(capsys, "report", "--config", cfg, "--json")
    with history.desk.db.write() as s:
        s.connection().exec_driver_sql(
            "UPDATE ticket SET first_response_business = NULL, resolution_business = NULL")
    computed = run_json(capsys, "report", "--config", cfg, "--json")
    assert computed == recorded
    assert computed["total"]["first_response_business_seconds"]["median"] == 1800.0
    history.change("2026-11-25 10:00", 2, status="solved", solved_at=at("2026-11-25 10:00"))
    # B, Monday 17:30 to Wednesday 10:00: 30 min + 9 h + 1 h of business time
    assert history.ticket(2).resolution_business == 10.5 * 3600


def test_a_bad_since_is_one_clear_line_and_exit_2(
    history: SlaDesk, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(["report", "--config", str(history.config), "--since", "last week"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err == ("maildesk report: error: argument --since: not an ISO date or time: "
                   "'last week' (e.g. 2026-11-01 or 2026-11-01T09:00) (see --help)\n")


def test_tickets_show_json_has_the_due_times_and_whether_each_was_met(
    history: SlaDesk, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(history.config)
    b = run_json(capsys, "tickets", "show", "2", "--config", cfg, "--json")
    assert b["sla_policy"] == "office" and b["status"] == "pending"
    assert b["first_response_due"] == at("2026-11-24 09:30").isoformat()
    assert (b["first_response_met"], b["first_response_met_at"]) == (
        False, at("2026-11-24 09:45").isoformat())
    assert b["next_response_due"] == at("2026-11-24 12:00").isoformat()
    assert (b["next_response_met"], b["next_response_met_at"]) == (
        False, at("2026-11-24 13:00").isoformat())
    assert (b["resolution_due"], b["resolution_met"]) == (None, None)  # clock stopped
    a = run_json(capsys, "tickets", "show", "1", "--config", cfg, "--json")
    assert (a["first_response_met"], a["resolution_met"]) == (True, True)
    assert a["resolution_met_at"] == at("2026-11-23 14:00").isoformat()
    listed = run_json(capsys, "tickets", "show", "3", "--config", cfg, "--json")
    assert listed["first_response_met"] is False and listed["first_response_met_at"] is None


def test_sla_show_explains_the_due_times(
    history: SlaDesk, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(history.config)
    history.customer("2026-11-25 09:00", frm="b@customer.example", ticket=2)  # B: back open
    shown = run_json(capsys, "sla", "show", "2", "--config", cfg, "--json")
    assert shown["policy"]["name"] == "office"
    assert shown["policy"]["business_hours"] == "Mon-Fri 09:00-18:00"
    waits = [(p["start"], p["end"], p["business_seconds"]) for p in shown["pauses"]]
    assert waits == [
        (at("2026-11-24 09:45").isoformat(), at("2026-11-24 10:00").isoformat(), 900),
        (at("2026-11-24 13:00").isoformat(), at("2026-11-25 09:00").isoformat(), 18000)]
    resolution = next(t for t in shown["targets"] if t["target"] == "resolution")
    # 24h of business time from Monday 17:30: 4h15 ran until the second wait, 19h45 are
    # left from Wednesday 09:00 (9h, 9h, then 1h45 on Friday)
    assert resolution["due"] == at("2026-11-27 10:45").isoformat()
    assert resolution["paused_business_seconds"] == 900 + 18000
    assert resolution["stored_due"] == resolution["due"]
    assert main(["sla", "show", "2", "--config", cfg]) == 0
    text = capsys.readouterr().out
    assert "policy office (matches any)" in text
    assert "business hours Mon-Fri 09:00-18:00 in Europe/Madrid" in text
    assert ("resolution: 1d of business time from 2026-11-23 17:30 CET, plus 5h15m stopped "
            "while waiting: due 2026-11-27 10:45 CET, breached") in text
    assert "first response: 1h of business time from 2026-11-23 17:30 CET: due " \
           "2026-11-24 09:30 CET, met 2026-11-24 09:45 CET (late)" in text
    assert "waited on the customer 2026-11-24 13:00 CET to 2026-11-25 09:00 CET: 5h of " \
           "business time" in text
    assert main(["sla", "show", "99", "--config", cfg]) == 1


def test_sla_recompute_applies_a_changed_policy_to_open_tickets(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    d = SlaDesk.open(tmp_path, db_url)
    try:
        t = d.customer("2026-11-30 10:00")
        solved = d.customer("2026-11-30 10:00", frm="other@customer.example", subject="Other")
        d.change("2026-11-30 10:10", solved, status="solved", solved_at=at("2026-11-30 10:10"))
        assert d.ticket(t).first_response_due == at("2026-11-30 11:00")
        d.config.write_text(d.config.read_text().replace('first_response = "1h"',
                                                         'first_response = "2h"'))
        before = run_json(capsys, "sla", "show", str(t), "--config", str(d.config), "--json")
        [first] = [x for x in before["targets"] if x["target"] == "first_response"]
        assert first["due"] != first["stored_due"]  # sla show says the config changed
        assert run_json(capsys, "sla", "recompute", "--config", str(d.config), "--json") == {
            "changed": 1}  # the solved one keeps its due times
        assert d.ticket(t).first_response_due == at("2026-11-30 12:00")
        assert d.ticket(t).sla_next_at == at("2026-11-30 11:45")
    finally:
        d.close()
