"""`maildesk inbox list [--failed]` and `maildesk inbox retry ID`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import (
    EX_FAIL,
    EX_OK,
    CliError,
    database,
    positive_int,
    print_json,
    reader,
    settings,
)
from maildesk.cli.parser import Adder, group

if TYPE_CHECKING:
    from maildesk.store.inbox import InboxItem


def inbox_json(i: InboxItem) -> dict[str, Any]:
    return {
        "id": i.id, "message_id": i.message_id, "source": i.source, "state": i.state.value,
        "reason": i.reason, "ticket": i.ticket_id, "received_at": i.received_at,
        "envelope_from": i.envelope_from, "size": i.size, "attempts": i.attempts,
    }


def cmd_list(args: argparse.Namespace) -> int:
    from maildesk.domain import InboxState
    from maildesk.store import inbox

    items = inbox.list_items(reader(settings(args)),
                             state=InboxState.FAILED if args.failed else None)
    if args.json:
        print_json([inbox_json(i) for i in items])
        return EX_OK
    for i in items:
        ticket = f"#{i.ticket_id}" if i.ticket_id else "-"
        print(f"{i.id:<7} {i.state.value:<10} {ticket:<7} {i.source:<5} "
              f"<{i.message_id or ''}> {i.reason or ''}")
    return EX_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from maildesk.app import build_pipeline
    from maildesk.domain import InboxState
    from maildesk.store import inbox

    loaded = settings(args)
    db = database(loaded)
    before = inbox.requeue(db, args.id)
    if before is None:
        raise CliError(f"no inbox message {args.id}")
    if before in (InboxState.PROCESSED, InboxState.DUPLICATE):
        item = inbox.get(db, args.id)
        ticket = f" (ticket #{item.ticket_id})" if item and item.ticket_id else ""
        print(f"inbox {args.id}: already processed{ticket}; nothing to do")
        return EX_OK
    outcome = build_pipeline(loaded, db).process(args.id)
    ticket = f" ticket #{outcome.ticket_id}" if outcome.ticket_id else ""
    print(f"inbox {args.id}: {outcome.state.value}{ticket} {outcome.reason or ''}".rstrip())
    return EX_OK if outcome.state.value != "failed" else EX_FAIL


def register(sub: Any, add: Adder) -> None:
    ib = group(sub, "inbox", "raw intake")
    add(ib, "list", cmd_list, "list inbox messages").add_argument(
        "--failed", action="store_true")
    add(ib, "retry", cmd_retry, "reprocess a failed message").add_argument(
        "id", type=positive_int)
