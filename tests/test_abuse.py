"""Abuse against a running daemon (issue 13, short forms; bench/abuse.py has the long
ones): open-relay probes, stolen reply tokens, header injection into outgoing mail, hostile
attachment names, recipient and connection floods, slow clients. A real `maildesk serve`,
a real SMTP client (smtplib and raw sockets), the outgoing mail read from its Maildir."""

from __future__ import annotations

import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import select

from maildesk import addresses
from maildesk.store import inbox
from maildesk.store.tables import InboxRow, OutboxRow
from tests.agent_helpers import ALICE, BOB
from tests.helpers import SECRET
from tests.test_serve import Daemon, free_port, message, processed, running, wait_for
from tests.test_serve_agents import all_sent

DESK = "support@example.com"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("abuse"))
    yield from running(d)


# --- open relay ------------------------------------------------------------------------------

ACCEPTED = [
    "support@example.com", "Support@EXAMPLE.com", "billing@example.com",
    "<@relay.example:support@example.com>",  # a source route: ignored (RFC 5321 §3.6.1)
    '"support"@example.com',  # the same mailbox, quoted
    "support+42-abcdefgh@example.com",  # a reply address, even with a bad token
    # RFC 5321 §4.5.1: postmaster at the desk's domains, and the bare form
    "postmaster@example.com", "POSTMASTER@Example.Com", "postmaster",
]
REFUSED = [
    "victim@evil.example", "support@example.org", "someone@example.com",
    "<@example.com:victim@evil.example>", "<@a.example,@example.com:victim@evil.example>",
    "support%evil.example@example.com", "victim%evil.example@example.com",
    '"victim@evil.example"@example.com', '"support@evil.example"@example.com',
    "evil.example!victim@example.com", "victim@evil.example@example.com",
    "support@example.com@evil.example", "support@[127.0.0.1]", "postmaster@evil.example",
    "bounces@example.com", "support\x00@evil.example",
]


def test_open_relay_probes_are_refused_and_nothing_is_relayed(daemon: Daemon) -> None:
    d = daemon
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as smtp:
        smtp.ehlo("probe.example")
        smtp.mail("mallory@evil.example")
        codes = {a: smtp.docmd(f"RCPT TO:<{a}>" if not a.startswith("<") else f"RCPT TO:{a}")
                 for a in (*ACCEPTED, *REFUSED)}
        code, _ = smtp.data(message(frm="Mallory <mallory@evil.example>", to="victim@evil.example",
                                    cc="support%evil.example@example.com",
                                    msgid="<relay1@evil.example>", subject="relay test"))
    assert code == 250
    wrong = {a: c for a, c in codes.items() if (c[0] == 250) != (a in ACCEPTED)}
    assert not wrong, wrong
    assert all(codes[a][0] in (550, 553) for a in REFUSED)
    desk = d.desk()
    ticket = wait_for("the probe", lambda: processed(desk, "relay1@evil.example"))
    assert ticket > 0  # postmaster's mail, like the desk's, is a ticket a person reads
    [item] = [i for i in inbox.list_items(desk.db) if i.message_id == "relay1@evil.example"]
    wait_for("its mail", lambda: all_sent(d))
    with desk.db.read() as s:
        row = s.get(InboxRow, item.id)
        assert row is not None
        stored = row.envelope_to.split(",")
        sent = [r.recipients for r in s.exec(select(OutboxRow)).all() if r.ticket_id == ticket]
    desk.db.dispose()
    assert set(stored) == {"support@example.com", "billing@example.com", "postmaster",
                           "support+42-abcdefgh@example.com", "postmaster@example.com"}
    assert sorted(sent) == sorted(["mallory@evil.example", ALICE, BOB])  # ack, notifications
    for raw, msg in d.delivered():
        assert "victim" not in (msg["To"] or "") + (msg["Cc"] or ""), raw[:300]


# --- header injection into outgoing mail ---------------------------------------------------

INJECTED = "Bcc: victim@evil.example"


def _encoded_word(text: str) -> str:
    import base64
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def _folded(words: list[str]) -> str:
    """Words on lines of at most ~80 characters, as SMTP lines must be under 1,000."""
    lines, line = [], ""
    for w in words:
        if line and len(line) + len(w) > 75:
            lines.append(line)
            line = ""
        line = f"{line} {w}" if line else w
    return "\r\n ".join([*lines, line])


