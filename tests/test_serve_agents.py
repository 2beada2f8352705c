"""An agent works a ticket from their mail client, end to end: a real `maildesk serve`, a
real SMTP client, the Maildir outbox read as the customer's and the agent's mail clients
would read it (SPEC §2.4)."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk import addresses
from maildesk.store import outbox
from tests.agent_helpers import ALICE, BOB, quoted, text_of
from tests.helpers import SECRET
from tests.test_serve import Daemon, message, processed, running, wait_for

ERIN = "erin@customer.example"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "desk")
    yield from running(d)


def all_sent(d: Daemon) -> bool:
    """The daemon is done with everything it took in: no message waits to be processed or
    for its follow-up (body, outgoing mail), and every outgoing mail is sent. (Every
    queued mail sent alone is true too early: before the last message's follow-up has
    queued its mail.)"""
    desk = d.desk()
    try:
        with desk.db.read() as s:
            waiting = s.connection().exec_driver_sql(
                "SELECT (SELECT count(*) FROM inbox WHERE state = 'queued')"
                " + (SELECT count(*) FROM deferred)").scalar()
        items = outbox.list_items(desk.db)
        return not waiting and bool(items) and all(i.state == outbox.SENT for i in items)
    finally:
        desk.db.dispose()


def test_an_agent_answers_from_their_mail_client_and_the_customer_gets_only_that(
    daemon: Daemon,
) -> None:
    d = daemon
    assert d.send(message(frm=f"Erin <{ERIN}>", subject="Printer on fire",
                          msgid="<erin1@customer.example>",
                          references=["<erin0@customer.example>"]), mail_from=ERIN)[0] == 250
    [ack] = wait_for("the ack", lambda: d.mails_to(ERIN))
    [note] = wait_for("alice's notification", lambda: d.mails_to(ALICE))
    desk = d.desk()
    ticket = processed(desk, "erin1@customer.example")
    assert ticket is not None and ticket > 0
    own = note["Reply-To"]
    assert own == addresses.agent_reply_address("support@example.com", SECRET, ticket, ALICE)
    assert own != ack["Reply-To"] and f"[MD#{ticket}]" in note["Subject"]

    reply = EmailMessage()
    reply["From"] = f"Alice Agent <{ALICE}>"
    reply["To"] = own
    reply["Subject"] = "Re: " + note["Subject"]
    reply["Message-ID"] = "<alice1@agents.example.com>"
    reply["In-Reply-To"] = note["Message-ID"]
    reply["References"] = f"{note['References']} {note['Message-ID']}"
    reply.set_content("#status solved\n#priority high\n#tags printer hardware\n\n"
                      "Hi Erin,\n\nunplug it and call the fire brigade.\n\n"
                      "Best regards,\nAlice\n\n" + quoted(note))
    assert d.send(reply.as_bytes().replace(b"\n", b"\r\n"), mail_from=ALICE, rcpt=own)[0] == 250

    wait_for("the relay", lambda: d.mails_to(ERIN)[1:])
    wait_for("every queued message sent", lambda: all_sent(d))
    [(raw, relay)] = [(r, m) for r, m in d.delivered() if m["To"] == ERIN][1:]  # exactly one
    assert relay["From"] == "Test Desk <support@example.com>"
    assert relay["Subject"] == f"Re: Printer on fire [MD#{ticket}]"
    assert relay["Reply-To"] == ack["Reply-To"]  # the customer's own reply address
    assert relay["In-Reply-To"] == "<erin1@customer.example>"
    assert relay["References"].split() == ["<erin0@customer.example>",
                                           "<erin1@customer.example>"]
    assert relay["Auto-Submitted"] is None
    body = text_of(relay)
    assert body.startswith("Hi Erin,\n\nunplug it and call the fire brigade.\n\n"
                           "Best regards,\nAlice\n")
    text = raw.decode("utf-8", "replace").lower()
    token = addresses.agent_token(SECRET, ticket, ALICE)
    assert "#status" not in text and "#priority" not in text and "#tags" not in text
    assert ALICE not in text and token not in text and own.lower() not in text
    assert "printer is on fire" not in text  # neither the notification nor the quote
    view = desk.ticket(ticket)
    assert (view.status.value, view.priority.value, view.tags, view.assignee) == (
        "solved", "high", ["printer", "hardware"], ALICE)
    assert not [m for m in d.mails_to(BOB) if "Re:" in (m["Subject"] or "")]  # no copy

    # Erin answers the relay from her mail client: same ticket, reopened, Alice is told
    answer = message(frm=ERIN, to=relay["Reply-To"], subject="Re: " + relay["Subject"],
                     msgid="<erin2@customer.example>", in_reply_to=relay["Message-ID"],
                     references=[relay["References"], relay["Message-ID"]],
                     body="It is out now, thanks!")
    assert d.send(answer, mail_from=ERIN, rcpt=relay["Reply-To"])[0] == 250
    assert wait_for("the answer", lambda: processed(desk, "erin2@customer.example")) == ticket
    assert desk.ticket(ticket).status.value == "open"
    [told] = wait_for("alice's second notification", lambda: d.mails_to(ALICE)[1:])
    assert "It is out now, thanks!" in text_of(told) and told["Reply-To"] == own
    wait_for("every queued message sent", lambda: all_sent(d))
    assert len(d.mails_to(BOB)) == 1  # the new-ticket notification only: Alice is assignee
    assert len(d.mails_to(ERIN)) == 2  # the ack and the relay; no ack for her answer
    desk.db.dispose()
