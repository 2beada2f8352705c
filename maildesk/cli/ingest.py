"""`maildesk ingest [--queue] [FILE|-]`: one message from an MTA pipe, a file or stdin.

An MTA starts one process per message, so the message is committed by the quickest path
that applies: without pydantic, SQLAlchemy or mail-parser (`intake.queue`: on SQLite
the standard library only, on PostgreSQL psycopg). Then:

- `--queue`: that is all; a running daemon processes it.
- a daemon of this database runs on this host (it answers the doorbell,
  `intake.doorbell`): it processes the message at once, and this process waits for the
  result in the database (`--wait` seconds, default 10) and reports it; still queued by
  then, it reports "queued" (exit 0: the message is stored, the daemon will get to it).
- no daemon: this process processes the message itself, with the daemon's pipeline
  on a driver connection of its own (`store.direct.DirectDatabase`): no SQLAlchemy.

A database without its schema yet takes the full path: load the config, migrate, commit
through the store, then the same as above. Exit 0 stored, 75 on a transient failure,
never non-zero because of the content.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import (
    EX_OK,
    EX_TEMPFAIL,
    CliError,
    Exit,
    print_json,
    read_message,
    settings,
)
from maildesk.cli.parser import Adder

if TYPE_CHECKING:
    from maildesk.config import Settings
    from maildesk.store.direct import Writable

WAIT = 10.0  # seconds to wait for a running daemon's result (--wait)


def _commit_fast(args: argparse.Namespace, raw: bytes) -> tuple[int, str] | None:
    """Commit without pydantic or SQLAlchemy (see intake.queue): the inbox id and the
    database URL; None when that path does not apply and the full one must run."""
    import sqlite3

    from maildesk.intake import queue

    config = args.config or os.environ.get("MAILDESK_CONFIG", "").strip()
    try:
        url = queue.database_url(os.path.expanduser(config)) if config else None
        inbox_id = url and queue.commit(
            url, raw, envelope_from=args.sender,
            envelope_to=tuple(a.lower() for a in args.recipient or ()),
            origin=None if args.file in (None, "-") else str(args.file)[:500])
    except queue.QueueConfigError:
        return None  # the full path reports the config problem (exit 75)
    except sqlite3.Error as exc:
        raise CliError(f"database unavailable, try again later: {exc}", EX_TEMPFAIL) from exc
    return (inbox_id, url) if inbox_id and url else None


def _daemon_result(inbox_id: int, url: str, wait: float) -> dict[str, Any] | None:
    """Ring the doorbell of a daemon of this database and wait for its result; None when
    no daemon answers."""
    from maildesk.intake import doorbell, queue

    if not doorbell.ring(url, inbox_id):
        return None
    done = queue.wait_for_result(url, inbox_id, wait) if wait > 0 else None
    if done is None:
        return _result(inbox_id, "queued", None, "stored; the running daemon processes it")
    state, ticket, reason = done
    return _result(inbox_id, state, ticket, reason)


def _result(inbox_id: int, state: str, ticket: int | None, reason: str | None) -> dict[str, Any]:
    return {"inbox": inbox_id, "ticket": ticket, "state": state, "reason": reason}


def _answer(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print_json(result)
    else:
        ticket = f" ticket #{result['ticket']}" if result["ticket"] else ""
        print(f"inbox {result['inbox']}: {result['state']}{ticket}")
    return EX_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    raw = read_message(args.file)
    fast = _commit_fast(args, raw)
    if fast is not None:
        inbox_id, url = fast
        found = (_result(inbox_id, "queued", None, None) if args.queue
                 else _daemon_result(inbox_id, url, args.wait))
        if found is not None:
            Exit.skip_teardown = True  # committed and answered: leave at once (see cli.run)
            return _answer(args, found)
        loaded = settings(args)
        return _done(args, _process(loaded, _direct(loaded), inbox_id))
    loaded = settings(args)
    store = _direct(loaded)
    inbox_id = _commit(args, store, raw)
    if args.queue:
        return _done(args, _result(inbox_id, "queued", None, None), store)
    found = _daemon_result(inbox_id, store.url, args.wait)
    return _done(args, found or _process(loaded, store, inbox_id), store)


def _done(args: argparse.Namespace, result: dict[str, Any], db: Writable | None = None) -> int:
    """Answer; everything is committed and the connection closed, so leave without the
    interpreter's teardown (freeing the pipeline's imports: ~10 ms of the process)."""
    if db is not None:
        db.dispose()
    code = _answer(args, result)
    Exit.skip_teardown = True
    return code


def _direct(loaded: Settings) -> Writable:
    from maildesk.app import open_direct

    return open_direct(loaded)


def _commit(args: argparse.Namespace, db: Writable, raw: bytes) -> int:
    """Commit through the store (PostgreSQL; a database that needs its schema first)."""
    from maildesk.domain import Source
    from maildesk.identity import identity
    from maildesk.store import inbox

    message_id, digest = identity(raw)
    row = inbox.new_row(
        raw, source=Source.CLI, message_id=message_id, content_hash=digest,
        envelope_from=args.sender, envelope_to=tuple(a.lower() for a in args.recipient or ()),
        origin=None if args.file in (None, "-") else str(args.file)[:500],
    )
    return inbox.add(db, row)


def _process(loaded: Settings, db: Writable, inbox_id: int) -> dict[str, Any]:
    """Process a committed message in this process: no daemon is there to do it. The
    daemon's pipeline, statement for statement, on a driver connection (see
    store.direct.DirectDatabase)."""
    from maildesk.app import build_pipeline
    from maildesk.store import StoreUnavailable

    try:
        outcome = build_pipeline(loaded, db).process(inbox_id)
    except StoreUnavailable as exc:  # stored; the daemon or `inbox retry` processes it later
        return _result(inbox_id, "queued", None, f"stored, processing deferred: {exc}")
    finally:
        db.dispose()
    return _result(inbox_id, outcome.state.value, outcome.ticket_id, outcome.reason)


def register(sub: Any, add: Adder) -> None:
    ing = add(sub, "ingest", cmd_ingest, "store (and process) one message")
    ing.add_argument("file", nargs="?", default="-", help="message file, or - for stdin")
    ing.add_argument("--queue", action="store_true", help="only store; the daemon processes it")
    ing.add_argument("--sender", help="envelope sender, as the MTA passes it")
    ing.add_argument("--recipient", action="append", help="envelope recipient (repeatable)")
    ing.add_argument("--wait", type=float, default=WAIT, metavar="SECONDS",
                     help="with a daemon running: how long to wait for its result before "
                          f"answering 'queued' (default {WAIT:g})")