def hostile_headers(n: int) -> bytes:
    """A message whose Subject and From carry CR/LF (inside encoded words, which decode to
    them) and ~10 KB values, with an injected header line in each; over SMTP, whose lines
    stop at 1,000 characters, they come folded."""
    subject = _folded(["Help", _encoded_word(f"x\r\n{INJECTED}\r\n"), *["word"] * 2000,
                       *[_encoded_word("é" * 20)] * 60])
    name = _folded([_encoded_word(f"Eve\r\n{INJECTED}\r\nX-Evil: 1"), *["E" * 50] * 200])
    return (f"From: {name} <eve{n}@customer.example>\r\n"
            f"To: {DESK}\r\n"
            f"Subject: {subject}\r\n"
            f"Message-ID: <hdr{n}@customer.example>\r\n"
            f"Thread-Index: {_folded(['A' * 70] * 150)}\r\n"
            f"References: <{'r' * 950}@customer.example>\r\n <ok@customer.example>\r\n"
            "Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
            "\r\nHello\r\n").encode()


def well_formed(raw: bytes) -> list[str]:
    """Problems with an outgoing message's header block."""
    head = raw.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n").decode("ascii")
    problems = []
    for line in head.split("\n"):
        if len(line) > 998:
            problems.append(f"{len(line)}-character line {line[:40]!r}")
        elif len(line) > 78 and not line.startswith(("Thread-Index:", "References:",
                                                     " <", "In-Reply-To:")):
            problems.append(f"unfolded {len(line)}-character line {line[:60]!r}")
        elif not line.startswith((" ", "\t")) and not re.match(r"[A-Za-z-]+: ", line):
            problems.append(f"not a header line: {line[:60]!r}")
    names = [line.split(":", 1)[0].lower() for line in head.split("\n")
             if line and not line.startswith((" ", "\t"))]
    for bad in ("bcc", "x-evil"):
        if bad in names:
            problems.append(f"injected {bad}")
    return problems


def test_crlf_and_10kb_values_never_reach_outgoing_headers_unfolded(daemon: Daemon) -> None:
    d = daemon
    assert d.send(hostile_headers(1), mail_from="eve1@customer.example")[0] == 250
    desk = d.desk()
    ticket = wait_for("the message", lambda: processed(desk, "hdr1@customer.example"))
    tag = f"[MD#{ticket}]"
    [ack] = wait_for("the ack", lambda: d.mails_to("eve1@customer.example"))
    [note] = wait_for("alice's notification",
                      lambda: [m for m in d.mails_to(ALICE) if tag in m["Subject"]])
    # Alice answers: the relay to Eve carries the ticket's subject too
    reply = EmailMessage()
    reply["From"] = ALICE
    reply["To"] = note["Reply-To"]
    reply["Subject"] = "Re: " + note["Subject"]
    reply["Message-ID"] = "<hdr-alice@agents.example.com>"
    reply.set_content("We are on it.\n")
    assert d.send(reply.as_bytes().replace(b"\n", b"\r\n"), mail_from=ALICE,
                  rcpt=note["Reply-To"])[0] == 250
    # a Message-ID as long as an SMTP line allows: our In-Reply-To could not hold it
    long_id = "i" * 960 + "@customer.example"
    assert d.send(f"From: eve2@customer.example\r\nTo: {DESK}\r\nSubject: long id\r\n"
                  f"Message-ID:\r\n <{long_id}>\r\n\r\nHello\r\n".encode(),
                  mail_from="eve2@customer.example")[0] == 250
    wait_for("the relay and the second ack",
             lambda: len(d.mails_to("eve1@customer.example")) == 2
             and d.mails_to("eve2@customer.example"))
    sent = [(r, m) for r, m in d.delivered() if m["To"] in (
        "eve1@customer.example", "eve2@customer.example", ALICE, BOB)
        and ("long id" in m["Subject"] or tag in m["Subject"])]
    assert len(sent) == 7  # per ticket an ack and two notifications; the relay
    for raw, msg in sent:
        assert well_formed(raw) == [], msg["Subject"]
        assert msg["Bcc"] is None and msg["X-Evil"] is None
        assert tag in msg["Subject"] or "long id" in msg["Subject"]  # the tag survives
        assert "Help x Bcc: victim@evil.example word word" in msg["Subject"] \
            or "long id" in msg["Subject"]  # the injected line is text in the subject
        assert len(msg["Subject"]) <= 260
        assert msg["In-Reply-To"] is None or len(msg["In-Reply-To"]) < 910
    desk.db.dispose()


