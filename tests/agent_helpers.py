"""Helpers for the agent-mail tests: a desk that trusts a DKIM server, the mail it sent,
and an agent answering a notification from their mail client."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from sqlmodel import col, select

from maildesk.pipeline import Outcome
from maildesk.store.tables import OutboxRow
from tests.helpers import Desk, write_config

ALICE = "alice@agents.example.com"
BOB = "bob@agents.example.com"
TRUSTED = """
[security]
trusted_authserv_id = "mx.example.com"
"""
DKIM_PASS = "mx.example.com; dkim=pass header.d=agents.example.com header.s=sel1"


def open_desk(tmp_path: Path, db_url: str) -> Desk:
    return Desk.open(write_config(tmp_path, db_url, TRUSTED))


def rows(desk: Desk, **where: object) -> list[OutboxRow]:
    with desk.db.read() as s:
        found = s.exec(select(OutboxRow).order_by(col(OutboxRow.id))).all()
    return [r for r in found if all(getattr(r, k) == v for k, v in where.items())]


def parsed(row: OutboxRow | bytes) -> EmailMessage:
    raw = row if isinstance(row, bytes) else row.raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def notification(desk: Desk, agent: str = ALICE) -> EmailMessage:
    """The latest notification (new ticket or customer reply) the agent was sent."""
    found = [r for r in rows(desk, recipients=agent)
             if r.template in ("new_ticket_agent", "customer_reply_agent")]
    assert found, f"no notification for {agent}"
    return parsed(found[-1])


def quoted(msg: EmailMessage) -> str:
    """How a mail client quotes the message under a reply."""
    lines = "".join(f"> {line}\n" for line in text_of(msg).splitlines())
    return f"On Mon, 1 Dec 2026 at 10:00, Test Desk <support@example.com> wrote:\n{lines}"


def reply_mail(
    to: EmailMessage, body: str, *, frm: str = f"Alice <{ALICE}>", html: str | None = None,
    headers: dict[str, str] | None = None, attachments: tuple[tuple[str, bytes], ...] = (),
    to_address: str | None = None,
) -> bytes:
    """An agent's answer to a message of ours: To its Reply-To, In-Reply-To it."""
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to_address or to["Reply-To"]
    msg["Subject"] = "Re: " + to["Subject"]
    msg["Message-ID"] = make_msgid(domain="agents.example.com")
    msg["In-Reply-To"] = to["Message-ID"]
    msg["References"] = f"{to['References'] or ''} {to['Message-ID']}".strip()
    for name, value in (headers or {}).items():
        msg[name] = value
    if html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
    for name, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return msg.as_bytes()


def answer(desk: Desk, to: EmailMessage, body: str, **kwargs: object) -> Outcome:
    """The agent's answer, delivered to the address it was written to."""
    raw = reply_mail(to, body, **kwargs)  # type: ignore[arg-type]
    address = parsed(raw)["To"]
    return desk.ingest(raw, envelope_to=(str(address),))
