"""`maildesk tickets list` and `maildesk tickets show ID`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import EX_OK, CliError, print_json, reader, settings
from maildesk.cli.parser import Adder, group

if TYPE_CHECKING:
    from maildesk.domain import EntryView, TicketView
    from maildesk.store import tickets


def ticket_json(t: TicketView) -> dict[str, Any]:
    return {
        "id": t.id, "subject": t.subject, "status": t.status.value, "priority": t.priority.value,
        "queue": t.queue, "assignee": t.assignee, "requester": t.requester, "tags": t.tags,
        "cc": t.cc, "created_at": t.created_at, "updated_at": t.updated_at,
        "merged_into": t.merged_into, "linked": t.linked,
    }


def entry_json(e: EntryView) -> dict[str, Any]:
    return {
        "id": e.id, "kind": e.kind.value, "from": e.from_addr, "subject": e.subject,
        "body": e.body, "created_at": e.created_at, "message_id": e.message_id,
        "verified": e.verified, "thread_rule": e.thread_rule, "thread_reason": e.thread_reason,
        "inbox": e.inbox_id, "pending": e.pending,
        "attachments": [{"filename": n, "content_type": t, "size": z} for n, t, z in e.attachments],
    }


def cmd_list(args: argparse.Namespace) -> int:
    from maildesk.store import tickets

    found = tickets.page(reader(settings(args)), status=args.status, queue=args.queue,
                         limit=args.limit, before=args.before)
    if args.json:
        print_json([ticket_json(t) for t in found.tickets])
        return EX_OK
    for t in found.tickets:
        print(f"#{t.id:<6} {t.status.value:<8} {t.priority.value:<7} {t.queue:<12} "
              f"{t.requester:<32} {t.subject[:60]}")
    print(_total_line(args, found))
    return EX_OK


def _total_line(args: argparse.Namespace, found: tickets.Page) -> str:
    """The last line of the text list: the total of the filter, and the next page."""
    what = " ".join(f"{k} {v}" for k, v in (("status", args.status), ("queue", args.queue))
                    if v)
    total, shown = found.total, len(found.tickets)
    line = f"{total} ticket{'' if total == 1 else 's'}" + (f" ({what})" if what else "")
    if args.before is not None:
        line += f", {shown} shown older than #{args.before}"
    elif shown < total:
        line += f", {shown} shown"
    if found.more:
        line += f"; next page: --before {found.tickets[-1].id}"
    return line


def cmd_show(args: argparse.Namespace) -> int:
    from maildesk.store import tickets

    with reader(settings(args)).read_raw() as r:
        row = tickets.get_row(r, args.id)
        if row is None:
            raise CliError(f"no ticket #{args.id}")
        view = tickets.view(r, row)
        entries = tickets.entries(r, view.id)
    if args.json:
        print_json({**ticket_json(view), "entries": [entry_json(e) for e in entries]})
        return EX_OK
    print(f"#{view.id} {view.subject}\n  status {view.status.value}, priority "
          f"{view.priority.value}, queue {view.queue}, assignee {view.assignee or '-'}\n"
          f"  requester {view.requester}, cc {', '.join(view.cc) or '-'}, "
          f"tags {' '.join(view.tags) or '-'}, linked {view.linked or '-'}")
    for e in entries:
        flag = "" if e.verified is not False else " (unverified)"
        print(f"\n--- {e.kind.value}{flag} from {e.from_addr} at {e.created_at:%Y-%m-%d %H:%M} "
              f"[{e.thread_rule}: {e.thread_reason}]\n"
              f"{'(being read: body and attachments follow)' if e.pending else e.body.strip()}")
        for name, ctype, size in e.attachments:
            print(f"  [attachment] {name} ({ctype}, {size} bytes)")
    return EX_OK


def register(sub: Any, add: Adder) -> None:
    tk = group(sub, "tickets", "tickets")
    tl = add(tk, "list", cmd_list, "list tickets, newest first")
    tl.add_argument("--status")
    tl.add_argument("--queue")
    tl.add_argument("--limit", type=int, default=50, help="tickets per page (0: all; default 50)")
    tl.add_argument("--before", type=int, metavar="ID", help="the page of tickets older than ID")
    add(tk, "show", cmd_show, "show one ticket").add_argument("id", type=int)