# --- stolen reply tokens ---------------------------------------------------------------------

def _mail(frm: str, to: str, body: str, msgid: str, subject: str = "Re: your ticket") -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{msgid}>"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


COMMANDS = "#status closed\n#priority urgent\n#tags stolen\n\nDone, closing this.\n"


def test_a_stolen_reply_token_runs_no_command_and_verifies_nothing(daemon: Daemon) -> None:
    d, desk = daemon, daemon.desk()
    opened = {}
    for who in ("tina", "tom"):
        addr = f"{who}@customer.example"
        assert d.send(message(frm=addr, subject=f"{who}'s printer", msgid=f"<{who}1@c.example>"),
                      mail_from=addr)[0] == 250
        opened[who] = wait_for(who, lambda m=f"{who}1@c.example": processed(desk, m))
    t1, t2 = opened["tina"], opened["tom"]
    alice_t1 = addresses.agent_reply_address(DESK, SECRET, t1, ALICE)
    customer_t1 = addresses.reply_address(DESK, SECRET, t1)
    alice_token = alice_t1.split("-", 1)[1].split("@")[0]
    customer_token = customer_t1.split("-", 1)[1].split("@")[0]
    attempts = [
        # (From, RCPT, what it is)
        (BOB, alice_t1, "another agent with Alice's address of #1"),
        ("tom@customer.example", alice_t1, "a customer with Alice's address of #1"),
        (ALICE, customer_t1, "From: Alice forged, to the customer's address of #1"),
        (ALICE, f"support+{t2}-{alice_token}@example.com", "Alice's token of #1 on #2"),
        (BOB, f"support+{t2}-{customer_token}@example.com", "#1's customer token on #2"),
    ]
    for n, (frm, rcpt, what) in enumerate(attempts):
        raw = _mail(frm, rcpt, COMMANDS, f"steal{n}@x.example", subject=f"Re: {what}")
        assert d.send(raw, mail_from=frm, rcpt=rcpt)[0] == 250, what
        wait_for(what, lambda n=n: processed(desk, f"steal{n}@x.example"))
    for t in (t1, t2):
        view = desk.ticket(t)
        assert view.status.value in ("new", "open") and view.priority.value == "normal", view
        assert "stolen" not in view.tags
    stolen = [e for t in (t1, t2) for e in desk.entries(t)
              if (e.message_id or "").startswith("steal")]
    assert stolen and all(not e.verified for e in stolen), [
        (e.message_id, e.kind, e.verified) for e in stolen]
    assert all(e.kind.value in ("note", "customer") for e in stolen)
    # a ticket the stolen customer token named is not joined by it
    assert [e.message_id for e in desk.entries(t2) if e.message_id == "steal4@x.example"] == []
    wait_for("every queued message sent", lambda: all_sent(d))
    for who in ("tina", "tom"):  # their acks only: nothing of the attempts reached them
        got = d.mails_to(f"{who}@customer.example")
        assert len(got) == 1 and "Done, closing" not in got[0].as_string()
    desk.db.dispose()


# --- hostile attachment names ----------------------------------------------------------------

HOSTILE_NAMES = [  # (Content-Disposition parameters, what they name)
    ('filename="../../etc/passwd"', "../../etc/passwd"),
    ('filename="..\\\\..\\\\Windows\\\\win.ini"', "..\\..\\Windows\\win.ini"),
    ('filename="CON.txt"', "CON.txt"),
    ('filename="nul.tar.gz"', "nul.tar.gz"),
    ('filename="LPT1"', "LPT1"),
    ("filename*=utf-8''evil%00name%0D%0AX-Evil%3A%201.txt", "evil\x00name\r\nX-Evil: 1.txt"),
    ('filename*0="' + "a" * 500 + '";\r\n filename*1="' + "b" * 496 + '.pdf"',
     "a" * 500 + "b" * 496 + ".pdf"),
    ('filename=".htaccess"', ".htaccess"),
]
WINDOWS_DEVICES = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\.|$)", re.I)


