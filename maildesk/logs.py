"""The daemon's log: one event per line on stderr, as text or JSON (`[log]`, SPEC §4, §6).

text: `2026-12-01 10:33:29,504 INFO maildesk.pipeline: inbox 7 <a@b>: ticket #3 (new_ticket)`
json: `{"time": "2026-12-01T10:33:29.504Z", "level": "info", "logger": "maildesk.pipeline",
       "message": "inbox 7 <a@b>: ticket #3 (new_ticket)", "inbox": 7, "message_id": "a@b",
       "ticket": 3}`

An event about one message, ticket or outgoing mail carries its ids as fields of their
own in JSON (`inbox`, `message_id`, `ticket`, `outbox`, `mailbox`): the call site passes
them with `extra=about(...)`. A traceback goes into `exception`. Line breaks inside an
event (a traceback) are written as `\\n` in both formats, so that one line is always one
event for journald, grep and log shippers. Python warnings are logged too.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maildesk.config import Log

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord attribute (set through `extra`) -> JSON field
FIELDS = {"inbox_id": "inbox", "message_id": "message_id", "ticket_id": "ticket",
          "outbox_id": "outbox", "mailbox": "mailbox"}


def about(*, inbox: int | None = None, message_id: str | None = None,
          ticket: int | None = None, outbox: int | None = None,
          mailbox: str | None = None) -> dict[str, Any]:
    """`extra=` for a log call about one message: the ids that JSON lines carry."""
    values = {"inbox_id": inbox, "message_id": message_id or None, "ticket_id": ticket,
              "outbox_id": outbox, "mailbox": mailbox}
    return {k: v for k, v in values.items() if v is not None}


class TextFormatter(logging.Formatter):
    """The classic line, with line breaks escaped: one event, one line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per event (json.dumps escapes line breaks)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attribute, key in FIELDS.items():
            value = getattr(record, attribute, None)
            if value is not None:
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        return json.dumps(event, ensure_ascii=False, default=str)


def configure(settings: Log) -> None:
    """Log to stderr in the configured format and level, unless the program that runs
    the daemon (a test) has set up logging already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.format == "json"
                         else TextFormatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: per-command noise
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one per plugin
    logging.captureWarnings(True)
