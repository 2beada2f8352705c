"""What every command shares: exit codes, loading the config and the database, reading
a message, printing JSON.

Standard library only at import time: `maildesk ingest --queue` runs once per message
from an MTA pipe and must not pay for the daemon's imports.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from maildesk.config import Settings
    from maildesk.store import Database
    from maildesk.store.direct import Reader

EX_OK, EX_FAIL, EX_USAGE, EX_TEMPFAIL = 0, 1, 2, 75


class CliError(Exception):
    def __init__(self, message: str, code: int = EX_FAIL) -> None:
        super().__init__(message)
        self.code = code


class Exit:
    """Set once a command has nothing left to clean up (`ingest` has committed and closed
    its connection; a read command's Reader closes its connection after each read):
    `run()` then leaves without the interpreter's teardown."""

    skip_teardown = False


def settings(args: argparse.Namespace) -> Settings:
    """Load the config; a bad config is exit 1, except for `ingest`: there it is 75,
    so the MTA keeps the mail and retries once the operator has fixed the file."""
    from maildesk.config import ConfigError, config_path_from, load_settings

    code = EX_TEMPFAIL if args.command == "ingest" else EX_FAIL
    try:
        return load_settings(config_path_from(args.config))
    except ConfigError as exc:
        raise CliError("\n".join(exc.problems), code) from exc
    except (OSError, ValueError) as exc:
        raise CliError(str(exc), code) from exc


def positive_int(value: str) -> int:
    """An argparse type for ids and counts: a whole number above 0."""
    return _whole_number(value, 1)


def non_negative_int(value: str) -> int:
    """An argparse type for a count where 0 means "no limit": a whole number, 0 or more."""
    return _whole_number(value, 0)


def _whole_number(value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more: {value!r}")
    return number


def iso_time(value: str) -> datetime:
    """An argparse type for --since: an ISO date or date and time (UTC unless it says)."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO date or time: {value!r} (e.g. 2026-11-01 or 2026-11-01T09:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def usage_error(message: str) -> CliError:
    """A bad argument found after parsing (e.g. a queue the config does not know): exit 2."""
    return CliError(message, EX_USAGE)


def database(settings: Settings, *, migrate: bool = True) -> Database:
    from maildesk.app import open_database

    return open_database(settings, migrate=migrate)


def reader(settings: Settings) -> Reader:
    """The database for a read command: a driver connection, without SQLAlchemy (whose
    import alone takes longer than such a command may; see store.direct). A database that
    is not at the current schema (new, or older) is migrated first, as by every command."""
    from maildesk.store.direct import SCHEMA_HEAD, Reader, schema_version

    found = Reader(settings.database.url)
    if not found.exists() or schema_version(found) != SCHEMA_HEAD:
        database(settings).dispose()
    Exit.skip_teardown = True  # closed after each read: nothing to free (5% of `tickets list`)
    return found


def read_message(path: str | None) -> bytes:
    if path in (None, "-"):
        return sys.stdin.buffer.read()
    with open(str(path), "rb") as f:  # not pathlib: `ingest --queue` starts once per message
        return f.read()


def print_json(value: Any) -> None:
    import json  # here, like the other imports: `ingest --queue` starts once per message

    print(json.dumps(value, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    from datetime import datetime

    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