def with_attachments(frm: str, to: str, msgid: str, body: str) -> bytes:
    parts = "".join(
        f"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;"
        f"\r\n {params}\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n"
        for params, _ in HOSTILE_NAMES)
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: files\r\nMessage-ID: <{msgid}>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            f"--b\r\nContent-Type: text/plain\r\n\r\n{body}\r\n{parts}--b--\r\n").encode()


def harmless(name: str) -> list[str]:
    problems = []
    if "/" in name or "\\" in name or name.startswith(".") or ".." in name:
        problems.append("a path")
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        problems.append("a control character")
    if WINDOWS_DEVICES.match(name):
        problems.append("a Windows device name")
    if len(name.encode()) > 255:
        problems.append(f"{len(name.encode())} bytes")
    return problems


def test_hostile_attachment_names_are_stored_and_relayed_sanitised(daemon: Daemon) -> None:
    d, desk = daemon, daemon.desk()
    customer = "fiona@customer.example"
    raw = with_attachments(customer, DESK, "files1@customer.example", "see attached")
    assert d.send(raw, mail_from=customer)[0] == 250
    ticket = wait_for("the message", lambda: processed(desk, "files1@customer.example"))
    entry = wait_for("its attachments", lambda: [
        e for e in desk.entries(ticket) if e.attachments and not e.pending])[0]
    stored = [name for name, _, _ in entry.attachments]
    assert len(stored) == len(HOSTILE_NAMES)
    assert {n: harmless(n) for n in stored if harmless(n)} == {}
    assert "passwd" in stored[0] and "win.ini" in stored[1] and stored[6].endswith(".pdf")
    # an agent sends the same files to the customer: the relay names them safely too
    own = addresses.agent_reply_address(DESK, SECRET, ticket, ALICE)
    raw = with_attachments(ALICE, own, "files2@agents.example.com", "Here they are back.")
    assert d.send(raw, mail_from=ALICE, rcpt=own)[0] == 250
    relay = wait_for("the relay", lambda: d.mails_to(customer)[1:])[0]
    names = [p.get_filename() for p in relay.iter_attachments()]
    assert len(names) == len(HOSTILE_NAMES) and all(names)
    assert {n: harmless(n) for n in names if harmless(n)} == {}
    assert relay["X-Evil"] is None and all(p["X-Evil"] is None for p in relay.iter_attachments())
    desk.db.dispose()


# --- recipient and connection floods, slow clients ---------------------------------------------

def test_a_thousand_recipients_in_one_session(daemon: Daemon) -> None:
    d = daemon
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as smtp:
        smtp.ehlo("flood.example")
        smtp.mail("rita@customer.example")
        desk_codes = [smtp.rcpt(f"support+{n}-aaaaaaaa@example.com")[0] for n in range(1000)]
        foreign_codes = {smtp.rcpt(f"victim{n}@evil.example")[0] for n in range(1000)}
        code, _ = smtp.data(message(frm="rita@customer.example", msgid="<rcpt1@c.example>"))
    assert desk_codes == [250] * 100 + [452] * 900  # smtp.max_recipients, then "too many"
    assert foreign_codes == {550} and code == 250
    desk = d.desk()
    wait_for("the message", lambda: processed(desk, "rcpt1@c.example"))
    [item] = [i for i in inbox.list_items(desk.db, limit=1000) if i.message_id == "rcpt1@c.example"]
    with desk.db.read() as s:
        row = s.get(InboxRow, item.id)
        assert row is not None and len(row.envelope_to.split(",")) == 100
    desk.db.dispose()


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon with 3 connections, a 3 s timeout and busy_idle_timeout 1 s."""
    d = Daemon(tmp_path / "tight", smtp='max_connections = 3\nconnection_timeout = "3s"\n'
                                         'busy_idle_timeout = "1s"')
    yield from running(d)


class Raw:
    """A raw SMTP client socket, for clients smtplib will not imitate."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.banner = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def say(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def closed(self) -> bytes | None:
        """The server's last words once it hung up, or None while it is still there."""
        self.sock.settimeout(0.01)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(10)
        return data or b"(closed)"

    def close(self) -> None:
        self.file.close()
        self.sock.close()


EVICTED = b"421 4.4.2 Idle while the server is busy, closing the connection\r\n"


def _sent(d: Daemon, raw: bytes) -> bool:
    try:
        return d.send(raw)[0] == 250
    except smtplib.SMTPConnectError:
        return False


