"""Storage: the only package that imports sqlmodel/sqlalchemy.

`db` holds the engine and transactions, `tables` the schema; the other modules
are repositories for one concept each (inbox, tickets, outbox, mailboxes).
"""

from maildesk.store.db import Database, StoreUnavailable

__all__ = ["Database", "StoreUnavailable"]
