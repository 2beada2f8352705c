"""classify(): which mail is machine-written, which is bulk (SPEC §2.3, §2.6)."""

from __future__ import annotations

import pytest

from maildesk.classify import classify
from maildesk.domain import ParsedMail
from maildesk.parse import parse_message

DESK = ["support@example.com", "billing@example.com"]


def mail(headers: str = "", sender: str = "Customer <customer@example.org>",
         body: str = "My printer is on fire.\n") -> ParsedMail:
    raw = (f"From: {sender}\nTo: support@example.com\nSubject: Help\n"
           f"Message-ID: <1@example.org>\n{headers}\n{body}")
    return parse_message(raw.encode())


def test_a_customer_mail_is_neither_automatic_nor_bulk() -> None:
    result = classify(mail(), "customer@example.org", DESK)
    assert (result.automatic, result.bulk, result.bounce) == (None, None, False)
    assert result.no_auto_reply is None


@pytest.mark.parametrize(("header", "reason"), [
    ("Auto-Submitted: auto-replied", "Auto-Submitted: auto-replied"),
    ("Auto-Submitted: Auto-Generated; owner-email=x@example.org",
     "Auto-Submitted: auto-generated"),
    ("X-Autoreply: yes", "X-Autoreply present"),
    ("X-Autorespond: on", "X-Autorespond present"),
    ("Precedence: auto_reply", "Precedence: auto_reply"),
    ("X-Loop: support@example.com", "X-Loop: ours"),
    ("X-Loop: <Billing@Example.com> (maildesk)", "X-Loop: ours"),
])
def test_machine_written_headers(header: str, reason: str) -> None:
    result = classify(mail(header + "\n"), "robot@example.org", DESK)
    assert result.automatic == reason
    assert not result.bounce


@pytest.mark.parametrize("header", [
    "Auto-Submitted: no", "Auto-Submitted: No ; note", "X-Loop: other-desk@example.net",
])
def test_headers_that_do_not_make_mail_automatic(header: str) -> None:
    assert classify(mail(header + "\n"), "customer@example.org", DESK).automatic is None


def test_the_empty_envelope_sender() -> None:
    assert classify(mail(), "", DESK).automatic == "empty envelope sender"
    assert classify(mail(), "<>", DESK).automatic == "empty envelope sender"


def test_return_path_stands_in_for_an_unknown_envelope() -> None:
    null = mail("Return-Path: <>\n")
    assert classify(null, None, DESK).automatic == "Return-Path: <>"
    assert classify(null, "customer@example.org", DESK).automatic is None  # envelope known
    assert classify(mail("Return-Path: <a@example.org>\n"), None, DESK).automatic is None


@pytest.mark.parametrize("sender", [
    "Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>",
    "postmaster@example.net",
    "MAILER-DAEMON",
])
def test_daemon_senders_are_automatic(sender: str) -> None:
    result = classify(mail(sender=sender), "x@example.net", DESK)
    assert result.automatic is not None and result.automatic.startswith("sender ")


def test_a_daemon_envelope_sender_is_automatic() -> None:
    result = classify(mail(), "MAILER-DAEMON@mx.example.net", DESK)
    assert result.automatic == "sender mailer-daemon@mx.example.net"


@pytest.mark.parametrize(("header", "reason"), [
    ("Precedence: bulk", "Precedence: bulk"),
    ("Precedence: List", "Precedence: list"),
    ("Precedence: junk", "Precedence: junk"),
    ("List-Id: Users <users.lists.example.org>", "List-Id present"),
])
def test_bulk_mail_is_people_written_but_never_answered(header: str, reason: str) -> None:
    result = classify(mail(header + "\n"), "list-bounces@example.org", DESK)
    assert (result.automatic, result.bulk) == (None, reason)
    assert result.no_auto_reply == reason


@pytest.mark.parametrize("sender", [
    "noreply@example.org", "no-reply@example.org", "No_Reply+123@example.org",
    "do-not-reply@example.org", "donotreply@example.org", "noreply-billing@example.org",
])
def test_no_reply_senders_get_no_auto_reply(sender: str) -> None:
    result = classify(mail(sender=sender), sender, DESK)
    assert result.automatic is None
    assert result.bulk == f"no-reply sender {sender.lower()}"


@pytest.mark.parametrize("sender", ["noreplyfan@example.org", "renoreply@example.org"])
def test_names_that_only_contain_noreply_are_people(sender: str) -> None:
    assert classify(mail(sender=sender), sender, DESK).no_auto_reply is None


def test_a_delivery_status_notification_is_a_bounce() -> None:
    raw = ("Content-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\n\n"
           "--r\nContent-Type: text/plain\n\nYour mail failed.\n"
           "--r\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
           "Final-Recipient: rfc822; gone@example.net\nAction: failed\nStatus: 5.1.1\n"
           "--r\nContent-Type: text/rfc822-headers\n\nMessage-ID: <out-7@example.com>\n"
           "--r--\n")
    bounce = mail(raw, sender="Mail Delivery System <MAILER-DAEMON@mx.example.net>", body="")
    result = classify(bounce, "", DESK)
    assert (result.automatic, result.bounce) == ("delivery status notification", True)
    assert bounce.dsn is not None and bounce.dsn.original_message_id == "out-7@example.com"
    assert bounce.dsn.statuses[0].is_hard_bounce


def test_an_unreadable_report_is_still_a_bounce() -> None:
    raw = "Content-Type: multipart/report; report-type=\"delivery-status\"; boundary=x\n"
    result = classify(mail(raw, body="no parts at all\n"), "", DESK)
    assert result.bounce and result.automatic == "delivery status notification"


def test_other_reports_are_automatic_but_no_bounce() -> None:
    raw = ("Content-Type: multipart/report; report-type=disposition-notification; "
           "boundary=\"r\"\n\n--r\nContent-Type: text/plain\n\nRead.\n--r--\n")
    result = classify(mail(raw, body=""), "customer@example.org", DESK)
    assert result.automatic == "multipart/report (disposition-notification)"
    assert not result.bounce


def test_reasons_are_one_line() -> None:
    result = classify(mail("Auto-Submitted: auto-replied\nPrecedence: bulk\n"), "", DESK)
    for reason in (result.automatic, result.bulk):
        assert reason and "\n" not in reason and len(reason) < 100
