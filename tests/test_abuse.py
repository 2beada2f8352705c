"""Abuse against a running daemon (issue 13, short forms; bench/abuse.py has the long
ones): open-relay probes, stolen reply tokens, header injection into outgoing mail, hostile
attachment names, recipient and connection floods, slow clients. A real `maildesk serve`,
a real SMTP client (smtplib and raw sockets), the outgoing mail read from its Maildir."""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk import addresses
from maildesk.store import inbox
from tests.agent_helpers import ALICE, BOB
from tests.helpers import SECRET
from tests.test_serve import Daemon, message, processed, wait_for

DESK = "support@example.com"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("abuse"))
    try:
        d.start()
        yield d
        assert d.stop() == 0
    finally:
        d.kill()


def outgoing(d: Daemon) -> list[tuple[bytes, EmailMessage]]:
    """Every message the daemon wrote to its Maildir, raw and parsed, oldest first."""
    found = []
    for path in sorted(d.maildir.glob("*"), key=lambda p: int(p.name.split(".")[0])):
        raw = path.read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        found.append((raw, msg))
    return found


def envelope_recipients(d: Daemon) -> set[str]:
    """Everyone the daemon ever queued mail for."""
    desk = d.desk()
    try:
        with desk.db.read() as s:
            from maildesk.store.tables import OutboxRow
            from sqlmodel import select
            rows = s.exec(select(OutboxRow)).all()
        return {a for r in rows for a in r.recipients.split(",") if a}
    finally:
        desk.db.dispose()


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
    [item] = [i for i in inbox.list_items(desk.db) if i.message_id == "relay1@evil.example"]
    desk.db.dispose()
    assert ticket > 0  # postmaster's mail, like the desk's, is a ticket a person reads
    wait_for("its mail", lambda: outgoing(d))
    assert {a.rpartition("@")[2] for a in envelope_recipients(d)} <= {
        "evil.example", "agents.example.com"}
    assert "victim@evil.example" not in envelope_recipients(d)
    for raw, msg in outgoing(d):
        assert "victim" not in (msg["To"] or "") + (msg["Cc"] or ""), raw[:300]
    del item


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
    sent = [(r, m) for r, m in outgoing(d) if m["To"] in (
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
