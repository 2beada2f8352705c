"""Test helpers: write a config, build realistic messages, run the real pipeline."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from maildesk.app import build_pipeline, open_database
from maildesk.config import Settings, load_settings
from maildesk.domain import Source
from maildesk.identity import content_hash, header_message_id
from maildesk.pipeline import Outcome, Pipeline
from maildesk.store import Database, inbox, tickets

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("MAILDESK_CORPUS", REPO.parent / "shared" / "corpus"))
SECRET = "test-secret-0123456789"

BASE_CONFIG = """
[desk]
name = "Test Desk"
address = "support@example.com"
secret = "{secret}"

[database]
url = "{db_url}"

[smtp]
listen = "127.0.0.1:0"

[outbound]
transport = "maildir"
maildir = "{outbox}"

[[agents]]
email = "alice@agents.example.com"
name = "Alice"

[[agents]]
email = "bob@agents.example.com"
name = "Bob"

[[queues]]
name = "billing"
address = "billing@example.com"
"""


def write_config(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(
        BASE_CONFIG.format(secret=SECRET, db_url=db_url, outbox=tmp_path / "outbox") + extra
    )
    return path


def message(
    *, frm: str = "Carol Customer <carol@customer.example>", to: str = "support@example.com",
    subject: str = "Printer on fire", body: str = "Hello,\nthe printer is on fire.\n",
    msgid: str | None = None, in_reply_to: str | None = None,
    references: list[str] | None = None, headers: dict[str, str] | None = None,
    cc: str | None = None, date: datetime | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = msgid if msgid is not None else make_msgid(domain="customer.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()


def thread_index(root: bytes, children: int = 0) -> str:
    """An Outlook Thread-Index: 22-byte root plus 5 bytes per reply."""
    assert len(root) == 22
    return base64.b64encode(root + b"\x01\x02\x03\x04\x05" * children).decode()


@dataclass
class Desk:
    """The real pipeline on a real database, fed message by message."""

    settings: Settings
    db: Database
    pipeline: Pipeline

    @classmethod
    def open(cls, config: Path) -> Desk:
        settings = load_settings(config)
        db = open_database(settings)
        return cls(settings, db, build_pipeline(settings, db))

    def ingest(
        self, raw: bytes, *, envelope_from: str | None = None, envelope_to: tuple[str, ...] = ()
    ) -> Outcome:
        row = inbox.new_row(
            raw, source=Source.CLI, message_id=header_message_id(raw),
            content_hash=content_hash(raw), envelope_from=envelope_from, envelope_to=envelope_to,
        )
        return self.pipeline.process(inbox.add(self.db, row))

    def ticket(self, ticket_id: int):  # type: ignore[no-untyped-def]
        with self.db.read() as s:
            row = tickets.get_row(s, ticket_id)
            assert row is not None, f"no ticket #{ticket_id}"
            return tickets.view(s, row)

    def entries(self, ticket_id: int):  # type: ignore[no-untyped-def]
        with self.db.read() as s:
            return tickets.entries(s, ticket_id)

    def tickets(self):  # type: ignore[no-untyped-def]
        with self.db.read() as s:
            return tickets.list_views(s)
