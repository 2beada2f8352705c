"""`maildesk tickets list` and `maildesk tickets show ID [--full]`.

`--full` prints each entry's whole text, quoted history and signature included (SPEC §3):
it parses the entry's raw message again (kept in `inbox_raw`). Storing the whole text as
well would double what every entry costs to write, for a command run now and then; a
parse is a millisecond per entry.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from maildesk.cli.common import (
    EX_OK,
    CliError,
    non_negative_int,
    positive_int,
    print_json,
    reader,
    settings,
    usage_error,
)
from maildesk.cli.parser import Adder, group

if TYPE_CHECKING:
    from maildesk.domain import EntryView, TicketView
    from maildesk.store import tickets
    from maildesk.store.direct import Readable


def ticket_json(t: TicketView) -> dict[str, Any]:
    from maildesk.cli.sla import due_fields

    return {
        "id": t.id, "subject": t.subject, "status": t.status.value, "priority": t.priority.value,
        "queue": t.queue, "assignee": t.assignee, "requester": t.requester, "tags": t.tags,
        "cc": t.cc, "created_at": t.created_at, "updated_at": t.updated_at,
        "merged_into": t.merged_into, "linked": t.linked, **due_fields(t),
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

    loaded = settings(args)
    known = {loaded.default_queue, *(q.name for q in loaded.queues)}
    if args.queue is not None and args.queue not in known:
        raise usage_error(f"unknown queue {args.queue!r} (known: {', '.join(sorted(known))})")
    found = tickets.page(reader(loaded), status=args.status, queue=args.queue,
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

    db = reader(settings(args))
    with db.read_raw() as r:
        row = tickets.get_row(r, args.id)
        if row is None:
            raise CliError(f"no ticket #{args.id}")
        view = tickets.view(r, row)
        entries = tickets.entries(r, view.id)
    whole = _whole_texts(db, entries) if args.full else {}
    if args.json:
        print_json({**ticket_json(view), "entries": [
            {**entry_json(e), **({"full_body": whole.get(e.id, e.body)} if args.full else {})}
            for e in entries]})
        return EX_OK
    print(f"#{view.id} {view.subject}\n  status {view.status.value}, priority "
          f"{view.priority.value}, queue {view.queue}, assignee {view.assignee or '-'}\n"
          f"  requester {view.requester}, cc {', '.join(view.cc) or '-'}, "
          f"tags {' '.join(view.tags) or '-'}, linked {view.linked or '-'}")
    if view.sla_policy:
        from maildesk.cli.sla import due_fields

        due = due_fields(view)
        print(f"  SLA {view.sla_policy}: " + ", ".join(
            f"{t.replace('_', ' ')} due {due[f'{t}_due']:%Y-%m-%d %H:%M} UTC"
            + {True: " (met)", False: " (breached)"}.get(due[f"{t}_met"], "")
            for t in ("first_response", "next_response", "resolution") if due[f"{t}_due"])
            + " (`maildesk sla show` explains them)")
    for e in entries:
        flag = "" if e.verified is not False else " (unverified)"
        print(f"\n--- {e.kind.value}{flag} from {e.from_addr} at {e.created_at:%Y-%m-%d %H:%M} "
              f"[{e.thread_rule}: {e.thread_reason}]\n"
              f"{_shown_text(e, whole)}")
        for name, ctype, size in e.attachments:
            print(f"  [attachment] {name} ({ctype}, {size} bytes)")
    return EX_OK


def _shown_text(e: EntryView, whole: dict[int, str]) -> str:
    if e.id in whole:
        return whole[e.id].strip()
    return "(being read: body and attachments follow)" if e.pending else e.body.strip()


def _whole_texts(db: Readable, entries: list[EntryView]) -> dict[int, str]:
    """entry id -> the whole text of its raw message (entries from mail only)."""
    from maildesk.parse import parse_message
    from maildesk.store import inbox

    by_inbox = {e.inbox_id: e.id for e in entries if e.inbox_id is not None}
    raws = inbox.load_raw(db, list(by_inbox))
    return {by_inbox[i]: parse_message(raw).text for i, raw in raws.items()}


def register(sub: Any, add: Adder) -> None:
    tk = group(sub, "tickets", "tickets")
    tl = add(tk, "list", cmd_list, "list tickets, newest first")
    tl.add_argument("--status", choices=["new", "open", "pending", "solved", "closed"])
    tl.add_argument("--queue", help="a queue of the config")
    tl.add_argument("--limit", type=non_negative_int, default=50,
                    help="tickets per page (0: all; default 50)")
    tl.add_argument("--before", type=positive_int, metavar="ID",
                    help="the page of tickets older than ID")
    show = add(tk, "show", cmd_show, "show one ticket")
    show.add_argument("id", type=positive_int)
    show.add_argument("--full", action="store_true",
                      help="whole texts, quoted history and signatures included")
