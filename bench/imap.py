"""Benchmark: the first sync of a large mailbox, from Dovecot on loopback to tickets.

    python bench/imap.py [--messages 10000] [--batch 100] [--db-url URL] [--seen]

It starts a throwaway Dovecot (tests/dovecot-test-server.sh), writes the
generated messages straight into alice's Maildir (as a delivery agent would),
then runs the IMAP intake and the processing worker in this process, as the
daemon wires them, until every message is processed. It prints messages per
second end to end (APPEND-ready folder → tickets committed), the intake alone, the
follow-ups (bodies read, outgoing mail queued: pipeline.py) and the peak RSS of the
process. Targets: ≥ 500 msg/s end to end, RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlmodel import col, func, select  # noqa: E402

from maildesk.app import build_pipeline, open_database  # noqa: E402
from maildesk.config import load_settings  # noqa: E402
from maildesk.intake.imap import ImapIntake  # noqa: E402
from maildesk.store import Database, deferred  # noqa: E402
from maildesk.store.tables import InboxRow, TicketRow  # noqa: E402
from maildesk.worker import Worker  # noqa: E402
from tests.dovecot import Dovecot, dovecot_missing, remove, start_dovecot  # noqa: E402
from tests.helpers import message, write_config  # noqa: E402
from tests.test_imap import mailbox_toml  # noqa: E402

PER_THREAD = 4  # a question and three follow-ups
BODY = ("Hello,\n\nour order {k} has not arrived yet and the tracking page shows no update "
        "since last week. Could you check what happened?\n\n" + "Details: " + "x" * 900 + "\n")


def generate(n: int) -> Iterator[bytes]:
    """`n` messages in threads of PER_THREAD, ~1.5 KB each, realistic headers."""
    for i in range(n):
        k, j = divmod(i, PER_THREAD)
        root = f"<bench-{k}-0@customer.example>"
        yield message(
            frm=f"Customer {k} <customer{k}@customer.example>", subject=f"Order {k} missing",
            body=BODY.format(k=k) + f"Message {j}.\n", msgid=f"<bench-{k}-{j}@customer.example>",
            in_reply_to=root if j else None, references=[root] if j else None,
        )


def fill(server: Dovecot, n: int) -> float:
    started = time.monotonic()
    chunk: list[bytes] = []
    for raw in generate(n):
        chunk.append(raw)
        if len(chunk) == 1000:
            server.deliver("alice", "INBOX", *chunk)
            chunk = []
    server.deliver("alice", "INBOX", *chunk)
    return time.monotonic() - started


def index(server: Dovecot) -> float:
    """Let Dovecot index the new Maildir files (its cost, not ours), timed apart."""
    started = time.monotonic()
    with server.client("alice") as c:
        c.select_folder("INBOX", readonly=True)
    return time.monotonic() - started


def counts(db: Database) -> tuple[int, int, int]:
    """(messages committed, messages processed, follow-ups still to do). Index lookups
    only: this polls in the process it measures."""
    with db.read() as s:
        total = s.exec(select(func.max(InboxRow.id))).one() or 0
        queued = s.exec(select(func.count()).select_from(InboxRow)
                        .where(col(InboxRow.state) == "queued")).one()
    return int(total), int(total) - int(queued), deferred.count(db)


def run(server: Dovecot, work: Path, args: argparse.Namespace) -> dict[str, float]:
    cfg = write_config(work, args.db_url or f"sqlite:///{work}/bench.db", mailbox_toml(
        "bench", server, batch=args.batch, processed=None if args.seen else "Processed"))
    settings = load_settings(cfg)
    db = open_database(settings)
    worker = Worker(db, build_pipeline(settings, db), batch=args.worker_batch)
    intake = ImapIntake(settings, db, worker.wake)
    started = time.monotonic()
    if not args.intake_only:
        worker.start()
    intake.start()
    intake_done = processed = 0.0
    while True:
        total, done, waiting = counts(db)
        if total >= args.messages and not intake_done:
            intake_done = time.monotonic() - started
        if done >= args.messages and not processed:
            processed = time.monotonic() - started
        if (processed and not waiting) or (args.intake_only and intake_done):
            break
        threading.Event().wait(0.05)
    elapsed = time.monotonic() - started
    intake.stop(5)
    worker.stop(5)
    with db.read() as s:
        tickets = int(s.exec(select(func.count()).select_from(TicketRow)).one())
    db.dispose()
    return {"elapsed_s": processed, "settled_s": elapsed, "intake_s": intake_done,
            "tickets": tickets}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=100, help="mailbox batch_size")
    p.add_argument("--worker-batch", type=int, default=32, help="messages per processing commit")
    p.add_argument("--db-url", help="default: a fresh SQLite file")
    p.add_argument("--seen", action="store_true", help="flag \\Seen instead of MOVE")
    p.add_argument("--intake-only", action="store_true",
                   help="measure IMAP → committed inbox rows alone, without processing")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    why = dovecot_missing()
    if why:
        print(f"bench/imap.py: {why}", file=sys.stderr)
        return 2
    server = start_dovecot("dovecot-bench-")
    try:
        with tempfile.TemporaryDirectory(prefix="maildesk-bench-") as tmp:
            fill_s = fill(server, args.messages)
            index_s = index(server)
            res = run(server, Path(tmp), args)
    finally:
        remove(server)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "messages": args.messages, "tickets": res["tickets"],
        "end_to_end_msgs_per_s": round(args.messages / res["elapsed_s"], 1),
        "intake_msgs_per_s": round(args.messages / res["intake_s"], 1),
        "mail_queued_msgs_per_s": round(args.messages / res["settled_s"], 1),
        "elapsed_s": round(res["elapsed_s"], 2), "intake_s": round(res["intake_s"], 2),
        "maildir_fill_s": round(fill_s, 2), "dovecot_index_s": round(index_s, 2),
        "peak_rss_mb": round(rss_mb, 1),
    }
    if args.json:
        print(json.dumps(out))
    elif args.intake_only:
        print(f"first sync of {args.messages} messages, intake only (no processing): "
              f"{out['intake_msgs_per_s']} msg/s ({out['intake_s']} s); "
              f"peak RSS {out['peak_rss_mb']} MB")
    else:
        print(f"first sync of {args.messages} messages ({res['tickets']} tickets): "
              f"{out['end_to_end_msgs_per_s']} msg/s end to end ({out['elapsed_s']} s), "
              f"of which intake {out['intake_msgs_per_s']} msg/s while processing ran; "
              f"bodies read and mail queued {out['mail_queued_msgs_per_s']} msg/s; "
              f"peak RSS {out['peak_rss_mb']} MB")
    rate = out["intake_msgs_per_s" if args.intake_only else "end_to_end_msgs_per_s"]
    ok = rate >= 500 and rss_mb < 150
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
