"""Wiring shared by the CLI and the daemon: the database and the pipeline with its reactors.

The pipeline (and through it mail-parser, Jinja2, the outbound side) is imported when one
is built, not with this module: the CLI's commands that only open the database must not
pay for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maildesk.config import Settings
    from maildesk.parse_pool import WholeParser
    from maildesk.pipeline import Pipeline, Reactor
    from maildesk.store import Database
    from maildesk.store.direct import DirectDatabase, Writable


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    from maildesk.store.db import Database

    db = Database(settings.database.url, pool_size=settings.database.pool_size)
    if migrate:
        db.ensure_schema()
    return db


def open_direct(settings: Settings) -> DirectDatabase:
    """The database on a driver connection of this process, without SQLAlchemy (see
    store.direct): for a command that processes a message or two and leaves (`maildesk
    ingest`). A database that is not at the current schema (new, or older) is migrated
    first through the full Database; that it is costs one query."""
    from maildesk.store.direct import SCHEMA_HEAD, DirectDatabase, schema_version

    db = DirectDatabase(settings.database.url)
    if not db.exists() or schema_version(db) != SCHEMA_HEAD:
        open_database(settings).dispose()
    return db


def reactors(settings: Settings) -> list[Reactor]:
    """The outbound side: acknowledgements, notifications, bounces (see maildesk.outbound)."""
    from maildesk.outbound.react import OutboundReactor

    return [OutboundReactor(settings)]


def build_pipeline(settings: Settings, db: Writable,
                   parser: WholeParser | None = None) -> Pipeline:
    """`parser`: the daemon's worker processes that read messages whole (else in-process)."""
    from maildesk.pipeline import Pipeline

    return Pipeline(settings, db, reactors(settings), parser=parser)