def test_slow_clients_never_keep_mail_out(tight: Daemon) -> None:
    d = tight
    noop, rset, trickle = Raw(d.port), Raw(d.port), Raw(d.port)
    assert all(c.banner.startswith(b"220") for c in (noop, rset, trickle))
    assert noop.say("EHLO loris.example").startswith(b"250")
    while not noop.line().startswith(b"250 "):
        pass
    assert trickle.say("HELO loris.example").startswith(b"250")
    assert trickle.say("MAIL FROM:<loris@evil.example>").startswith(b"250")
    assert trickle.say(f"RCPT TO:<{DESK}>").startswith(b"250")
    assert trickle.say("DATA").startswith(b"354")
    data_started = time.monotonic()
    assert rset.say("HELO loris.example").startswith(b"250")
    # a full house that only idles: NOOP and MAIL/RSET keep aiosmtpd's timer from firing
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert noop.say("NOOP").startswith(b"250")
        assert rset.say("MAIL FROM:<loris@evil.example>").startswith(b"250")
        assert rset.say("RSET").startswith(b"250")
        trickle.sock.sendall(b"X-Slow: x\r\n")
        time.sleep(0.2)
    # legitimate mail still gets in: each newcomer closes the idlest loris
    assert d.send(message(msgid="<legit1@c.example>"))[0] == 250
    assert noop.closed() == EVICTED
    assert rset.closed() is None  # the house was no longer full
    filler = Raw(d.port)  # full again: a fresh client, the MAIL/RSET loris, the DATA one
    assert d.send(message(msgid="<legit2@c.example>"))[0] == 250
    assert rset.closed() is not None and filler.closed() is None
    filler.close()
    assert trickle.closed() is None  # in its DATA: not closed for a newcomer ...
    while trickle.closed() is None:  # ... but aiosmtpd's timeout bounds the whole DATA
        trickle.sock.sendall(b"X-Slow: x\r\n")
        time.sleep(0.1)
    assert 2.9 < time.monotonic() - data_started < 6
    for c in (noop, rset, trickle):
        c.close()
    # a client that stalls in its DATA, 100 KB sent, holds them in our memory: it is idle
    staller = Raw(d.port)
    for command in ("HELO loris.example", "MAIL FROM:<loris@evil.example>",
                    f"RCPT TO:<{DESK}>", "DATA"):
        staller.say(command)
    staller.sock.sendall(b"Subject: stalled\r\n\r\n" + (b"y" * 998 + b"\r\n") * 100)
    time.sleep(1.1)  # past busy_idle_timeout: nothing to wait for but the clock
    fillers = [Raw(d.port), Raw(d.port)]  # a full house: the staller and two fresh clients
    assert d.send(message(msgid="<legit4@c.example>"))[0] == 250
    assert staller.closed() == EVICTED
    assert all(f.closed() is None for f in fillers)
    for c in (staller, *fillers):
        c.close()
    # a flood past max_connections: 421 beyond it, the daemon survives, mail gets in
    flood = [Raw(d.port) for _ in range(20)]
    greetings = [c.banner[:3] for c in flood]
    assert greetings.count(b"220") == 3 and greetings.count(b"421") == 17, greetings
    for c in flood:
        c.close()
    assert wait_for("a free slot", lambda: _sent(d, message(msgid="<legit3@c.example>")))
    desk = d.desk()
    for n in (1, 2, 3, 4):
        wait_for(f"legit {n}", lambda n=n: processed(desk, f"legit{n}@c.example"))
    assert not [i for i in inbox.list_items(desk.db) if "evil" in (i.message_id or "")]
    desk.db.dispose()


# --- two desks answering each other --------------------------------------------------------

LOOP_HEADERS = re.compile(
    rb"^(auto-submitted|x-loop|x-auto-response-suppress|precedence|in-reply-to|references|"
    rb"thread-index|thread-topic):.*\r?\n(?:[ \t].*\r?\n)*", re.I | re.M)


