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


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    from maildesk.store.db import Database

    db = Database(settings.database.url, pool_size=settings.database.pool_size)
    if migrate:
        db.ensure_schema()
    return db


def reactors(settings: Settings) -> list[Reactor]:
    """The outbound side: acknowledgements, notifications, bounces (see maildesk.outbound)."""
    from maildesk.outbound.react import OutboundReactor

    return [OutboundReactor(settings)]


def build_pipeline(settings: Settings, db: Database,
                   parser: WholeParser | None = None) -> Pipeline:
    """`parser`: the daemon's worker processes that read messages whole (else in-process)."""
    from maildesk.pipeline import Pipeline

    return Pipeline(settings, db, reactors(settings), parser=parser)
