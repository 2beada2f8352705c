"""Headers first (pipeline.py): a message is threaded and stored from its header block,
and its follow-up (body, attachments, outgoing mail) comes after, durably.

The real pipeline and reactors on SQLite and PostgreSQL; what is checked is what a user
sees: the ticket, its entries and attachments, and the rows of the outbox."""

from __future__ import annotations

import email.policy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from maildesk.cli import main
from maildesk.domain import Source
from maildesk.identity import content_hash, header_message_id
from maildesk.outbound.react import OutboundReactor
from maildesk.pipeline import Pipeline
from maildesk.store import deferred, inbox
from maildesk.store.raw import raw
from maildesk.worker import Worker
from tests.helpers import Desk, message, write_config
from tests.test_outbound import parsed, rows
from tests.test_threading import ExplodingReactor


@pytest.fixture
def desk(config_path: Path) -> Iterator[Desk]:
    d = Desk.open(config_path)
    yield d
    d.db.dispose()


def _queued(desk: Desk, *raws: bytes, envelope_from: str | None = None) -> list[int]:
    return inbox.add_many(desk.db, [inbox.new_row(
        r, source=Source.SMTP, message_id=header_message_id(r), content_hash=content_hash(r),
        envelope_from=envelope_from, envelope_to=("support@example.com",)) for r in raws])


def _with_attachment(body: str = "The invoice is attached.\n\n> old quoted text\n") -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "Carol <carol@customer.example>"
    msg["To"] = "support@example.com"
    msg["Subject"] = "Invoice 42"
    msg["Message-ID"] = "<inv42@customer.example>"
    msg.set_content(body)
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                       filename="invoice.pdf")
    return msg.as_bytes()


def _shown(config_path: Path, ticket_id: int, capsys: pytest.CaptureFixture[str]
           ) -> dict[str, Any]:
    assert main(["tickets", "show", str(ticket_id), "--json", "--config", str(config_path)]) == 0
    [entry] = json.loads(capsys.readouterr().out)["entries"]
    assert isinstance(entry, dict)
    return entry


