"""Storage: the only package that imports sqlmodel/sqlalchemy.

`db` holds the engine and transactions, `tables` the schema, `raw` the hand-written SQL
that the per-message hot path runs on the driver's cursor; the other modules are
repositories for one concept each (inbox, tickets, outbox, mailboxes).
"""

from maildesk.store.db import Database, StoreUnavailable

__all__ = ["Database", "StoreUnavailable"]
