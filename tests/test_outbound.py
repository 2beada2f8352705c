"""Outgoing mail through the real pipeline and a real database: the ack and its headers,
loop safety (SPEC §2.6), bounces and suppression, and both transports against real
targets (a Maildir on disk, an aiosmtpd smarthost on loopback)."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import col, select

from maildesk import addresses
from maildesk.cli import main
from maildesk.config import load_settings
from maildesk.domain import EntryKind, ThreadRule
from maildesk.outbound.render import Rendered, Templates, header_text
from maildesk.outbound.sender import Sender, backoff, gives_up
from maildesk.outbound.transports import MaildirTransport, make_transport
from maildesk.store import outbox
from maildesk.store.outbox import OutboxItem
from maildesk.store.tables import OutboxRow, SuppressionRow
from tests.helpers import SECRET, Desk, message, thread_index, write_config


@pytest.fixture
def desk(config_path: Path) -> Iterator[Desk]:
    d = Desk.open(config_path)
    yield d
    d.db.dispose()


def rows(desk: Desk, **where: object) -> list[OutboxRow]:
    with desk.db.read() as s:
        found = s.exec(select(OutboxRow).order_by(col(OutboxRow.id))).all()
    return [r for r in found if all(getattr(r, k) == v for k, v in where.items())]


def parsed(row: OutboxRow) -> EmailMessage:
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def dsn(*, to_verp: str, failed: str, original_id: str, status: str = "5.1.1",
        msgid: str = "dsn-1@mx.customer.example") -> bytes:
    """A delivery status notification (RFC 3464) as an MTA writes it."""
    report = (f"Reporting-MTA: dns; mx.customer.example\n\nFinal-Recipient: rfc822; {failed}\n"
              f"Action: failed\nStatus: {status}\n")
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\n"
        f"To: {to_verp}\nSubject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: <{msgid}>\nAuto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
        f"--B\nContent-Type: message/delivery-status\n\n{report}\n"
        f"--B\nContent-Type: text/rfc822-headers\n\nMessage-ID: <{original_id}>\n"
        f"To: {failed}\n\n--B--\n"
    ).encode()


# --- the acknowledgement -------------------------------------------------------------


def test_ack_carries_threading_and_loop_headers(desk: Desk) -> None:
    root = bytes(range(22))
    out = desk.ingest(message(
        frm="Carol Customer <carol@customer.example>", msgid="<c1@customer.example>",
        references=["<older@customer.example>"],
        headers={"Thread-Index": thread_index(root)}, subject="Printer on fire"))
    assert out.ticket_id is not None
    [ack] = rows(desk, template="ack")
    msg = parsed(ack)
    assert msg["From"].addresses[0].addr_spec == "support@example.com"
    assert msg["From"].addresses[0].display_name == "Test Desk"
    assert msg["To"] == "carol@customer.example"
    assert msg["Reply-To"] == addresses.reply_address("support@example.com", SECRET, out.ticket_id)
    assert f"[MD#{out.ticket_id}]" in msg["Subject"] and "Printer on fire" in msg["Subject"]
    assert msg["Message-ID"] == f"<{ack.message_id}>" and ack.message_id.endswith("@example.com")
    assert msg["In-Reply-To"] == "<c1@customer.example>"
    assert msg["References"].split() == ["<older@customer.example>", "<c1@customer.example>"]
    assert msg["Thread-Topic"] == "Printer on fire"
    index = base64.b64decode(msg["Thread-Index"])
    assert index[:22] == root and len(index) == 27  # the customer's conversation, one reply on
    assert msg["Auto-Submitted"] == "auto-replied" and msg["X-Loop"] == "support@example.com"
    assert addresses.outbox_from_bounce_address(ack.envelope_from, "support@example.com",
                                                SECRET) == ack.id
    assert ack.automatic and ack.recipients == "carol@customer.example"
    # the queue's agents (all of them by default) hear of the new ticket
    notes = rows(desk, template="new_ticket_agent")
    assert sorted(r.recipients for r in notes) == ["alice@agents.example.com",
                                                   "bob@agents.example.com"]
    assert all(parsed(r)["Auto-Submitted"] == "auto-generated" for r in notes)
    assert not any(r.automatic for r in notes)


def test_reply_naming_only_our_ack_threads_onto_the_ticket(desk: Desk) -> None:
    first = desk.ingest(message(msgid="<t1@customer.example>", subject="VPN"))
    [ack] = rows(desk, template="ack")
    reply = desk.ingest(message(
        msgid="<t2@customer.example>", subject="Something else entirely",
        in_reply_to=f"<{ack.message_id}>", frm="other@elsewhere.example"))
    assert reply.ticket_id == first.ticket_id
    assert desk.entries(reply.ticket_id)[-1].thread_rule == ThreadRule.REFERENCES
    assert len(rows(desk, template="ack")) == 1  # replies get no new ack
    assert len(rows(desk, template="customer_reply_agent")) == 2


def test_reply_to_the_reply_address_threads_by_token(desk: Desk) -> None:
    first = desk.ingest(message(msgid="<r1@customer.example>"))
    [ack] = rows(desk, template="ack")
    reply_to = parsed(ack)["Reply-To"]
    second = desk.ingest(message(msgid="<r2@customer.example>", to=reply_to, subject="new words"),
                         envelope_to=(reply_to,))
    assert second.ticket_id == first.ticket_id


@pytest.mark.parametrize("headers, frm, envelope_from", [
    ({"Auto-Submitted": "auto-replied"}, "carol@customer.example", None),
    ({"Precedence": "bulk"}, "carol@customer.example", None),
    ({"List-Id": "<news.customer.example>"}, "carol@customer.example", None),
    ({}, "noreply@customer.example", None),
    ({}, "carol@customer.example", ""),
    ({"X-Loop": "support@example.com"}, "carol@customer.example", None),
])
def test_no_ack_for_mail_that_must_not_be_answered(
    desk: Desk, headers: dict[str, str], frm: str, envelope_from: str | None
) -> None:
    desk.ingest(message(frm=frm, headers=headers), envelope_from=envelope_from)
    assert rows(desk, template="ack") == []


def test_at_most_five_automatic_replies_per_address_and_hour(desk: Desk) -> None:
    for n in range(6):
        out = desk.ingest(message(subject=f"question {n}", msgid=f"<q{n}@customer.example>"))
        assert out.ticket_id is not None
    assert len(desk.tickets()) == 6
    assert len(rows(desk, template="ack")) == 5
    # another address is not affected
    desk.ingest(message(frm="dan@customer.example", subject="mine"))
    assert len(rows(desk, template="ack")) == 6


def test_the_hourly_cap_counts_a_mailbox_whatever_its_plus_address(desk: Desk) -> None:
    """Another help desk answers from a reply address per ticket (help+7-...@): those are
    one mailbox, and a ping-pong with it stops at the cap (found by bench/abuse.py)."""
    for n in range(7):
        reply_to = "help@desk.example" if n == 0 else f"Help+{n}-tok{n}@desk.example"
        desk.ingest(message(frm="Other Desk <help@desk.example>", subject=f"answer {n}",
                            msgid=f"<p{n}@desk.example>", headers={"Reply-To": reply_to}))
    acks = rows(desk, template="ack")
    assert len(acks) == 5 and [a.recipients for a in acks][:2] == [
        "help@desk.example", "help+1-tok1@desk.example"]


def test_header_injection_and_html_escaping(desk: Desk) -> None:
    raw = (b'From: "<script>x</script>" <carol@customer.example>\r\n'
           b"To: support@example.com\r\nMessage-ID: <inj@customer.example>\r\n"
           b"Subject: =?utf-8?q?Hello=0D=0ABcc:_victim@evil.example?=\r\n\r\nhi\r\n")
    desk.ingest(raw)
    [ack] = rows(desk, template="ack")
    head = ack.raw.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in head and b"\nBcc" not in head
    msg = parsed(ack)
    assert msg["Bcc"] is None and "Bcc: victim" in msg["Subject"]
    html = msg.get_body(("html",))
    assert html is not None
    assert "<script>" not in html.get_content() and "&lt;script&gt;" in html.get_content()


def test_render_safety_helpers(tmp_path: Path) -> None:
    assert header_text("a\r\nB: c\x00d\u2028e") == "a B: c d e"
    (tmp_path / "x.txt").write_text("Subject: Hi {{ name }}\n\nbody {{ name }}\n")
    (tmp_path / "x.html").write_text("<p>{{ name }}</p>")
    (tmp_path / "broken.txt").write_text("{% if %}")
    templates = Templates(tmp_path)
    assert templates.render("x", {"name": "<b>&"}) == Rendered(
        "Hi <b>&", "body <b>&\n", "<p>&lt;b&gt;&amp;</p>")
    problems = templates.check(["x", "broken", "missing"])
    assert len(problems) == 2 and "broken" in problems[0] and "missing" in problems[1]


# --- bounces and suppression ---------------------------------------------------------


def test_dsn_lands_on_the_ticket_and_suppresses_the_address(desk: Desk) -> None:
    first = desk.ingest(message(frm="gone@customer.example", msgid="<g1@customer.example>"))
    [ack] = rows(desk, template="ack")
    report = desk.ingest(dsn(to_verp=ack.envelope_from, failed="gone@customer.example",
                             original_id=ack.message_id),
                         envelope_from="", envelope_to=(ack.envelope_from,))
    assert report.ticket_id == first.ticket_id
    entries = desk.entries(first.ticket_id)
    assert entries[-1].kind is EntryKind.SYSTEM
    with desk.db.read() as s:
        suppressed = s.get(SuppressionRow, "gone@customer.example")
    assert suppressed is not None and "5.1.1" in suppressed.reason
    [bounced] = rows(desk, id=ack.id)
    assert bounced.state == "bounced"
    assert len(rows(desk)) == 3  # the report itself is never answered (ack + 2 agent notes)
    # later mail from the address opens a ticket, but nothing goes back to it
    desk.ingest(message(frm="gone@customer.example", subject="again"))
    assert len(rows(desk, template="ack")) == 1


def test_a_forged_report_cannot_suppress_a_stranger(desk: Desk) -> None:
    desk.ingest(message(frm="carol@customer.example"))
    [ack] = rows(desk, template="ack")
    desk.ingest(dsn(to_verp=ack.envelope_from, failed="ceo@bigcorp.example",
                    original_id=ack.message_id), envelope_from="",
                envelope_to=(ack.envelope_from,))
    with desk.db.read() as s:
        assert s.get(SuppressionRow, "ceo@bigcorp.example") is None
    wrong_token = ack.envelope_from.replace("-", "-x", 1)
    out = desk.ingest(dsn(to_verp=wrong_token, failed="carol@customer.example",
                          original_id="unknown@elsewhere.example", msgid="dsn-2@x.example"),
                      envelope_from="", envelope_to=(wrong_token,))
    assert out.ticket_id is None  # an automatic message that joins nothing: ignored
    with desk.db.read() as s:
        assert s.get(SuppressionRow, "carol@customer.example") is None


def test_rules_reply_template_and_notify(tmp_path: Path, db_url: str) -> None:
    cfg = write_config(tmp_path, db_url, extra="""
