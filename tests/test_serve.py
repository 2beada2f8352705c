"""`maildesk serve` end to end: a real daemon process, a real SMTP client (smtplib), its
SQLite database and its Maildir outbox, observed by polling with deadlines."""

from __future__ import annotations

import email
import email.policy
import json
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import pytest

from maildesk.store import inbox
from maildesk.store.tables import SuppressionRow
from tests.helpers import REPO, Desk, write_config
from tests.helpers import message as lf_message
from tests.test_outbound import dsn

T = TypeVar("T")


def message(**kwargs: object) -> bytes:
    return lf_message(**kwargs).replace(b"\n", b"\r\n")  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 10) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Daemon:
    """One `maildesk serve` process on its own ports, database and Maildir."""

    def __init__(self, folder: Path, extra: str = "", smtp: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.config = write_config(folder, f"sqlite:///{folder}/maildesk.db", extra)
        self.config.write_text(self.config.read_text().replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{self.port}"\n{smtp}'))
        self.maildir = folder / "outbox" / "new"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maildesk.cli", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        wait_for("the SMTP listener", self._listening, timeout=30)

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return (self.folder / "daemon.log").read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def kill(self) -> None:
        """Teardown after a failed test: no daemon outlives it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def send(self, raw: bytes, *, mail_from: str = "carol@customer.example",
             rcpt: str = "support@example.com") -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo("client.example")
            smtp.mail(mail_from)
            code, text = smtp.rcpt(rcpt)
            if code != 250:
                return code, text
            return smtp.data(raw)

    def delivered(self) -> list[tuple[bytes, EmailMessage]]:
        """Every message in the Maildir, oldest first, raw and parsed."""
        found = []
        for path in sorted(self.maildir.glob("*"), key=lambda p: int(p.name.split(".")[0])):
            raw = path.read_bytes()
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            found.append((raw, msg))
        return found

    def mails_to(self, address: str) -> list[EmailMessage]:
        return [msg for _, msg in self.delivered() if msg["To"] == address]

    def desk(self) -> Desk:
        return Desk.open(self.config)


def running(d: Daemon) -> Iterator[Daemon]:
    """For a fixture: `d` started, then stopped cleanly (exit 0) or killed."""
    try:
        d.start()
        yield d
        assert d.stop() == 0
    finally:
        d.kill()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("serve"), smtp="max_message_size = 100000")
    d.config.write_text(d.config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    yield from running(d)


def processed(desk: Desk, message_id: str) -> int | None:
    """The ticket of a processed inbox message with this Message-ID."""
    for item in inbox.list_items(desk.db, limit=1000):
        if item.message_id == message_id and item.state.value != "queued":
            return item.ticket_id or -1
    return None


def test_new_mail_gets_a_ticket_and_an_ack_with_the_right_headers(daemon: Daemon) -> None:
    raw = message(frm="Erin <erin@customer.example>", subject="Cannot print",
                  msgid="<e1@customer.example>")
    code, _ = daemon.send(raw)
    accepted = time.monotonic()
    assert code == 250
    [ack] = wait_for("the ack", lambda: daemon.mails_to("erin@customer.example"))
    assert time.monotonic() - accepted < 1.0  # processed right after the commit
    desk = daemon.desk()
    ticket = processed(desk, "e1@customer.example")
    assert ticket and ticket > 0
    assert ack["From"] == "Test Desk <support@example.com>"
    assert ack["Subject"] == f"Re: Cannot print [MD#{ticket}]"
    assert ack["In-Reply-To"] == "<e1@customer.example>"
    assert ack["Auto-Submitted"] == "auto-replied" and ack["X-Loop"] == "support@example.com"
    assert ack["Reply-To"].startswith(f"support+{ticket}-")
    assert ack["Message-ID"].endswith("@example.com>") and ack["Thread-Index"]
    assert ack["Return-Path"].startswith("<bounces+")
    # the customer answers the ack from their mail client: it threads
    reply = message(frm="erin@customer.example", to=ack["Reply-To"],
                    subject="Re: " + ack["Subject"], msgid="<e2@customer.example>",
                    in_reply_to=ack["Message-ID"],
                    references=[ack["References"], ack["Message-ID"]])
    assert daemon.send(reply, rcpt=ack["Reply-To"])[0] == 250
    assert wait_for("the reply", lambda: processed(desk, "e2@customer.example")) == ticket
    assert len(desk.entries(ticket)) == 2
    assert len(daemon.mails_to("erin@customer.example")) == 1  # no second ack
    desk.db.dispose()


def test_foreign_recipients_and_oversize_mail_are_refused(daemon: Daemon) -> None:
    code, text = daemon.send(message(), rcpt="someone@elsewhere.example")
    assert code == 550 and b"relay" in text
    code, _ = daemon.send(message(body="x" * 70 + "\n" + ("y" * 76 + "\n") * 2000))
    assert code == 552


def test_automatic_mail_gets_no_ack(daemon: Daemon) -> None:
    raw = message(frm="robot@customer.example", msgid="<auto1@customer.example>",
                  headers={"Auto-Submitted": "auto-replied"})
    assert daemon.send(raw)[0] == 250
    desk = daemon.desk()
    wait_for("the auto-reply", lambda: processed(desk, "auto1@customer.example"))
    [item] = [i for i in inbox.list_items(desk.db) if i.message_id == "auto1@customer.example"]
    assert item.state.value == "ignored" and "Auto-Submitted" in (item.reason or "")
    assert daemon.mails_to("robot@customer.example") == []
    desk.db.dispose()


def test_the_sixth_message_within_an_hour_gets_no_ack(daemon: Daemon) -> None:
    desk = daemon.desk()
    for n in range(6):
        raw = message(frm="frank@customer.example", subject=f"issue {n}",
                      msgid=f"<f{n}@customer.example>")
        assert daemon.send(raw)[0] == 250
        wait_for(f"message {n}", lambda n=n: processed(desk, f"f{n}@customer.example"))
    assert len({processed(desk, f"f{n}@customer.example") for n in range(6)}) == 6
    time.sleep(0.3)  # let the sender write whatever it was going to write
    assert len(daemon.mails_to("frank@customer.example")) == 5
    desk.db.dispose()


def test_a_bounce_lands_on_the_ticket_and_suppresses_the_address(daemon: Daemon) -> None:
    first = message(frm="gina@customer.example", msgid="<g1@customer.example>")
    assert daemon.send(first)[0] == 250
    [ack] = wait_for("the ack", lambda: daemon.mails_to("gina@customer.example"))
    verp = ack["Return-Path"].strip("<>")
    report = dsn(to_verp=verp, failed="gina@customer.example",
                 original_id=ack["Message-ID"].strip("<>"), msgid="dsn-gina@mx.customer.example")
    assert daemon.send(report.replace(b"\n", b"\r\n"), mail_from="<>", rcpt=verp)[0] == 250
    desk = daemon.desk()
    ticket = processed(desk, "g1@customer.example")
    assert wait_for("the report", lambda: processed(desk, "dsn-gina@mx.customer.example")) == ticket
    assert ticket is not None and desk.entries(ticket)[-1].kind.value == "system"
    with desk.db.read() as s:
        assert s.get(SuppressionRow, "gina@customer.example") is not None
    # gina writes again: a ticket, but no mail goes back to a dead address
    assert daemon.send(message(frm="gina@customer.example", subject="other",
                               msgid="<g2@customer.example>"))[0] == 250
    wait_for("the second message", lambda: processed(desk, "g2@customer.example"))
    time.sleep(0.3)
    assert len(daemon.mails_to("gina@customer.example")) == 1
    desk.db.dispose()


def test_ingest_queue_is_processed_by_the_running_daemon(daemon: Daemon) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "maildesk.cli", "ingest", "--queue", "--json", "--config",
         str(daemon.config), "--recipient", "support@example.com", "-"],
        input=message(frm="hank@customer.example", msgid="<h1@customer.example>"),
        capture_output=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "queued"
    [ack] = wait_for("the ack", lambda: daemon.mails_to("hank@customer.example"), timeout=10)
    assert ack["In-Reply-To"] == "<h1@customer.example>"


def test_metrics_and_health(daemon: Daemon) -> None:
    daemon.send(message(frm="mia@customer.example", msgid="<metrics1@customer.example>"))
    wait_for("the ack", lambda: daemon.mails_to("mia@customer.example"))
    listen = daemon.config.read_text().split('[metrics]\nlisten = "')[1].split('"')[0]
    with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"ok\n"
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'maildesk_messages_received_total{source="smtp"}' in text
    assert "maildesk_outbox_backlog" in text and "maildesk_processing_latency_seconds" in text
    assert "maildesk_followups_waiting 0.0" in text  # the ack of the message went out
    assert 'maildesk_tickets{status="new"}' in text  # filled from the database at scrape time


def test_sighup_reloads_templates_and_rules(own_daemon: Daemon) -> None:
    d = own_daemon
    d.start()
    try:
        d.send(message(frm="ivy@customer.example", msgid="<i1@customer.example>"))
        [first] = wait_for("the ack", lambda: d.mails_to("ivy@customer.example"))
        assert first["From"] == "Test Desk <support@example.com>"
        d.config.write_text(d.config.read_text().replace('name = "Test Desk"',
                                                         'name = "Renamed Desk"'))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        wait_for("the reload", lambda: "reloaded" in d.log())
        d.send(message(frm="jay@customer.example", msgid="<j1@customer.example>"))
        [second] = wait_for("the ack", lambda: d.mails_to("jay@customer.example"))
        assert second["From"] == "Renamed Desk <support@example.com>"
        d.config.write_text(d.config.read_text() + "\n[bogus]\n")  # a broken config: no change
        d.proc.send_signal(signal.SIGHUP)
        wait_for("the refusal", lambda: "not reloaded" in d.log())
        assert d.send(message(frm="kim@customer.example"))[0] == 250
    finally:
        assert d.stop() == 0


def test_sigterm_in_flight_loses_no_accepted_message(own_daemon: Daemon) -> None:
    d = own_daemon
    d.start()
    accepted: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as smtp:
                smtp.ehlo("client.example")
                for n in range(200):
                    msgid = f"s{k}-{n}@customer.example"
                    smtp.mail(f"c{k}@customer.example")
                    smtp.rcpt("support@example.com")
                    if smtp.data(message(frm=f"c{k}@customer.example", subject=f"load {k} {n}",
                                         msgid=f"<{msgid}>"))[0] != 250:
                        return
                    with lock:
                        accepted.append(msgid)
        except (smtplib.SMTPException, OSError):
            return  # the daemon went away mid-session: the client retries later

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_for("some accepted messages", lambda: len(accepted) >= 40, timeout=30)
    assert d.stop() == 0
    for t in threads:
        t.join(30)
    assert 40 <= len(accepted) < 800
    d.start()
    try:
        desk = d.desk()

        def all_done() -> bool:
            done = {i.message_id for i in inbox.list_items(desk.db, limit=2000)
                    if i.state.value == "processed" and i.ticket_id}
            return done >= set(accepted)

        wait_for("every accepted message as a ticket", all_done, timeout=30)
        assert len(desk.tickets()) == len(accepted)
        desk.db.dispose()
    finally:
        assert d.stop() == 0


def test_message_leased_by_a_killed_daemon_is_processed_at_restart(own_daemon: Daemon) -> None:
    """kill -9 mid-batch leaves the batch leased; the next start takes it back at once."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from maildesk.domain import Source
    from maildesk.identity import content_hash, header_message_id
    from maildesk.store import inbox
    from maildesk.store.tables import InboxRow

    desk = own_daemon.desk()
    raw = message(frm="leo@customer.example", msgid="<leased@customer.example>")
    inbox_id = inbox.add(desk.db, inbox.new_row(
        raw, source=Source.SMTP, message_id=header_message_id(raw), content_hash=content_hash(raw)))
    with desk.db.write() as s:  # as a worker that died mid-batch leaves it
        s.connection().execute(update(InboxRow).where(InboxRow.id == inbox_id).values(
            claimed_until=datetime.now(UTC) + timedelta(minutes=5)))
    own_daemon.start()

    def ticket() -> int | None:
        item = inbox.get(desk.db, inbox_id)
        return item.ticket_id if item else None

    wait_for("the ticket", ticket, timeout=10)  # the lease alone would hold it for 5 minutes
