"""store/: the hand-written hot path (store.raw) and the ORM schema stay in step."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from maildesk.store import tickets
from maildesk.store.raw import raw
from maildesk.store.tables import TicketRow
from tests.helpers import Desk, message, write_config


def test_the_processing_ticket_record_has_every_column_of_the_table() -> None:
    # A column added to TicketRow (and its migration) must be added to tickets.Ticket,
    # or processing would never read or write it.
    assert {f.name for f in fields(tickets.Ticket)} == {
        c.name for c in TicketRow.__table__.columns}  # type: ignore[attr-defined]


def test_raw_writes_read_back_through_the_orm_with_the_same_times(
    tmp_path: Path, db_url: str
) -> None:
    desk = Desk.open(write_config(tmp_path, db_url))
    before = datetime.now(UTC)
    outcome = desk.ingest(message(msgid="<times@customer.example>"))
    assert outcome.ticket_id is not None
    with desk.db.read() as s:
        orm = s.get(TicketRow, outcome.ticket_id)
        raw = tickets.load(s, outcome.ticket_id)
    assert orm is not None and raw is not None
    assert orm.created_at == raw.created_at and orm.last_activity_at == raw.last_activity_at
    assert orm.created_at.tzinfo is not None and orm.created_at >= before.replace(microsecond=0)
    assert (orm.status, orm.requester, orm.agent_touched) == (
        raw.status, raw.requester, raw.agent_touched)
    desk.db.dispose()


def test_only_processing_commits_skip_waiting_for_the_disk(tmp_path: Path, db_url: str) -> None:
    """Intake, the sender and the CLI commit durably; processing, which can be done again
    from the committed inbox, does not wait for the disk (store/db.Database.write)."""
    desk = Desk.open(write_config(tmp_path, db_url))
    sqlite = desk.db.is_sqlite
    setting = "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit"
    waits = (2, 1) if sqlite else ("on", "off")  # FULL / NORMAL; on / off
    try:
        for durable, expected in zip((True, False), waits, strict=True):
            with desk.db.write(durable=durable) as s:
                assert raw(s).one(setting) == (expected,)
        with desk.db.write() as s:  # the default, and nothing leaks between transactions
            assert raw(s).one(setting) == (waits[0],)
    finally:
        desk.db.dispose()