[[rules]]
name = "vip"
[rules.when]
from = { contains = "@vip.example" }
[rules.then]
reply_template = "solved"
notify = ["lead@agents.example.com"]
""")
    desk = Desk.open(cfg)
    try:
        desk.ingest(message(frm="boss@vip.example"))
        assert [r.template for r in rows(desk) if r.automatic] == ["solved"]  # instead of ack
        notified = sorted(r.recipients for r in rows(desk, template="new_ticket_agent"))
        assert notified == ["alice@agents.example.com", "bob@agents.example.com",
                            "lead@agents.example.com"]
    finally:
        desk.db.dispose()


# --- transports and the sender -------------------------------------------------------


def test_maildir_delivery_is_idempotent(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path / "md")
    raw = b"Subject: x\r\n\r\nbody\r\n"
    assert transport.send(7, "bounces+7-abc@example.com", ["a@b.example"], raw) is None
    assert list((tmp_path / "md" / "new").iterdir()) == []  # delivered once synced
    assert transport.send(7, "bounces+7-abc@example.com", ["a@b.example"], raw) is not None
    transport.sync()
    assert transport.send(7, "bounces+7-abc@example.com", ["a@b.example"], raw) is not None
    [path] = list((tmp_path / "md" / "new").iterdir())
    assert path.read_bytes() == b"Return-Path: <bounces+7-abc@example.com>\nSubject: x\n\nbody\n"
    assert list((tmp_path / "md" / "tmp").iterdir()) == []
    # a mail client read it: the file is in cur/ now, with its flags
    path.rename(tmp_path / "md" / "cur" / f"{path.name}:2,S")
    assert transport.send(7, "bounces+7-abc@example.com", ["a@b.example"], raw,
                          maybe_sent=True) == "already in the Maildir"
    assert list((tmp_path / "md" / "new").iterdir()) == []


def test_maildir_delivers_a_batch_when_it_is_synced(tmp_path: Path) -> None:
    transport = MaildirTransport(tmp_path / "md")
    for i in range(20):
        raw = f"Subject: {i}\r\n\r\nbody\r\n".encode()
        assert transport.send(i, f"bounces+{i}@example.com", ["a@b.example"], raw) is None
    assert list((tmp_path / "md" / "new").iterdir()) == []
    transport.sync()  # the sender records the batch as sent after this
    new = sorted((tmp_path / "md" / "new").iterdir(), key=lambda f: int(f.name.split(".")[0]))
    assert [f.read_bytes().split(b"\n")[1] for f in new] == [
        f"Subject: {i}".encode() for i in range(20)]
    transport.send(99, "bounces+99@example.com", ["a@b.example"], b"Subject: x\r\n\r\n")
    transport.close()  # never synced: not delivered (the row is sent again later)
    assert len(list((tmp_path / "md" / "new").iterdir())) == 20
    assert list((tmp_path / "md" / "tmp").iterdir()) == []


def test_a_row_whose_lease_ran_out_is_delivered_once(tmp_path: Path) -> None:
    from maildesk.store import outbox

    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/o.db"))
    desk.ingest(message(msgid="<lease@customer.example>"))  # an ack and an agent notification
    t0 = datetime.now(UTC)
    first = outbox.claim_due(desk.db, now=t0)[0]
    assert not first.reclaimed
    transport = MaildirTransport(tmp_path / "outbox")
    assert transport.send(first.item.id, first.item.envelope_from, first.item.recipients,
                          first.raw, maybe_sent=first.reclaimed) is None
    transport.sync()
    [delivered] = list((tmp_path / "outbox" / "new").iterdir())
    delivered.rename(tmp_path / "outbox" / "cur" / f"{delivered.name}:2,S")
    # the sender died before recording it; after the lease, another claim gets it again
    assert outbox.claim_due(desk.db, now=t0) == []
    again = outbox.claim_due(desk.db, now=t0 + outbox.LEASE + timedelta(seconds=1))[0]
    assert again.item.id == first.item.id and again.reclaimed
    assert transport.send(again.item.id, again.item.envelope_from, again.item.recipients,
                          again.raw, maybe_sent=again.reclaimed) == "already in the Maildir"
    assert list((tmp_path / "outbox" / "new").iterdir()) == []
    desk.db.dispose()


def test_backoff_schedule() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 7, 8, 20)] == [
        60, 120, 240, 3600, 3600, 3600]
    assert not gives_up(5, timedelta(days=2)) and gives_up(60, timedelta(days=2))
    assert gives_up(1, timedelta(seconds=30))


class Smarthost:
    """An aiosmtpd capture server whose answer to RCPT the test sets."""

    def __init__(self) -> None:
        self.answer = "250 OK"
        self.received: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: object, session: object, envelope: object,
                          address: str, options: list[str]) -> str:
        if self.answer.startswith("250"):
            envelope.rcpt_tos.append(address)  # type: ignore[attr-defined]
        return self.answer

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.lock:
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos),  # type: ignore
                                  envelope.original_content))  # type: ignore[attr-defined]
        return "250 OK"


def running_smarthost() -> Iterator[tuple[Smarthost, int]]:
    """For a fixture (`yield from`): a capturing SMTP server on a free port, stopped after."""
    handler = Smarthost()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def smarthost() -> Iterator[tuple[Smarthost, int]]:
    yield from running_smarthost()


def test_smtp_transport_delivers_retries_4xx_and_fails_on_5xx(
    tmp_path: Path, db_url: str, smarthost: tuple[Smarthost, int]
) -> None:
    handler, port = smarthost
    cfg = write_config(tmp_path, db_url)
    cfg.write_text(cfg.read_text().replace(
        'transport = "maildir"', f'transport = "smtp"\nhost = "127.0.0.1"\nport = {port}'))
    desk = Desk.open(cfg)
    settings = load_settings(cfg)
    sender = Sender(desk.db, lambda: make_transport(settings.outbound),
                    max_retry=settings.outbound.max_retry)
    try:
        desk.ingest(message(frm="carol@customer.example", subject="first"))
        now = datetime.now(UTC)
        handler.answer = "451 4.3.0 try again later"
        result = sender.drain(now)
        assert (result.sent, result.retried, result.failed) == (0, 3, 0)
        [ack] = [i for i in outbox.list_items(desk.db) if i.template == "ack"]
        assert ack.state == "pending" and ack.attempts == 1 and "451" in (ack.last_error or "")
        assert ack.next_attempt_at is not None and ack.next_attempt_at > now
        assert sender.drain(now).sent == 0  # not due yet
        handler.answer = "250 OK"
        assert sender.drain(now + timedelta(minutes=2)).sent == 3
        [(mail_from, rcpts, raw)] = [r for r in handler.received
                                     if r[1] == ["carol@customer.example"]]
        assert mail_from == _item(desk, "ack").envelope_from and b"Auto-Submitted" in raw
        assert _item(desk, "ack").state == "sent"
        # a permanent refusal: failed at once, listed, and retried on request
        desk.ingest(message(frm="nobody@customer.example", subject="second"))
        now = datetime.now(UTC)
        handler.answer = "550 5.1.1 no such user"
        assert sender.drain(now).failed == 3
        failed = [i for i in outbox.list_items(desk.db, state="failed")]
        assert {i.recipients[0] for i in failed} >= {"nobody@customer.example"}
        assert all("550" in (i.last_error or "") for i in failed)
        assert sender.drain(now + timedelta(days=1)).sent == 0  # failed stays failed
        handler.answer = "250 OK"
        assert main(["outbox", "retry", str(failed[0].id), "--config", str(cfg)]) == 0
        assert sender.drain().sent == 1
    finally:
        desk.db.dispose()


def _item(desk: Desk, template: str) -> OutboxItem:
    [item] = [i for i in outbox.list_items(desk.db) if i.template == template
              and i.recipients == ("carol@customer.example",)]
    return item


def test_outbox_cli_lists_states(
    config_path: Path, desk: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    desk.ingest(message())
    capsys.readouterr()
    assert main(["outbox", "list", "--config", str(config_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(i["template"] for i in listed) == ["ack", "new_ticket_agent",
                                                     "new_ticket_agent"]
    assert {i["state"] for i in listed} == {"pending"}
    assert main(["outbox", "list", "--config", str(config_path)]) == 0
    assert "ack" in capsys.readouterr().out
    assert main(["outbox", "retry", "999", "--config", str(config_path)]) == 1
