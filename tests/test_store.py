"""store/: the hand-written hot path (store.raw) and the ORM schema stay in step."""

from __future__ import annotations

import sqlite3
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maildesk.domain import Source
from maildesk.identity import content_hash
from maildesk.store import Database, inbox, tickets
from maildesk.store.db import MIGRATIONS, SCHEMA_HEAD
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


def _alembic(db: Database) -> tuple[Any, Any]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", db.url)
    return cfg, ScriptDirectory.from_config(cfg)


def test_the_migrations_build_the_schema_of_the_tables(tmp_path: Path, db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    desk = Desk.open(write_config(tmp_path, db_url))
    _, scripts = _alembic(desk.db)
    assert desk.db.schema_version() == scripts.get_current_head() == SCHEMA_HEAD
    with desk.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
    desk.db.dispose()


def test_an_older_database_is_upgraded_and_keeps_its_messages(
    tmp_path: Path, db_url: str
) -> None:
    """A database written before the bytes moved to inbox_raw (revision 0002): opening it
    migrates it, and a message that was queued then is processed from its bytes."""
    from alembic import command

    raw_message = message(msgid="<before@customer.example>", subject="Queued before")
    old = Database(db_url)
    cfg, _ = _alembic(old)
    with old.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.commit()
    with old.write() as s:
        r = raw(s)
        r.run("INSERT INTO inbox (received_at, source, content_hash, size, raw, state,"
              " attempts, envelope_to) VALUES (?, 'cli', ?, ?, ?, 'queued', 0, '')",
              (r.time(datetime.now(UTC)), "h" * 64, len(raw_message), raw_message))
    old.dispose()

    desk = Desk.open(write_config(tmp_path, db_url))  # as `serve` and the CLI open it
    assert desk.db.schema_version() == SCHEMA_HEAD
    assert inbox.load_raw(desk.db, [1]) == {1: raw_message}
    outcome = desk.pipeline.process(1)
    assert outcome.ticket_id is not None
    assert desk.ticket(outcome.ticket_id).subject == "Queued before"
    assert "the printer is on fire" in desk.entries(outcome.ticket_id)[0].body
    desk.db.dispose()


def test_processing_does_not_write_the_message_again(tmp_path: Path) -> None:
    """Processing changes the inbox row (state, ticket); the message's bytes are not
    written a second time with it. A 2 MB message stored from its headers adds a few
    pages to the SQLite log, not the 500 its bytes fill."""
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/maildesk.db"))
    big = message(msgid="<big@customer.example>", body=("y" * 76 + "\n") * 27_000)
    inbox_id = inbox.add(desk.db, inbox.new_row(
        big, source=Source.CLI, message_id="big@customer.example", content_hash=content_hash(big)))
    log = sqlite3.connect(tmp_path / "maildesk.db")
    assert log.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # the log is empty
    [outcome] = desk.pipeline.process_batch([inbox_id])
    assert outcome.ticket_id is not None
    busy, frames, _ = log.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and 0 < frames < 50, frames
    log.close()
    desk.db.dispose()