class StrippingRelay:
    """A smarthost that hands each message on to another desk's SMTP without its loop and
    threading headers and ticket tags, as a naive forwarder would."""

    def __init__(self) -> None:
        self.target = 0
        self.carried = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        raw = envelope.original_content  # type: ignore[attr-defined]
        head, sep, body = raw.partition(b"\r\n\r\n")
        head = re.sub(rb"\[MD#\d+\]", b"", LOOP_HEADERS.sub(b"", head + b"\r\n"))
        try:
            with smtplib.SMTP("127.0.0.1", self.target, timeout=30) as smtp:
                smtp.sendmail(envelope.mail_from, envelope.rcpt_tos,  # type: ignore[attr-defined]
                              head.rstrip(b"\r\n") + sep + body)
        except smtplib.SMTPRecipientsRefused:
            return "550 5.1.1 refused downstream"
        self.carried += 1
        return "250 OK"


def test_two_desks_answering_everything_stop_at_the_hourly_cap(tmp_path: Path) -> None:
    """Loop and threading headers stripped in between, and a rule on each desk answering
    every message: only loop.max_auto_replies_per_hour (2 here) is left to stop it."""
    from aiosmtpd.controller import Controller

    relays = {k: StrippingRelay() for k in "ab"}
    controllers = {k: Controller(r, hostname="127.0.0.1", port=free_port())
                   for k, r in relays.items()}
    rule = ('[loop]\nmax_auto_replies_per_hour = 2\n[[rules]]\nname = "answer all"\n'
            '[rules.then]\nreply_template = "ack"\n')
    desks = {k: Daemon(tmp_path / k, rule) for k in "ab"}
    for k, d in desks.items():
        text = d.config.read_text().replace('transport = "maildir"', (
            f'transport = "smtp"\nhost = "127.0.0.1"\nport = {controllers[k].port}\n'
            'tls = "none"'))
        if k == "b":
            text = text.replace('address = "support@example.com"',
                                'address = "help@b.example"')
        d.config.write_text(text)
    relays["a"].target, relays["b"].target = desks["b"].port, desks["a"].port
    try:
        for c in controllers.values():
            c.start()
        starting = [threading.Thread(target=d.start) for d in desks.values()]  # at once
        for t in starting:
            t.start()
        for t in starting:
            t.join()
        assert all(d.proc and d.proc.poll() is None for d in desks.values())
        start = message(frm="help@b.example", msgid="<start@b.example>", subject="Order?")
        assert desks["a"].send(start, mail_from="help@b.example")[0] == 250

        def settled() -> bool:  # A answered 3 times (the third withheld), B twice
            return all(_quiet(d, n) for d, n in ((desks["a"], 3), (desks["b"], 2)))

        wait_for("both desks to stop", settled, timeout=40)
        assert (relays["a"].carried, relays["b"].carried) == (2, 2)
        assert "already got 2 automatic replies this hour (counted as help@b.example)" in \
            desks["a"].log()
    finally:
        for d in desks.values():
            d.kill()
        for c in controllers.values():
            c.stop()


def _quiet(d: Daemon, processed_n: int) -> bool:
    desk = d.desk()
    try:
        items = inbox.list_items(desk.db)
        with desk.db.read() as s:
            pending = [r for r in s.exec(select(OutboxRow)).all()
                       if r.state not in ("sent", "failed")]
        return len(items) == processed_n and all(i.state.value == "processed" for i in items) \
            and not pending
    finally:
        desk.db.dispose()


def test_an_address_longer_than_smtp_allows_gets_no_mail(daemon: Daemon) -> None:
    """RFC 5321 §4.5.3.1.3: a path is at most 256 octets; a 300-character From still opens a
    ticket, but nothing is queued for it (its To line, its RCPT would be refused)."""
    d, desk = daemon, daemon.desk()
    long_from = "l" * 300 + "@customer.example"
    raw = message(frm=long_from, msgid="<longfrom@customer.example>", subject="long from")
    assert d.send(raw, mail_from="lf@customer.example")[0] == 250
    ticket = wait_for("the message", lambda: processed(desk, "longfrom@customer.example"))
    assert ticket > 0 and desk.ticket(ticket).requester == long_from

    def queued() -> list[str]:  # by the follow-up, all in one transaction
        with desk.db.read() as s:
            return [r.recipients for r in s.exec(select(OutboxRow)).all()
                    if r.ticket_id == ticket]

    # all_sent alone holds before the follow-up has queued anything for this ticket
    wait_for("the notifications", lambda: queued() and all_sent(d))
    sent = queued()
    desk.db.dispose()
    assert sorted(sent) == sorted([ALICE, BOB])  # no ack to an address no MTA would take
