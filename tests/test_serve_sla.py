"""Service levels end to end: a real `maildesk serve` with second-scale targets and a
one-second scheduler, mail over SMTP, the Maildir outbox observed with deadlines."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.helpers import SECRET
from tests.test_serve import Daemon, free_port, message, processed, wait_for

ALICE, LEAD = "alice@agents.example.com", "lead@agents.example.com"
SLA = """
[[rules]]
name = "all to alice"
[rules.then]
assignee = "alice@agents.example.com"

[[sla]]
name = "fast"
first_response = "8s"
remind_before = "4s"
business_hours = "Mon-Sun 00:00-24:00"
escalate_to = ["lead@agents.example.com"]
auto_close_after = "3s"

[scheduler]
interval = "1s"
digest_at = "{digest_at}"

[metrics]
listen = "127.0.0.1:{metrics}"
"""


def about(mails: list[EmailMessage], ticket: int, what: str) -> list[EmailMessage]:
    return [m for m in mails if f"[MD#{ticket}]" in m["Subject"] and what in m["Subject"]]


def test_reminders_breaches_auto_close_and_digest_in_a_running_daemon(tmp_path: Path) -> None:
    # desk.timezone: a fixed zone where it is about noon now, so no day ends during the test
    offset = 12 - datetime.now(UTC).hour
    zone = ZoneInfo(f"Etc/GMT{-offset:+d}")
    digest_at = datetime.now(zone) + timedelta(seconds=12)
    metrics = free_port()
    d = Daemon(tmp_path, SLA.format(digest_at=f"{digest_at:%H:%M:%S}", metrics=metrics))
    d.config.write_text(d.config.read_text().replace(
        f'secret = "{SECRET}"', f'secret = "{SECRET}"\ntimezone = "{zone.key}"'))
    try:
        d.start()
        desk = d.desk()
        # the unanswered ticket
        assert d.send(message(frm="una@customer.example", subject="Unanswered",
                              msgid="<una@customer.example>"))[0] == 250
        unanswered = wait_for("ticket 1", lambda: processed(desk, "una@customer.example"))
        # the answered ticket: the agent replies to the notification at once
        assert d.send(message(frm="ans@customer.example", subject="Answered",
                              msgid="<ans@customer.example>"),
                      mail_from="ans@customer.example")[0] == 250
        answered = wait_for("ticket 2", lambda: processed(desk, "ans@customer.example"))
        [note] = wait_for("the notification", lambda: about(d.mails_to(ALICE), answered, "New"))
        reply = message(frm=ALICE, to=note["Reply-To"], subject="Re: " + note["Subject"],
                        msgid="<alice-1@agents.example.com>", in_reply_to=note["Message-ID"],
                        body="We are on it.\n")
        assert d.send(reply, mail_from=ALICE, rcpt=note["Reply-To"])[0] == 250
        wait_for("the agent reply", lambda: processed(desk, "alice-1@agents.example.com"))

        [reminder] = wait_for("the reminder", lambda: about(d.mails_to(ALICE), unanswered,
                                                            "Due soon"))
        wait_for("the breach to the lead", lambda: about(d.mails_to(LEAD), unanswered,
                                                         "SLA breached"))
        [breach] = about(d.mails_to(ALICE), unanswered, "SLA breached")
        assert reminder["Auto-Submitted"] == breach["Auto-Submitted"] == "auto-generated"
        assert parsedate_to_datetime(breach["Date"]) > parsedate_to_datetime(reminder["Date"])
        # the answered ticket: auto-closed from pending, the customer told once, no breach
        [solved] = wait_for("the solved mail", lambda: [
            m for m in d.mails_to("ans@customer.example") if m["Subject"].startswith("Solved")])
        assert solved["Subject"] == f"Solved: Answered [MD#{answered}]"
        assert desk.ticket(answered).status.value == "solved"
        assert about(d.mails_to(ALICE) + d.mails_to(LEAD), answered, "SLA breached") == []
        # the digest, at digest_at (local time in desk.timezone)
        [digest] = wait_for("the digest", lambda: [m for m in d.mails_to(ALICE)
                                                   if m["Subject"].startswith("Your open")],
                            timeout=30)
        assert parsedate_to_datetime(digest["Date"]) >= digest_at.replace(microsecond=0)
        assert f"[MD#{unanswered}] Unanswered" in digest.get_content()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "maildesk_sla_breaches_total 1.0" in text
        assert "maildesk_sla_auto_closed_total 1.0" in text
        assert "maildesk_sla_reminders_total" in text

        # a restart sends nothing again: a new ticket's reminder proves the scheduler ran
        assert d.stop() == 0
        desk.db.dispose()
        d.start()
        desk = d.desk()
        assert d.send(message(frm="new@customer.example", subject="After restart",
                              msgid="<new@customer.example>"))[0] == 250
        later = wait_for("ticket 3", lambda: processed(desk, "new@customer.example"))
        wait_for("its reminder", lambda: about(d.mails_to(ALICE), later, "Due soon"))
        alice, lead = d.mails_to(ALICE), d.mails_to(LEAD)
        assert len(about(alice, unanswered, "Due soon")) == 1
        assert len(about(alice, unanswered, "SLA breached")) == 1
        assert len(about(lead, unanswered, "SLA breached")) == 1
        assert len([m for m in alice if m["Subject"].startswith("Your open")]) == 1
        # the ack, the agent's relayed reply and the solved mail
        assert len(d.mails_to("ans@customer.example")) == 3
        desk.db.dispose()
        assert d.stop() == 0
    finally:
        d.kill()
