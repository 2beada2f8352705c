"""A desk with an office-hours SLA policy and a clock the test sets: messages go through the
real pipeline at chosen times, and the scheduler's jobs run at chosen times."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlmodel import col, select

from maildesk import addresses
from maildesk.scheduler import Jobs, TickResult
from maildesk.store import outbox, tickets
from maildesk.store.tables import OutboxRow
from tests.helpers import SECRET, Desk, message, write_config

MADRID = ZoneInfo("Europe/Madrid")
SLA_TEMPLATES = ("sla_reminder", "sla_breach", "solved", "digest")

OFFICE = """
[[sla]]
name = "office"
first_response = "1h"
next_response = "2h"
resolution = "1d"
business_hours = "Mon-Fri 09:00-18:00"
timezone = "Europe/Madrid"
remind_before = "15m"
escalate_to = ["lead@agents.example.com"]
auto_close_after = "3d"

"""
NO_DIGEST = '\n[scheduler]\ndigest_at = ""\n'



def at(text: str) -> datetime:
    """A local time in Madrid, as a UTC instant. 2026-11-30 is a Monday."""
    return datetime.fromisoformat(text).replace(tzinfo=MADRID).astimezone(UTC)


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: at("2026-11-30 10:00"))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class SlaDesk:
    desk: Desk
    clock: Clock
    config: Path

    @classmethod
    def open(cls, tmp_path: Path, db_url: str, extra: str = OFFICE + NO_DIGEST,
             timezone: str = "Europe/Madrid") -> SlaDesk:
        cfg = write_config(tmp_path, db_url, extra)
        cfg.write_text(cfg.read_text().replace(
            f'secret = "{SECRET}"', f'secret = "{SECRET}"\ntimezone = "{timezone}"'))
        return cls.reopen(cfg)

    @classmethod
    def reopen(cls, cfg: Path) -> SlaDesk:
        """As a restarted daemon opens it: new settings, engines and pipeline."""
        desk = Desk.open(cfg)
        clock = Clock()
        desk.pipeline.clock = clock
        return cls(desk, clock, cfg)

    def close(self) -> None:
        self.desk.db.dispose()

    def customer(self, when: str, *, frm: str = "carol@customer.example", subject: str = "Help",
                 ticket: int | None = None, msgid: str | None = None) -> int:
        self.clock.now = at(when)
        to = (addresses.reply_address("support@example.com", SECRET, ticket) if ticket
              else "support@example.com")
        out = self.desk.ingest(message(frm=frm, to=to, subject=subject, msgid=msgid),
                               envelope_to=(to,))
        assert out.ticket_id is not None, out
        return out.ticket_id

    def agent_reply(self, when: str, ticket: int, *, agent: str = "alice@agents.example.com"
                    ) -> None:
        self.clock.now = at(when)
        to = addresses.agent_reply_address("support@example.com", SECRET, ticket, agent)
        out = self.desk.ingest(message(frm=agent, to=to, subject="Re: Help", body="On it.\n"),
                               envelope_to=(to,))
        assert out.ticket_id == ticket, out

    def run(self, when: str) -> TickResult:
        return Jobs(self.desk.settings, self.desk.db).run(at(when))

    def ticket(self, ticket_id: int) -> tickets.Ticket:
        with self.desk.db.read() as s:
            found = tickets.load(s, ticket_id)
        assert found is not None
        return found

    def change(self, when: str, ticket_id: int, **fields: object) -> None:
        """A change made by something other than a message (as agent commands will):
        through the same hook before the save."""
        from maildesk import deadlines

        now = at(when)
        with self.desk.db.write() as s:
            t = tickets.load(s, ticket_id)
            assert t is not None
            for name, value in fields.items():
                setattr(t, name, value)
            t.updated_at = now
            deadlines.refresh(s, self.desk.settings, t, now=now)
            tickets.save(s, t)

    def mail(self) -> list[tuple[int | None, str, str]]:
        """Scheduled mail queued so far: (ticket, template, recipient), in order."""
        items = sorted(outbox.list_items(self.desk.db, limit=100_000), key=lambda i: i.id)
        return [(i.ticket_id, i.template, ",".join(i.recipients)) for i in items
                if i.template in SLA_TEMPLATES]

    def messages(self, template: str) -> list[EmailMessage]:
        with self.desk.db.read() as s:
            rows = s.exec(select(OutboxRow).where(OutboxRow.template == template)
                          .order_by(col(OutboxRow.id))).all()
            out = []
            for row in rows:
                msg = email.message_from_bytes(row.raw, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                out.append(msg)
            return out


def later(text: str, **delta: float) -> str:
    return (datetime.fromisoformat(text) + timedelta(**delta)).isoformat(sep=" ")
