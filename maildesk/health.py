"""What `/healthz` answers (SPEC §6): the problems that make the daemon unhealthy now.

- the database cannot be read (down, unreachable, no schema), or refuses writes (a full or
  read-only disk: SMTP answers 451 to every message meanwhile);
- an IMAP mailbox has been failing (cannot connect or log in) for longer than
  `desk.alert_after`: the moment the operators' alert mail is due;
- a thread of the daemon has died, or it is stopping (the caller's own checks).

Each is looked at afresh on every request, so the answer turns healthy again by itself
once the cause is gone: nothing is latched. `/healthz` answers 200 "ok" without problems,
else 503 with one line per problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from maildesk import metrics
from maildesk.store.direct import Readable, StoreUnavailable, schema_version

if TYPE_CHECKING:
    from maildesk.intake.imap_health import Failure
    from maildesk.store.db import Database


def database_problem(db: Readable) -> str | None:
    """Why the database is not usable now; None when it is."""
    try:
        version = schema_version(db)
    except StoreUnavailable as exc:
        problem: str | None = f"database unreachable: {exc}"
    else:
        problem = None if version else "database has no schema (run `maildesk db upgrade`)"
    metrics.database_up.set(0 if problem else 1)
    return problem


def write_problem(db: Database) -> str | None:
    """Why the database refuses writes (a full or read-only disk) although it can be read."""
    why = db.refusing_writes()
    if why is not None:
        metrics.database_up.set(0)
    return f"database refuses writes {why}" if why else None


def mailbox_problems(failures: Mapping[str, Failure], now: datetime,
                     alert_after: timedelta) -> list[str]:
    """The mailboxes failing for longer than `alert_after`, one line each."""
    return [f"mailbox {name}: failing since {f.since.isoformat(timespec='seconds')} "
            f"({f.kind}: {f.message})"
            for name, f in sorted(failures.items()) if now - f.since > alert_after]