def test_ticket_first_then_body_attachments_and_mail(
        desk: Desk, config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [i] = _queued(desk, _with_attachment())
    [outcome] = desk.pipeline.process_batch([i])
    assert outcome.state.value == "processed" and outcome.ticket_id is not None
    ticket = desk.ticket(outcome.ticket_id)
    assert ticket.subject == "Invoice 42" and ticket.requester == "carol@customer.example"
    entry = _shown(config_path, outcome.ticket_id, capsys)
    assert entry["message_id"] == "inv42@customer.example"
    assert entry["thread_rule"] == "new_ticket"
    assert entry["pending"] and entry["body"] == "" and entry["attachments"] == []  # not read yet
    assert rows(desk) == [] and deferred.count(desk.db) == 1

    assert desk.pipeline.follow_up() == 1
    entry = _shown(config_path, outcome.ticket_id, capsys)
    assert not entry["pending"]
    assert entry["body"] == "The invoice is attached."  # the quote stripped, as always
    assert entry["attachments"] == [
        {"filename": "invoice.pdf", "content_type": "application/pdf", "size": 13}]
    [ack] = rows(desk, template="ack")
    assert parsed(ack)["In-Reply-To"] == "<inv42@customer.example>"
    assert f"[MD#{outcome.ticket_id}]" in parsed(ack)["Subject"]
    assert len(rows(desk, template="new_ticket_agent")) == 2
    assert deferred.count(desk.db) == 0
    assert desk.pipeline.follow_up() == 0  # done once: nothing is sent twice


def test_a_reply_stored_before_its_follow_up_is_still_threaded_and_answered_once(
        desk: Desk) -> None:
    first, reply = _queued(desk, message(msgid="<a1@customer.example>", subject="VPN"),
                           message(msgid="<a2@customer.example>", subject="Re: VPN",
                                   in_reply_to="<a1@customer.example>", body="Still down.\n"))
    outcomes = desk.pipeline.process_batch([first, reply])
    assert outcomes[0].ticket_id == outcomes[1].ticket_id
    assert desk.pipeline.follow_up() == 2
    assert len(rows(desk, template="ack")) == 1  # the new ticket's, not the reply's
    assert len(rows(desk, template="customer_reply_agent")) == 2
    assert [e.body for e in desk.entries(outcomes[0].ticket_id or 0)] == [
        "Hello,\nthe printer is on fire.", "Still down."]


def test_mail_whose_handling_needs_the_body_is_read_whole_at_once(desk: Desk) -> None:
    customer = desk.ingest(message(msgid="<b1@customer.example>"))
    before = len(rows(desk))
    # unverified agent mail (commands are read from the body) and an auto-reply
    note, auto = _queued(
        desk,
        message(frm="alice@agents.example.com", subject=f"Re: [MD#{customer.ticket_id}] x",
                body="Looking into it.\n", msgid="<n1@agents.example.com>"),
        message(subject="Out of office", in_reply_to="<b1@customer.example>",
                headers={"Auto-Submitted": "auto-replied"}, body="Back Monday.\n"))
    desk.pipeline.process_batch([note, auto])
    assert deferred.count(desk.db) == 0
    bodies = [e.body for e in desk.entries(customer.ticket_id or 0)]
    assert bodies[1:] == ["Looking into it.", "Back Monday."]
    assert len(rows(desk)) == before  # neither is answered


def test_rules_on_the_body_see_it_before_the_ticket_is_stored(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/r.db", """
[[rules]]
name = "fire"
[rules.when]
body = { contains = ["on fire"] }
[rules.then]
priority = "urgent"
"""))
    [i] = _queued(desk, message())
    [outcome] = desk.pipeline.process_batch([i])
    assert desk.ticket(outcome.ticket_id or 0).priority.value == "urgent"
    assert deferred.count(desk.db) == 0 and len(rows(desk, template="ack")) == 1
    desk.db.dispose()


def test_a_follow_up_that_raises_keeps_its_entry_and_spares_the_others(desk: Desk) -> None:
    raws = [message(frm=f"u{n}@customer.example", subject=f"case {n}", body=f"Case {n}.\n",
                    msgid=f"<{'boom' if n == 1 else f'ok{n}'}@customer.example>")
            for n in range(3)]
    pipeline = Pipeline(desk.settings, desk.db,
                        [ExplodingReactor(), OutboundReactor(desk.settings)])
    outcomes = pipeline.process_batch(_queued(desk, *raws))
    assert pipeline.follow_up() == 3
    assert deferred.count(desk.db) == 0
    for n, outcome in enumerate(outcomes):
        [entry] = desk.entries(outcome.ticket_id or 0)
        assert entry.body == f"Case {n}."
    acked = sorted(r.recipients for r in rows(desk, template="ack"))
    assert acked == ["u0@customer.example", "u2@customer.example"]


def test_a_follow_up_left_by_a_crash_runs_after_the_restart(desk: Desk,
                                                            config_path: Path) -> None:
    [i] = _queued(desk, _with_attachment())
    [outcome] = desk.pipeline.process_batch([i])
    desk.db.dispose()  # the daemon dies here: ticket committed, follow-up not done

    again = Desk.open(config_path)
    try:
        worker = Worker(again.db, again.pipeline, yield_to=lambda quiet: False)
        assert worker.run_until_empty() == 0  # no new message; the follow-up still runs
        [entry] = again.entries(outcome.ticket_id or 0)
        assert entry.body == "The invoice is attached." and len(entry.attachments) == 1
        assert len(rows(again, template="ack")) == 1
    finally:
        again.db.dispose()


def test_follow_ups_wait_for_new_mail_but_not_for_ever(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/w.db"))
    try:
        worker = Worker(desk.db, desk.pipeline, batch=1, catch_up=1, backlog=1, max_defer=10,
                        yield_to=lambda quiet: False)
        _queued(desk, *[message(msgid=f"<s{n}@customer.example>", subject=f"s{n}")
                        for n in range(4)])
        worker.run_once()
        worker.run_once()  # new mail first: the follow-ups wait
        assert deferred.count(desk.db) == 2
        with desk.db.write() as s:  # as if new mail had kept the worker busy for 11 s
            r = raw(s)
            r.run("UPDATE deferred SET created_at = ?",
                  (r.time(datetime.now(UTC) - timedelta(seconds=11)),))
        worker.run_once()  # the overdue follow-ups go first, then one more new message
        assert deferred.count(desk.db) == 1 and len(rows(desk, template="ack")) == 2
        assert worker.run_until_empty() == 1 and deferred.count(desk.db) == 0
        assert len(rows(desk, template="ack")) == 4
    finally:
        desk.db.dispose()


def test_a_follow_up_of_a_ticket_merged_meanwhile_speaks_of_the_surviving_ticket(
        desk: Desk) -> None:
    a, b, c = _queued(
        desk,
        message(frm="ann@customer.example", msgid="<m1@customer.example>", subject="Login"),
        message(frm="bob@customer.example", msgid="<m2@customer.example>", subject="Login too"),
        message(frm="ann@customer.example", msgid="<m3@customer.example>", subject="Re: Login",
                references=["<m1@customer.example>", "<m2@customer.example>"]))
    first, second, third = desk.pipeline.process_batch([a, b, c])
    assert first.ticket_id != second.ticket_id  # two tickets, then merged by the third
    assert third.ticket_id == first.ticket_id
    assert desk.pipeline.follow_up() == 3
    acks = {r.recipients: parsed(r)["Subject"] for r in rows(desk, template="ack")}
    assert set(acks) == {"ann@customer.example", "bob@customer.example"}
    assert all(f"[MD#{first.ticket_id}]" in subject for subject in acks.values())
    assert not any(f"[MD#{second.ticket_id}]" in parsed(r)["Subject"] for r in rows(desk))
