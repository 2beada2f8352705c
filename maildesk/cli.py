"""The `maildesk` command line (SPEC §3).

Imports are deferred into the commands: `maildesk ingest --queue` runs once per
message from an MTA pipe and must not pay for the daemon's imports.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maildesk.config import Settings
    from maildesk.domain import EntryView, TicketView
    from maildesk.store import Database
    from maildesk.store.inbox import InboxItem
    from maildesk.store.outbox import OutboxItem

EX_OK, EX_FAIL, EX_TEMPFAIL = 0, 1, 75


class CliError(Exception):
    def __init__(self, message: str, code: int = EX_FAIL) -> None:
        super().__init__(message)
        self.code = code


# --- helpers ------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
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


def _db(settings: Settings, *, migrate: bool = True) -> Database:
    from maildesk.app import open_database

    return open_database(settings, migrate=migrate)


def _read_message(path: str | None) -> bytes:
    if path in (None, "-"):
        return sys.stdin.buffer.read()
    with open(str(path), "rb") as f:  # not pathlib: `ingest --queue` starts once per message
        return f.read()


def _print_json(value: Any) -> None:
    import json  # here, like the other imports: `ingest --queue` starts once per message

    print(json.dumps(value, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    from datetime import datetime

    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _ticket_json(t: TicketView) -> dict[str, Any]:
    return {
        "id": t.id, "subject": t.subject, "status": t.status.value, "priority": t.priority.value,
        "queue": t.queue, "assignee": t.assignee, "requester": t.requester, "tags": t.tags,
        "cc": t.cc, "created_at": t.created_at, "updated_at": t.updated_at,
        "merged_into": t.merged_into, "linked": t.linked,
    }


def _entry_json(e: EntryView) -> dict[str, Any]:
    return {
        "id": e.id, "kind": e.kind.value, "from": e.from_addr, "subject": e.subject,
        "body": e.body, "created_at": e.created_at, "message_id": e.message_id,
        "verified": e.verified, "thread_rule": e.thread_rule, "thread_reason": e.thread_reason,
        "inbox": e.inbox_id, "pending": e.pending,
        "attachments": [{"filename": n, "content_type": t, "size": z} for n, t, z in e.attachments],
    }


def _outbox_json(i: OutboxItem) -> dict[str, Any]:
    return {
        "id": i.id, "ticket": i.ticket_id, "template": i.template, "state": i.state,
        "recipients": list(i.recipients), "message_id": i.message_id, "automatic": i.automatic,
        "attempts": i.attempts, "created_at": i.created_at, "next_attempt_at": i.next_attempt_at,
        "sent_at": i.sent_at, "last_error": i.last_error,
    }


def _inbox_json(i: InboxItem) -> dict[str, Any]:
    return {
        "id": i.id, "message_id": i.message_id, "source": i.source, "state": i.state.value,
        "reason": i.reason, "ticket": i.ticket_id, "received_at": i.received_at,
        "envelope_from": i.envelope_from, "size": i.size, "attempts": i.attempts,
    }


# --- commands -----------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"ok: {args.config or 'MAILDESK_CONFIG'} ({settings.desk.address})")
    return EX_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    _db(_settings(args), migrate=False).upgrade()
    print("database is up to date")
    return EX_OK


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
        _print_json({"inbox": inbox_id, "ticket": None, "state": "queued", "reason": None})
    else:
        print(f"inbox {inbox_id}: queued")
    global _skip_teardown
    _skip_teardown = True
    return EX_OK


def cmd_ingest(args: argparse.Namespace) -> int:
    raw = _read_message(args.file)
    if args.queue:
        queued = _queue_only(args, raw)
        if queued is not None:
            return queued
    from maildesk.domain import Source
    from maildesk.identity import identity
    from maildesk.store import inbox

    settings = _settings(args)
    db = _db(settings)
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
            outcome = build_pipeline(settings, db).process(inbox_id)
            result.update(ticket=outcome.ticket_id, state=outcome.state.value,
                          reason=outcome.reason)
        except StoreUnavailable as exc:  # stored; the daemon or `inbox retry` processes it later
            result["reason"] = f"stored, processing deferred: {exc}"
    if args.json:
        _print_json(result)
    else:
        ticket = f" ticket #{result['ticket']}" if result["ticket"] else ""
        print(f"inbox {inbox_id}: {result['state']}{ticket}")
    return EX_OK


def cmd_tickets_list(args: argparse.Namespace) -> int:
    from maildesk.store import tickets

    db = _db(_settings(args))
    with db.read() as s:
        views = tickets.list_views(s, status=args.status, queue=args.queue)
    if args.json:
        _print_json([_ticket_json(t) for t in views])
        return EX_OK
    for t in views:
        print(f"#{t.id:<6} {t.status.value:<8} {t.priority.value:<7} {t.queue:<12} "
              f"{t.requester:<32} {t.subject[:60]}")
    return EX_OK


def cmd_tickets_show(args: argparse.Namespace) -> int:
    from maildesk.store import tickets

    db = _db(_settings(args))
    with db.read() as s:
        row = tickets.get_row(s, args.id)
        if row is None:
            raise CliError(f"no ticket #{args.id}")
        view = tickets.view(s, row)
        entries = tickets.entries(s, view.id)
    if args.json:
        _print_json({**_ticket_json(view), "entries": [_entry_json(e) for e in entries]})
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


def cmd_inbox_list(args: argparse.Namespace) -> int:
    from maildesk.domain import InboxState
    from maildesk.store import inbox

    db = _db(_settings(args))
    items = inbox.list_items(db, state=InboxState.FAILED if args.failed else None)
    if args.json:
        _print_json([_inbox_json(i) for i in items])
        return EX_OK
    for i in items:
        ticket = f"#{i.ticket_id}" if i.ticket_id else "-"
        print(f"{i.id:<7} {i.state.value:<10} {ticket:<7} {i.source:<5} "
              f"<{i.message_id or ''}> {i.reason or ''}")
    return EX_OK


def cmd_inbox_retry(args: argparse.Namespace) -> int:
    from maildesk.app import build_pipeline
    from maildesk.store import inbox

    settings = _settings(args)
    db = _db(settings)
    if not inbox.requeue(db, args.id):
        raise CliError(f"no inbox message {args.id}")
    outcome = build_pipeline(settings, db).process(args.id)
    ticket = f" ticket #{outcome.ticket_id}" if outcome.ticket_id else ""
    print(f"inbox {args.id}: {outcome.state.value}{ticket} {outcome.reason or ''}".rstrip())
    return EX_OK if outcome.state.value != "failed" else EX_FAIL


def cmd_explain(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from maildesk.app import build_pipeline

    raw = _read_message(args.file)
    settings = _settings(args)
    result = build_pipeline(settings, _db(settings)).explain(raw)
    mail, c, sender, d, o = (result.mail, result.classification, result.sender,
                             result.decision, result.outcome)
    report: dict[str, Any] = {
        "parse": {"parser": mail.parser, "message_id": mail.message_id, "from": mail.from_addr,
                  "subject": mail.subject, "to": list(mail.to), "cc": list(mail.cc),
                  "in_reply_to": list(mail.in_reply_to), "references": list(mail.references),
                  "attachments": [a.filename for a in mail.attachments],
                  "defects": list(mail.defects)},
        "classification": asdict(c) if c else None,
        "sender": asdict(sender) if sender else None,
        "thread": {"ticket": d.ticket_id, "rule": d.rule.value, "reason": d.reason,
                   "merge": list(d.merge), "link": list(d.link_to)} if d else None,
        "outcome": {"state": o.state.value, "ticket": o.ticket_id, "reason": o.reason}
        if o else None,
        "actions": result.actions,
    }
    if args.json:
        _print_json(report)
        return EX_OK
    print(f"parsed with {mail.parser}: <{mail.message_id or ''}> from {mail.from_addr} "
          f"subject {mail.subject!r}")
    if c:
        print(f"loop check: automatic={c.automatic or 'no'} bulk={c.bulk or 'no'}")
    if sender:
        print(f"sender: {sender.address} ({sender.why})")
    if d:
        target = f"ticket #{d.ticket_id}" if d.ticket_id else "a new ticket"
        print(f"thread: {target} by rule {d.rule.value}: {d.reason}")
    if o:
        print(f"outcome: {o.state.value}" + (f" ({o.reason})" if o.reason else ""))
    for line in result.actions:
        print(f"action: {line}")
    print("(dry run: nothing was stored or sent)")
    return EX_OK


def cmd_outbox_list(args: argparse.Namespace) -> int:
    from maildesk.store import outbox

    items = outbox.list_items(_db(_settings(args)), state=args.state)
    if args.json:
        _print_json([_outbox_json(i) for i in items])
        return EX_OK
    for i in items:
        ticket = f"#{i.ticket_id}" if i.ticket_id else "-"
        print(f"{i.id:<7} {i.state:<8} {ticket:<7} {i.template:<21} {','.join(i.recipients)} "
              f"tries {i.attempts}" + (f": {i.last_error}" if i.last_error else ""))
    return EX_OK


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from maildesk.store import outbox

    if not outbox.retry(_db(_settings(args)), args.id):
        raise CliError(f"no outbox message {args.id} to retry (unknown, or already sent)")
    print(f"outbox {args.id}: pending; the daemon sends it within seconds")
    return EX_OK


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from maildesk.report import TicketFacts, report
    from maildesk.store import tickets

    since = datetime.fromisoformat(args.since) if args.since else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with _db(_settings(args)).read() as s:
        facts = [TicketFacts(
            queue=t.queue, assignee=t.assignee, status=t.status, created_at=t.created_at,
            first_response_at=t.first_response_at, solved_at=t.solved_at,
            first_response_due=t.first_response_due, resolution_due=t.resolution_due,
        ) for t in tickets.report_rows(s, since)]
    result = report(facts)
    if args.json:
        _print_json(result)
        return EX_OK
    print(f"{'':<24} {'tickets':>7} {'1st resp med':>12} {'p90':>8} {'resolve med':>12} {'p90':>8}")
    rows = [("total", result["total"])] + [(f"queue {q}", v) for q, v in result["by_queue"].items()]
    rows += [(f"agent {a}", v) for a, v in result["by_agent"].items()]
    for name, v in rows:
        fr, rs = v["first_response_seconds"], v["resolution_seconds"]
        print(f"{name[:24]:<24} {v['tickets']:>7} {_hours(fr['median']):>12} "
              f"{_hours(fr['p90']):>8} {_hours(rs['median']):>12} {_hours(rs['p90']):>8}")
    return EX_OK


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f}h"


def cmd_serve(args: argparse.Namespace) -> int:
    from maildesk.config import config_path_from
    from maildesk.service import run

    return run(_settings(args), config_path_from(args.config))


# --- parser -------------------------------------------------------------------------------


Adder = Callable[[Any, str, Callable[[argparse.Namespace], int], str], Any]


def _serve(sub: Any, add: Adder) -> None:
    add(sub, "serve", cmd_serve, "run the daemon")


def _check_config(sub: Any, add: Adder) -> None:
    add(sub, "check-config", cmd_check_config, "validate the config file")


def _db_commands(sub: Any, add: Adder) -> None:
    db = _group(sub, "db", "database", dest="db_command")
    add(db, "upgrade", cmd_db_upgrade, "apply schema migrations")


def _ingest(sub: Any, add: Adder) -> None:
    ing = add(sub, "ingest", cmd_ingest, "store (and process) one message")
    ing.add_argument("file", nargs="?", default="-", help="message file, or - for stdin")
    ing.add_argument("--queue", action="store_true", help="only store; the daemon processes it")
    ing.add_argument("--sender", help="envelope sender, as the MTA passes it")
    ing.add_argument("--recipient", action="append", help="envelope recipient (repeatable)")


def _tickets(sub: Any, add: Adder) -> None:
    tk = _group(sub, "tickets", "tickets")
    tl = add(tk, "list", cmd_tickets_list, "list tickets")
    tl.add_argument("--status")
    tl.add_argument("--queue")
    add(tk, "show", cmd_tickets_show, "show one ticket").add_argument("id", type=int)


def _inbox(sub: Any, add: Adder) -> None:
    ib = _group(sub, "inbox", "raw intake")
    add(ib, "list", cmd_inbox_list, "list inbox messages").add_argument(
        "--failed", action="store_true")
    add(ib, "retry", cmd_inbox_retry, "reprocess a message").add_argument("id", type=int)


def _outbox(sub: Any, add: Adder) -> None:
    ob = _group(sub, "outbox", "outgoing mail")
    add(ob, "list", cmd_outbox_list, "list outgoing messages").add_argument(
        "--state", choices=["pending", "sent", "failed", "bounced"])
    add(ob, "retry", cmd_outbox_retry, "send a failed message again").add_argument("id", type=int)


def _explain(sub: Any, add: Adder) -> None:
    add(sub, "explain", cmd_explain, "dry run for one message").add_argument("file")


def _report(sub: Any, add: Adder) -> None:
    add(sub, "report", cmd_report, "volumes, response and resolution times").add_argument(
        "--since", help="ISO date or time, e.g. 2026-11-01")


COMMANDS: dict[str, Callable[[Any, Adder], None]] = {
    "serve": _serve, "check-config": _check_config, "db": _db_commands, "ingest": _ingest,
    "tickets": _tickets, "inbox": _inbox, "outbox": _outbox, "explain": _explain,
    "report": _report,
}


def _group(sub: Any, name: str, hlp: str, dest: str = "sub") -> Any:
    """A command made of subcommands (`maildesk tickets list`)."""
    return sub.add_parser(name, help=hlp, formatter_class=_Formatter).add_subparsers(
        dest=dest, required=True)


class _Formatter(argparse.HelpFormatter):
    """argparse's help at the terminal's width, found the way shutil.get_terminal_size
    finds it, without importing shutil (and bz2, lzma) into every `ingest --queue`."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that command's branch (argparse takes a few
    milliseconds per subcommand, and an MTA pipe starts one process per message)."""
    common = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    common.add_argument("--config", help="config file (default: $MAILDESK_CONFIG)")
    common.add_argument("--json", action="store_true", help="print JSON")
    p = argparse.ArgumentParser(prog="maildesk", description="Email-driven help desk.",
                                formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(parent: Any, name: str, func: Callable[[argparse.Namespace], int], hlp: str) -> Any:
        sp = parent.add_parser(name, parents=[common], help=hlp, formatter_class=_Formatter)
        sp.set_defaults(func=func)
        return sp

    for name, branch in COMMANDS.items():
        if only is None or only not in COMMANDS or name == only:
            branch(sub, add)
    return p


# Set once `ingest --queue` has committed its message and printed its answer: see run().
_skip_teardown = False


def run() -> None:
    """The `maildesk` command: main(), then exit. An MTA starts `ingest --queue` once per
    message, and the interpreter's teardown (freeing every imported module) is ~7 ms of
    its ~50: with the message committed and the answer flushed there is nothing left to
    clean up, so that path leaves at once."""
    code = main()
    if _skip_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except CliError as exc:
        print(f"maildesk: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"maildesk: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if args.command == "ingest" else EX_FAIL
    except Exception as exc:
        # imported here, not above: `ingest --queue` must not pay for SQLAlchemy
        from maildesk.store.db import StoreUnavailable

        if not isinstance(exc, StoreUnavailable):
            raise
        print(f"maildesk: database unavailable, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL


if __name__ == "__main__":
    run()
