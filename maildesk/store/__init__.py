"""Storage: the only package that imports sqlmodel/sqlalchemy.

`db` holds the engine and transactions, `tables` the schema, `raw` the hand-written SQL
that the per-message hot path runs on the driver's cursor, `direct` the driver connection
without SQLAlchemy (the CLI's reads); the other modules are repositories for one concept
each (inbox, tickets, outbox, mailboxes).

`Database` is imported on first use, not with the package: the CLI's read commands
import repositories of this package without paying for SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maildesk.store.direct import StoreUnavailable

if TYPE_CHECKING:
    from maildesk.store.db import Database

__all__ = ["Database", "StoreUnavailable"]


def __getattr__(name: str) -> Any:
    if name == "Database":
        from maildesk.store.db import Database

        return Database
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
