"""The scheduler's jobs with a clock the test sets (SPEC §2.7): reminders and breaches once
per due time and to the right people, in business hours, across restarts and racing
scanners; auto-close once; the digest once a day. Real pipeline, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

from maildesk.scheduler import Jobs
from maildesk.store import Database
from maildesk.store import sla as store_sla
from tests.helpers import REPO, Desk, write_config
from tests.sla_desk import OFFICE, SlaDesk, at

ALICE, BOB, LEAD = "alice@agents.example.com", "bob@agents.example.com", "lead@agents.example.com"
CAROL = "carol@customer.example"


def test_one_reminder_and_one_breach_per_due_time_to_the_right_people(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")  # Monday: first response due at 11:00
    assert sd.ticket(t).first_response_due == at("2026-11-30 11:00")
    assert sd.run("2026-11-30 10:44").queued == 0
    # 15 minutes ahead: the queue's agents (no assignee), once
    assert sd.run("2026-11-30 10:45:30").reminders == 1
    assert sd.mail() == [(t, "sla_reminder", ALICE), (t, "sla_reminder", BOB)]
    for when in ("2026-11-30 10:46", "2026-11-30 10:59"):
        assert sd.run(when).queued == 0
    # passed: the agents and the policy's escalate_to, once
    assert sd.run("2026-11-30 11:00:30").breaches == 1
    for when in ("2026-11-30 11:01", "2026-11-30 12:00", "2026-11-30 17:00"):
        assert sd.run(when).queued == 0
    assert sd.mail()[2:] == [(t, "sla_breach", ALICE), (t, "sla_breach", BOB),
                             (t, "sla_breach", LEAD)]
    breach = sd.messages("sla_breach")[-1]
    assert breach["Subject"] == f"[MD#{t}] SLA breached: Help"
    assert breach["Auto-Submitted"] == "auto-generated" and breach["X-Loop"]
    body = breach.get_content()
    assert "missed its first response, due 2026-11-30 11:00 CET" in body
    assert "SLA policy office" in body


def test_an_assigned_ticket_reminds_its_assignee_only(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")
    sd.change("2026-11-30 10:05", t, assignee=BOB)
    sd.run("2026-11-30 10:46")
    sd.run("2026-11-30 11:01")
    assert sd.mail() == [(t, "sla_reminder", BOB), (t, "sla_breach", BOB),
                         (t, "sla_breach", LEAD)]


def test_a_restart_sends_nothing_again(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")
    sd.run("2026-11-30 10:46")
    sd.run("2026-11-30 11:01")
    before = sd.mail()
    again = SlaDesk.reopen(sd.config)
    try:
        for when in ("2026-11-30 10:46", "2026-11-30 11:01", "2026-11-30 11:30"):
            assert again.run(when).queued == 0
        # even when the ticket's pointer to its next event is lost (a stale writer, or
        # a crash of an older version): the keys hold
        with again.desk.db.write() as s:
            ticket = store_sla.due_tickets(s, at("2026-12-31 00:00"), 10)
            s.connection().exec_driver_sql(
                "UPDATE ticket SET sla_next_at = first_response_due - interval '15 minutes'"
                if not again.desk.db.is_sqlite else
                "UPDATE ticket SET sla_next_at = '2026-11-30 09:00:00.000000'")
        assert ticket and ticket[0].id == t
        assert again.run("2026-11-30 11:02").queued == 0
        assert again.mail() == before
    finally:
        again.close()


def test_nothing_for_a_ticket_solved_before_its_due_time(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")
    sd.change("2026-11-30 10:30", t, status="solved", solved_at=at("2026-11-30 10:30"))
    assert sd.ticket(t).sla_next_at is None
    for when in ("2026-11-30 10:46", "2026-11-30 11:01", "2026-12-03 09:00"):
        assert sd.run(when).queued == 0
    assert sd.mail() == []


def test_an_answered_ticket_is_never_escalated_for_its_first_response(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")
    sd.agent_reply("2026-11-30 10:20", t)
    ticket = sd.ticket(t)
    assert ticket.status == "pending" and ticket.first_response_at == at("2026-11-30 10:20")
    assert ticket.resolution_due is None  # waiting on the customer: the clock stands still
    for when in ("2026-11-30 10:46", "2026-11-30 11:01", "2026-12-02 17:00"):
        assert sd.run(when).queued == 0
    assert sd.mail() == []


def test_outside_business_hours_a_normal_ticket_waits_an_urgent_one_does_not(
    sd: SlaDesk
) -> None:
    normal = sd.customer("2026-11-30 16:30", subject="Normal")  # first response due 17:30
    urgent = sd.customer("2026-11-30 16:30", frm="dan@customer.example", subject="Urgent")
    sd.change("2026-11-30 16:31", urgent, priority="urgent")
    # the scheduler was down from 17:00 until 22:00: at night only the urgent one goes
    night = sd.run("2026-11-30 22:00")
    assert night.breaches == 1 and night.reminders == 0  # too late to remind
    assert {m[0] for m in sd.mail()} == {urgent}
    assert sd.run("2026-12-01 03:00").queued == 0
    assert sd.run("2026-12-01 08:59").queued == 0
    # the next business minute: the normal ticket's breach
    assert sd.run("2026-12-01 09:00:20").breaches == 1
    assert [m for m in sd.mail() if m[0] == normal] == [
        (normal, "sla_breach", ALICE), (normal, "sla_breach", BOB), (normal, "sla_breach", LEAD)]
    assert sd.run("2026-12-01 09:01").queued == 0


def test_a_breach_at_closing_time_goes_out_then(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 17:00")  # due 18:00 sharp, the window's end
    assert sd.ticket(t).first_response_due == at("2026-11-30 18:00")
    assert sd.run("2026-11-30 17:46").reminders == 1
    assert sd.run("2026-11-30 18:00:25").breaches == 1


def test_a_due_time_that_moves_is_a_new_due_time(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")
    sd.agent_reply("2026-11-30 10:30", t)  # pending: the clocks stop
    sd.customer("2026-11-30 15:00", ticket=t)  # the customer answers: they run again
    ticket = sd.ticket(t)
    assert ticket.status == "open"
    # next response: 2 business hours from the customer's answer
    assert ticket.next_response_due == at("2026-11-30 17:00")
    # resolution: 24 business hours from 10:00 (Wednesday 16:00 without the wait), plus the
    # 4h30 waited on the customer: 2 hours on Wednesday, 2h30 on Thursday
    assert ticket.resolution_due == at("2026-12-03 11:30")
    sd.run("2026-11-30 16:46")
    sd.run("2026-11-30 17:01")
    # to Alice, whose first reply assigned the ticket to her; the breach to the lead too
    assert [(m[1], m[2]) for m in sd.mail()] == [
        ("sla_reminder", ALICE), ("sla_breach", ALICE), ("sla_breach", LEAD)]
    sd.agent_reply("2026-11-30 17:30", t)  # answered late: one next response breached
    sd.customer("2026-12-01 10:00", ticket=t)  # a new clock, a new due time
    assert sd.ticket(t).next_response_due == at("2026-12-01 12:00")
    sd.run("2026-12-01 11:46")
    assert [(m[1], m[2]) for m in sd.mail()][3:] == [("sla_reminder", ALICE)]
    ticket = sd.ticket(t)
    assert (ticket.next_response_met, ticket.next_response_breached) == (0, 1)
    with sd.desk.db.read() as s:
        keys = sorted((m.target, m.kind, m.due_at) for m in store_sla.sent(s, t))
    assert keys == [("next_response", "breach", at("2026-11-30 17:00")),
                    ("next_response", "reminder", at("2026-11-30 17:00")),
                    ("next_response", "reminder", at("2026-12-01 12:00"))]


def test_auto_close_solves_a_pending_ticket_once(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")
    sd.agent_reply("2026-11-30 10:30", t)
    assert sd.run("2026-12-03 10:29").closed == 0  # 3 days pending at 10:30 on Thursday
    assert sd.run("2026-12-03 10:31").closed == 1
    ticket = sd.ticket(t)
    assert ticket.status == "solved" and ticket.solved_at == at("2026-12-03 10:31")
    assert sd.run("2026-12-03 10:32").closed == 0
    assert SlaDesk.reopen(sd.config).run("2026-12-04 10:00").closed == 0
    assert sd.mail() == [(t, "solved", CAROL)]
    [solved] = sd.messages("solved")
    assert solved["Subject"] == f"Solved: Help [MD#{t}]"
    system = sd.desk.entries(t)[-1]
    assert system.kind.value == "system" and "no answer from the customer for 3 days" in system.body
    # the customer comes back: open again; pending again: a new wait, a new auto-close
    sd.customer("2026-12-07 09:00", ticket=t)
    sd.agent_reply("2026-12-07 09:30", t)
    assert sd.run("2026-12-10 09:31").closed == 1
    assert sd.mail() == [(t, "solved", CAROL), (t, "solved", CAROL)]


def test_auto_close_waits_while_the_customer_keeps_answering(sd: SlaDesk) -> None:
    t = sd.customer("2026-11-30 10:00")
    sd.agent_reply("2026-11-30 10:30", t)
    sd.customer("2026-12-02 10:00", ticket=t)
    assert sd.run("2026-12-03 11:00").closed == 0
    assert sd.ticket(t).status == "open"


def test_the_digest_goes_once_a_day_at_digest_at(tmp_path: Path, db_url: str) -> None:
    rule = '\n[[rules]]\nname = "mine"\n[rules.then]\nassignee = "alice@agents.example.com"\n'
    sd = SlaDesk.open(tmp_path, db_url, OFFICE + '\n[scheduler]\ndigest_at = "08:00"\n' + rule)
    try:
        late = sd.customer("2026-11-30 10:00", subject="Late one")
        soon = sd.customer("2026-12-01 07:50", frm="dan@customer.example", subject="Soon one")
        assert sd.run("2026-12-01 07:59").digests == 0
        assert sd.run("2026-12-01 08:00").digests == 1  # alice; bob has nothing open
        assert sd.run("2026-12-01 08:30").digests == 0
        assert SlaDesk.reopen(sd.config).run("2026-12-01 08:00:30").digests == 0
        [mail] = sd.messages("digest")
        assert mail["To"] == ALICE and mail["Auto-Submitted"] == "auto-generated"
        assert mail["Subject"] == "Your open tickets, 2026-12-01: 2, 1 overdue, 1 due today"
        body = mail.get_content()
        overdue, _, rest = body.partition("Due today:")
        assert f"[MD#{late}] Late one" in overdue and "was due 2026-11-30 11:00 CET" in overdue
        assert f"[MD#{soon}] Soon one" in rest.partition("All your")[0]
        assert sd.run("2026-12-02 08:00").digests == 1  # the next day
    finally:
        sd.close()


SCANNER = """
import sys
from datetime import datetime
from maildesk.app import open_database
from maildesk.config import load_settings
from maildesk.scheduler import Jobs
settings = load_settings(sys.argv[1])
db = open_database(settings, migrate=False)
jobs = Jobs(settings, db)
for when in sys.argv[2:]:
    jobs.run(datetime.fromisoformat(when))
