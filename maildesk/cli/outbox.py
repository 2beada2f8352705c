"""`maildesk outbox list` and `maildesk outbox retry ID`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import (
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
    from maildesk.store.outbox import OutboxItem


def outbox_json(i: OutboxItem) -> dict[str, Any]:
    return {
        "id": i.id, "ticket": i.ticket_id, "template": i.template, "state": i.state,
        "recipients": list(i.recipients), "message_id": i.message_id, "automatic": i.automatic,
        "attempts": i.attempts, "created_at": i.created_at, "next_attempt_at": i.next_attempt_at,
        "sent_at": i.sent_at, "last_error": i.last_error,
    }


def cmd_list(args: argparse.Namespace) -> int:
    from maildesk.store import outbox

    items = outbox.list_items(reader(settings(args)), state=args.state)
    if args.json:
        print_json([outbox_json(i) for i in items])
        return EX_OK
    for i in items:
        ticket = f"#{i.ticket_id}" if i.ticket_id else "-"
        print(f"{i.id:<7} {i.state:<8} {ticket:<7} {i.template:<21} {','.join(i.recipients)} "
              f"tries {i.attempts}" + (f": {i.last_error}" if i.last_error else ""))
    return EX_OK


def cmd_retry(args: argparse.Namespace) -> int:
    from maildesk.store import outbox

    if not outbox.retry(database(settings(args)), args.id):
        raise CliError(f"no outbox message {args.id} to retry (unknown, or already sent)")
    print(f"outbox {args.id}: pending; the daemon sends it within seconds")
    return EX_OK


def register(sub: Any, add: Adder) -> None:
    ob = group(sub, "outbox", "outgoing mail")
    add(ob, "list", cmd_list, "list outgoing messages").add_argument(
        "--state", choices=["pending", "sending", "sent", "failed", "bounced"])
    add(ob, "retry", cmd_retry, "send a failed message again").add_argument("id", type=positive_int)
