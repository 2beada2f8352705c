"""`maildesk ingest [--queue] [FILE|-]`: one message from an MTA pipe, a file or stdin.

`--queue` on SQLite takes a path of the standard library only (`intake.queue`): an MTA
starts one process per message. Without `--queue` the message is committed and processed
in this process.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from maildesk.cli.common import (
    EX_OK,
    EX_TEMPFAIL,
    CliError,
    Exit,
    database,
    print_json,
    read_message,
    settings,
)
from maildesk.cli.parser import Adder


def _queue_only(args: argparse.Namespace, raw: bytes) -> int | None:
    """`ingest --queue` on SQLite, with the standard library only (see intake.queue);
    None when that path does not apply and the full one must run."""
    import sqlite3

    from maildesk.intake import queue

    config = args.config or os.environ.get("MAILDESK_CONFIG", "").strip()
    try:
        db = queue.sqlite_path(os.path.expanduser(config)) if config else None
        inbox_id = db and queue.enqueue(
            db, raw, envelope_from=args.sender,
            envelope_to=tuple(a.lower() for a in args.recipient or ()),
            origin=None if args.file in (None, "-") else str(args.file)[:500])
    except queue.QueueConfigError:
        return None  # the full path reports the config problem (exit 75)
    except sqlite3.Error as exc:
        raise CliError(f"database unavailable, try again later: {exc}", EX_TEMPFAIL) from exc
    if not inbox_id:
        return None
    if args.json:
        print_json({"inbox": inbox_id, "ticket": None, "state": "queued", "reason": None})
    else:
        print(f"inbox {inbox_id}: queued")
    Exit.skip_teardown = True
    return EX_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    raw = read_message(args.file)
    if args.queue:
        queued = _queue_only(args, raw)
        if queued is not None:
            return queued
    from maildesk.domain import Source
    from maildesk.identity import identity
    from maildesk.store import inbox

    loaded = settings(args)
    db = database(loaded)
    message_id, digest = identity(raw)
    row = inbox.new_row(
        raw, source=Source.CLI, message_id=message_id, content_hash=digest,
        envelope_from=args.sender, envelope_to=tuple(a.lower() for a in args.recipient or ()),
        origin=None if args.file in (None, "-") else str(args.file)[:500],
    )
    inbox_id = inbox.add(db, row)
    result: dict[str, Any] = {"inbox": inbox_id, "ticket": None, "state": "queued", "reason": None}
    if not args.queue:
        from maildesk.app import build_pipeline
        from maildesk.store import StoreUnavailable

        try:
            outcome = build_pipeline(loaded, db).process(inbox_id)
            result.update(ticket=outcome.ticket_id, state=outcome.state.value,
                          reason=outcome.reason)
        except StoreUnavailable as exc:  # stored; the daemon or `inbox retry` processes it later
            result["reason"] = f"stored, processing deferred: {exc}"
    if args.json:
        print_json(result)
    else:
        ticket = f" ticket #{result['ticket']}" if result["ticket"] else ""
        print(f"inbox {inbox_id}: {result['state']}{ticket}")
    return EX_OK


def register(sub: Any, add: Adder) -> None:
    ing = add(sub, "ingest", cmd_ingest, "store (and process) one message")
    ing.add_argument("file", nargs="?", default="-", help="message file, or - for stdin")
    ing.add_argument("--queue", action="store_true", help="only store; the daemon processes it")
    ing.add_argument("--sender", help="envelope sender, as the MTA passes it")
    ing.add_argument("--recipient", action="append", help="envelope recipient (repeatable)")