"""

RACE_TIMES = [at(f"2026-11-30 {h}").isoformat() for h in (
    "10:45:10", "10:45:20", "10:46", "10:50", "11:00:10", "11:00:20", "11:01", "11:05")]


def _race_desk(sd: SlaDesk, n: int) -> list[int]:
    return [sd.customer("2026-11-30 10:00", frm=f"c{i}@customer.example", subject=f"case {i}")
            for i in range(n)]


def _expect_once(sd: SlaDesk, ids: list[int]) -> None:
    mail = sd.mail()
    assert len(mail) == len(set(mail))
    assert sorted(mail) == sorted((t, tpl, who) for t in ids for tpl, who in (
        ("sla_reminder", ALICE), ("sla_reminder", BOB),
        ("sla_breach", ALICE), ("sla_breach", BOB), ("sla_breach", LEAD)))


def test_two_scanner_threads_at_once_send_each_mail_once(sd: SlaDesk) -> None:
    ids = _race_desk(sd, 20)
    dbs = [Database(sd.desk.settings.database.url) for _ in range(2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def scanner(db: Database) -> None:
        try:
            jobs = Jobs(sd.desk.settings, db)
            start.wait()
            for when in RACE_TIMES:
                jobs.run(datetime.fromisoformat(when))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=scanner, args=(db,)) for db in dbs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for db in dbs:
        db.dispose()
    assert errors == []
    _expect_once(sd, ids)


def test_two_scanner_processes_at_once_send_each_mail_once(sd: SlaDesk) -> None:
    ids = _race_desk(sd, 20)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", SCANNER, str(sd.config), *RACE_TIMES],
                              cwd=REPO, env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    _expect_once(sd, ids)


def test_the_scan_reads_through_the_index(tmp_path: Path, db_url: str) -> None:
    """The scan's read is one range of ix_ticket_sla_next_at, never the whole table."""
    desk = Desk.open(write_config(tmp_path, db_url, OFFICE))
    try:
        with desk.db.write() as s:
            raw = store_sla.raw(s)
            rows = [(f"t{i}", "", "new", "normal", "general", f"c{i}@customer.example", "",
                     raw.time(at("2026-11-30 10:00")), raw.time(at("2026-11-30 10:00")),
                     raw.time(at("2026-11-30 10:00")), False,
                     raw.time(at("2026-11-30 10:00")) if i % 50 == 0 else None, 0, 0)
                    for i in range(5000)]
            raw.many("INSERT INTO ticket (subject, subject_key, status, priority, queue,"
                     " requester, tags, created_at, updated_at, last_activity_at, agent_touched,"
                     " sla_next_at, next_response_met, next_response_breached)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        with desk.db.write() as s:
            if not desk.db.is_sqlite:
                s.connection().exec_driver_sql("ANALYZE ticket")
            plan = store_sla.scan_plan(s, at("2026-11-30 11:00"))
        assert "ix_ticket_sla_next_at" in plan, plan
        assert "SCAN ticket" not in plan and "Seq Scan" not in plan, plan
    finally:
        desk.db.dispose()


def test_two_transactions_taking_one_key_get_it_once(sd: SlaDesk) -> None:
    """The key alone, without the processing lock: a second transaction that takes the same
    key while the first is still open waits for its commit, then finds it taken."""
    t = sd.customer("2026-11-30 10:00")
    due = at("2026-11-30 11:00")
    other = Database(sd.desk.settings.database.url)
    got: list[bool] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait(10)
        with other.write() as s:
            got.append(store_sla.claim(s, ticket_id=t, target="first_response", due_at=due,
                                       kind="breach", recipients=[ALICE], now=due))

    thread = threading.Thread(target=second)
    thread.start()
    with sd.desk.db.write() as s:
        got.append(store_sla.claim(s, ticket_id=t, target="first_response", due_at=due,
                                   kind="breach", recipients=[ALICE], now=due))
        first_in.set()
        thread.join(0.5)  # the second one is waiting for us
        assert thread.is_alive()
    thread.join(30)
    other.dispose()
    assert got == [True, False]
    with sd.desk.db.write() as s:  # a key of another due time is another key
        assert store_sla.claim(s, ticket_id=t, target="first_response", kind="breach",
                               due_at=due + timedelta(minutes=1), recipients=[], now=due)
