"""Agents by mail (SPEC §2.4) through the real pipeline, on SQLite and PostgreSQL: the
notification, the agent's reply with commands, the relay to the customer, and every way
an agent's mail must not reach the customer (forgeries, notes, bad commands, OOO)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk import addresses
from maildesk.domain import EntryKind, Priority, Status
from tests.agent_helpers import (
    ALICE,
    BOB,
    answer,
    notification,
    open_desk,
    parsed,
    quoted,
    rows,
    text_of,
)
from tests.helpers import SECRET, Desk, message


@pytest.fixture
def desk(tmp_path: Path, db_url: str) -> Iterator[Desk]:
    d = open_desk(tmp_path, db_url)
    yield d
    d.db.dispose()


def new_ticket(desk: Desk, msgid: str = "<c1@customer.example>", **kwargs: object) -> int:
    kwargs.setdefault("references", [f"<older-{msgid.strip('<>')}>"])
    out = desk.ingest(message(msgid=msgid, **kwargs))  # type: ignore[arg-type]
    assert out.ticket_id is not None
    return out.ticket_id


def test_the_notification_carries_the_agents_own_address_and_the_new_text(desk: Desk) -> None:
    tid = new_ticket(desk, body="The printer is on fire.\n\n> an older quote\n")
    for agent in (ALICE, BOB):
        note = notification(desk, agent)
        assert note["Reply-To"] == addresses.agent_reply_address(
            "support@example.com", SECRET, tid, agent)
        assert note["From"] == "Test Desk <support@example.com>"
        assert note["To"] == agent and f"[MD#{tid}]" in note["Subject"]
        body = text_of(note)
        assert "The printer is on fire." in body and "an older quote" not in body
        assert "Status new, priority normal, queue general, assignee none" in body
        assert "#status open|pending|solved|closed" in body and "#note" in body
    # one agent never sees another's address
    assert notification(desk, ALICE)["Reply-To"] != notification(desk, BOB)["Reply-To"]


def test_an_agents_reply_runs_its_commands_and_reaches_the_customer_once(desk: Desk) -> None:
    tid = new_ticket(desk)
    note = notification(desk)
    out = answer(desk, note, "#status solved\n#priority high\n#tags printer Fire\n\n"
                             "Hi Carol,\n\nunplug it first.\n\nBest regards,\nAlice\n\n"
                             + quoted(note))
    assert out.ticket_id == tid
    ticket = desk.ticket(tid)
    assert (ticket.status, ticket.priority, ticket.tags) == (
        Status.SOLVED, Priority.HIGH, ["printer", "fire"])
    assert ticket.assignee == ALICE  # an unassigned ticket goes to who answered it
    [relay] = rows(desk, template="agent_reply")
    msg = parsed(relay)
    assert relay.recipients == "carol@customer.example" and not relay.automatic
    assert msg["To"] == "carol@customer.example"
    assert msg["From"] == "Test Desk <support@example.com>"
    assert msg["Reply-To"] == addresses.reply_address("support@example.com", SECRET, tid)
    assert msg["Subject"] == f"Re: Printer on fire [MD#{tid}]"
    assert msg["Auto-Submitted"] is None and msg["X-Auto-Response-Suppress"] is None
    assert msg["In-Reply-To"] == "<c1@customer.example>"
    assert msg["References"].split() == ["<older-c1@customer.example>",
                                         "<c1@customer.example>"]
    text = text_of(msg)
    assert text.startswith("Hi Carol,\n\nunplug it first.\n\nBest regards,\nAlice\n")
    assert "#" not in text.replace(f"[MD#{tid}]", "") and "printer is on fire" not in text
    token = addresses.agent_token(SECRET, tid, ALICE)
    assert ALICE not in relay.raw.decode() and token not in relay.raw.decode()
    kinds = [(e.kind, e.verified, e.body) for e in desk.entries(tid)]
    assert kinds[1] == (EntryKind.AGENT_REPLY, True,
                        "Hi Carol,\n\nunplug it first.\n\nBest regards,\nAlice")
    assert kinds[2][0] is EntryKind.SYSTEM and "status solved; priority high" in kinds[2][2]


def test_the_same_reply_delivered_again_is_relayed_once(desk: Desk) -> None:
    new_ticket(desk)
    raw_reply = message(frm=ALICE, to=notification(desk)["Reply-To"], subject="Re: x",
                        msgid="<once@agents.example.com>", body="Unplug it.")
    to = (notification(desk)["Reply-To"],)
    assert desk.ingest(raw_reply, envelope_to=to).state.value == "processed"
    assert desk.ingest(raw_reply, envelope_to=to).state.value == "duplicate"
    assert len(rows(desk, template="agent_reply")) == 1


@pytest.mark.parametrize("how", ["desk address", "customer address", "token of another ticket",
                                 "another agent's address"])
def test_forged_agent_mail_is_an_unverified_note_and_changes_nothing(
    desk: Desk, how: str
) -> None:
    tid = new_ticket(desk)
    other = new_ticket(desk, "<d1@customer.example>", frm="dora@customer.example",
                       subject="Other")
    token_of_other = addresses.agent_token(SECRET, other, ALICE)
    to = {
        "desk address": "support@example.com",
        "customer address": addresses.reply_address("support@example.com", SECRET, tid),
        "token of another ticket": f"support+{tid}-{token_of_other}@example.com",
        "another agent's address": addresses.agent_reply_address(
            "support@example.com", SECRET, tid, BOB),
    }[how]
    before = len(rows(desk))
    out = desk.ingest(message(frm=f"Alice <{ALICE}>", to=to, subject=f"Re: [MD#{tid}] Printer",
                              body="#status closed\n#priority urgent\nAll done, bye."),
                      envelope_to=(to,))
    assert out.ticket_id == tid
    ticket = desk.ticket(tid)
    assert (ticket.status, ticket.priority, ticket.assignee) == (
        Status.NEW, Priority.NORMAL, None)
    entry = desk.entries(tid)[-1]
    assert (entry.kind, entry.verified) == (EntryKind.NOTE, False)
    assert "#status closed" in entry.body  # kept as written: it ran nothing
    assert len(rows(desk)) == before  # nothing relayed, nothing answered
    with desk.db.read() as s:
        from maildesk.store.tables import TicketRow
        row = s.get(TicketRow, tid)
        assert row is not None and row.first_response_at is None


def test_dkim_from_a_trusted_server_verifies_mail_to_the_plain_desk_address(desk: Desk) -> None:
    tid = new_ticket(desk)
    desk.ingest(message(frm=ALICE, subject=f"Re: [MD#{tid}] Printer", body="#priority low\nOK",
                        headers={"Authentication-Results": "mx.example.com; dkim=pass "
                                                           "header.d=agents.example.com"}))
    assert desk.ticket(tid).priority is Priority.LOW
    assert len(rows(desk, template="agent_reply")) == 1


def test_note_never_reaches_the_customer_and_changes_no_status(desk: Desk) -> None:
    tid = new_ticket(desk)
    answer(desk, notification(desk), "#note\nCalled her, the printer is a fire hazard.\n\n"
                                     + quoted(notification(desk)))
    assert rows(desk, template="agent_reply") == []
    entry = desk.entries(tid)[-1]
    assert (entry.kind, entry.verified, entry.body) == (
        EntryKind.NOTE, True, "Called her, the printer is a fire hazard.")
    ticket = desk.ticket(tid)
    assert ticket.status is Status.NEW and ticket.assignee is None


def test_a_bad_command_changes_nothing_and_the_agent_is_told_which_line(desk: Desk) -> None:
    tid = new_ticket(desk)
    note = notification(desk)
    answer(desk, note, "#status solved\n#frobnicate now\n#priority high\nUnplug it.\n")
    ticket = desk.ticket(tid)
    assert (ticket.status, ticket.priority, ticket.assignee) == (
        Status.NEW, Priority.NORMAL, None)
    assert rows(desk, template="agent_reply") == []
    [error] = rows(desk, template="command_error")
    msg = parsed(error)
    assert error.recipients == ALICE and msg["Reply-To"] == note["Reply-To"]
    body = text_of(msg)
    assert "#frobnicate now" in body and "unknown command #frobnicate" in body
    assert "Unplug it." in body  # their text, to send again
    entry = desk.entries(tid)[-1]
    assert (entry.kind, entry.verified) == (EntryKind.NOTE, True)
    # fixed and sent again to the same address: it goes through
    answer(desk, msg, "#status solved\n#priority high\nUnplug it.\n\n" + quoted(msg))
    assert desk.ticket(tid).status is Status.SOLVED
    [relay] = rows(desk, template="agent_reply")
    assert text_of(parsed(relay)).startswith("Unplug it.\n")


def test_an_agents_out_of_office_is_a_note_and_never_relayed(desk: Desk) -> None:
    tid = new_ticket(desk)
    before = len(rows(desk))
    answer(desk, notification(desk), "I am out of office until Monday.",
           headers={"Auto-Submitted": "auto-replied"})
    entry = desk.entries(tid)[-1]
    assert entry.kind is EntryKind.NOTE and "out of office" in entry.body
    assert len(rows(desk)) == before
    assert desk.ticket(tid).status is Status.NEW


def test_html_only_reply_reads_its_commands_from_the_first_block(desk: Desk) -> None:
    tid = new_ticket(desk)
    note = notification(desk)
    html = ("<html><body><div dir='ltr'><div>#status solved</div><div>#tags hw</div>"
            "<div><br></div><div>Hi Carol, unplug it &amp; wait.</div><div><br></div>"
            "<div>Thanks,</div><div>Alice</div></div><br><div class='gmail_quote'>"
            "<div class='gmail_attr'>On Mon, 1 Dec 2026, Test Desk &lt;support@example.com&gt;"
            " wrote:<br></div><blockquote class='gmail_quote'>"
            f"{text_of(note).replace(chr(10), '<br>')}</blockquote></div></body></html>")
    answer(desk, note, "", html=html)
    ticket = desk.ticket(tid)
    assert ticket.status is Status.SOLVED and ticket.tags == ["hw"]
    [relay] = rows(desk, template="agent_reply")
    text = text_of(parsed(relay))
    assert text.startswith("Hi Carol, unplug it & wait.\n\nThanks,\nAlice\n")
    assert "#status" not in text and "printer is on fire" not in text


def test_the_agents_attachments_go_with_the_relay_under_safe_names(desk: Desk) -> None:
    new_ticket(desk)
    answer(desk, notification(desk), "The manual is attached.",
           attachments=(("../../etc/Bedienungsanleitung ü.pdf", b"%PDF-1.4 manual"),))
    [relay] = rows(desk, template="agent_reply")
    [part] = list(parsed(relay).iter_attachments())
    assert part.get_filename() == "Bedienungsanleitung ü.pdf"
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == b"%PDF-1.4 manual"


def test_relays_go_to_reply_to_and_ccs_never_to_agents_or_desks(desk: Desk) -> None:
    tid = new_ticket(desk, frm="Carol <carol@customer.example>",
                     headers={"Reply-To": "carol.private@customer.example"},
                     cc=f"dave@customer.example, {ALICE}, billing@example.com")
    assert desk.ticket(tid).cc == ["dave@customer.example"]
    assert len([r for r in rows(desk) if r.recipients == ALICE]) == 1  # one notification
    answer(desk, notification(desk), "Unplug it.")
    [relay] = rows(desk, template="agent_reply")
    msg = parsed(relay)
    assert msg["To"] == "carol.private@customer.example" and msg["Cc"] == "dave@customer.example"
    assert relay.recipients == "carol.private@customer.example,dave@customer.example"


def test_suppressed_customers_get_no_relay(desk: Desk) -> None:
    from datetime import UTC, datetime

    from maildesk.store import outbox

    tid = new_ticket(desk)
    with desk.db.write() as s:
        outbox.suppress(s, "carol@customer.example", "bounced", datetime.now(UTC))
    answer(desk, notification(desk), "Unplug it.")
    assert rows(desk, template="agent_reply") == []
    assert desk.entries(tid)[1].kind is EntryKind.AGENT_REPLY


def test_the_customers_answer_to_a_relay_reopens_and_notifies_the_assignee(desk: Desk) -> None:
    tid = new_ticket(desk)
    answer(desk, notification(desk), "#status solved\nUnplug it.")
    relay = parsed(rows(desk, template="agent_reply")[0])
    before = {r.id for r in rows(desk)}
    out = desk.ingest(message(to=relay["Reply-To"], subject="Re: " + relay["Subject"],
                              in_reply_to=relay["Message-ID"], body="Still burning!"),
                      envelope_to=(relay["Reply-To"],))
    assert out.ticket_id == tid and desk.ticket(tid).status is Status.OPEN
    new = [r for r in rows(desk) if r.id not in before]
    assert [(r.template, r.recipients) for r in new] == [("customer_reply_agent", ALICE)]
    assert "Still burning!" in text_of(parsed(new[0]))


def test_agent_mail_on_a_closed_ticket_stays_on_it_and_is_refused(desk: Desk) -> None:
    tid = new_ticket(desk)
    note = notification(desk)
    answer(desk, note, "#status closed\nClosing.")
    assert desk.ticket(tid).status is Status.CLOSED
    count = len(desk.tickets())
    answer(desk, note, "One more thing: unplug it.")
    assert len(desk.tickets()) == count  # no new ticket with the agent as requester
    assert desk.entries(tid)[-1].kind is EntryKind.NOTE
    [error] = rows(desk, template="command_error")
    assert f"ticket #{tid} is closed" in text_of(parsed(error))
    assert len(rows(desk, template="agent_reply")) == 1  # the first one only
