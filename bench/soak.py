"""Memory soak: the RSS of a real `maildesk serve` under steady mail (issue 13, not in CI).

    python bench/soak.py [--minutes 30] [--rate 50] [--interval 10] [--connections 2]

Sends the workload of bench/ingest.py (conversations of new mail and replies, UTF-8 and
ISO-8859-1 subjects, some with a PDF attachment), generated as it goes so the client's own
memory stays flat, at `--rate` msg/s over SMTP to a daemon on a fresh SQLite database, for
`--minutes`. Every `--interval` seconds it samples the daemon's RSS (VmRSS of the process
and its children) and how far processing lags. At the end it prints min/max RSS, the
median of the first and of the last 5 minutes, and whether the last is within ±10% of the
first ("flat"), plus how many messages were accepted, refused and processed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import DESK, Daemon, _message  # noqa: E402 - a sibling script, not a package

WINDOW_S = 300  # "first 5 minutes" and "last 5 minutes"
FLAT = 0.10


def workload(seed: int = 7) -> Iterator[bytes]:
    """An endless stream of bench/ingest.py's messages (replies go to one of the 200 newest
    conversations, which keep their last ten ids), so the client's memory stays flat."""
    rng = random.Random(seed)
    conversations: list[list[str]] = []
    for i in itertools.count():
        if not conversations or rng.random() < 0.30:
            conversations.append([])
            del conversations[:-200]
            conv = len(conversations) - 1
        else:
            conv = rng.randrange(len(conversations))
        thread = conversations[conv]
        conv_no = i if not thread else int(thread[0].split("-")[2])
        msgid = f"soak-{seed}-{conv_no}-{i}@customer{conv_no % 50}.example"
        yield _message(rng, i, conv_no, thread, msgid)
        thread.append(msgid)
        del thread[1:-9]  # the first id names the conversation


@dataclass
class Counts:
    accepted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def sender(port: int, rate: float, connections: int, until: float, counts: Counts) -> None:
    """Paced SMTP clients: message j goes at start + j / rate."""
    import smtplib

    stream = workload()
    lock = threading.Lock()
    start = time.time()
    next_j = itertools.count()

    def client() -> None:
        smtp: smtplib.SMTP | None = None
        while True:
            with lock:
                j = next(next_j)
                raw = next(stream)
            at = start + j / rate
            if at > until or time.time() > until:  # behind the pace: the clock still ends it
                break
            time.sleep(max(0.0, at - time.time()))
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", port, timeout=60)
                    smtp.ehlo("soak.example")
                smtp.mail(f"customer{j % 500}@customer.example")
                smtp.rcpt(DESK)
                code, _ = smtp.data(raw)
            except (smtplib.SMTPException, OSError) as exc:
                code = 0
                with lock:
                    counts.errors.append(repr(exc))
                smtp = None
            with lock:
                if code == 250:
                    counts.accepted += 1
                else:
                    counts.refused += 1
        if smtp is not None:
            smtp.quit()

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def rss_kb(pid: int) -> int:
    """VmRSS of the process and of its children (worker processes, if any)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total


def backlog(db: Path) -> tuple[int, int, int]:
    """(processed, still queued, follow-ups waiting) inbox rows."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        row = conn.execute("SELECT (SELECT count(*) FROM inbox WHERE state != 'queued'),"
                           " (SELECT count(*) FROM inbox WHERE state = 'queued'),"
                           " (SELECT count(*) FROM deferred)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=50.0, help="messages per second")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the daemon's folder")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="maildesk-soak-"))
    daemon = Daemon(folder)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    print(f"soak: {args.rate:g} msg/s for {args.minutes:g} min over {args.connections} "
          f"connection(s), RSS every {args.interval:g} s; daemon pid {pid}, folder {folder}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    counts = Counts()
    t0 = time.time()
    until = t0 + args.minutes * 60
    feeder = threading.Thread(target=sender, args=(daemon.port, args.rate, args.connections,
                                                   until, counts))
    feeder.start()
    samples: list[tuple[float, int]] = []
    while feeder.is_alive():
        elapsed = time.time() - t0
        kb = rss_kb(pid)
        samples.append((elapsed, kb))
        done, queued, follow = backlog(daemon.db)
        print(f"{elapsed:7.0f} s  RSS {kb / 1024:6.1f} MB  accepted {counts.accepted:6d}  "
              f"processed {done:6d}  queued {queued:5d}  follow-ups {follow:5d}  "
              f"load {os.getloadavg()[0]:.2f}",
              flush=True)
        feeder.join(timeout=max(0.0, t0 + len(samples) * args.interval - time.time()))
    drained = time.time()
    while any(backlog(daemon.db)[1:]) and time.time() - drained < 120:
        time.sleep(0.5)
    final_kb = rss_kb(pid)
    code = daemon.stop()
    done, queued, _ = backlog(daemon.db)
    report(samples, args.minutes)
    print(f"messages: {counts.accepted} accepted ({counts.accepted / (args.minutes * 60):.1f}"
          f" msg/s), {counts.refused} refused, {done} processed, {queued} still queued "
          f"{time.time() - drained:.0f} s after the last; RSS after draining "
          f"{final_kb / 1024:.1f} MB; daemon exit {code}")
    for line in counts.errors[:5]:
        print("client error:", line)
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if code == 0 and not counts.refused else 1


def report(samples: list[tuple[float, int]], minutes: float) -> None:
    mb = [kb / 1024 for _, kb in samples]
    end = samples[-1][0]
    first = [kb / 1024 for t, kb in samples if t <= WINDOW_S]
    last = [kb / 1024 for t, kb in samples if t >= end - WINDOW_S]
    f, la = statistics.median(first), statistics.median(last)
    change = (la - f) / f
    verdict = "flat" if abs(change) <= FLAT else "NOT flat"
    print(f"RSS over {minutes:g} min ({len(samples)} samples): min {min(mb):.1f} MB, "
          f"max {max(mb):.1f} MB; median first 5 min {f:.1f} MB, last 5 min {la:.1f} MB "
          f"({change:+.1%}): {verdict} (±{FLAT:.0%})")


if __name__ == "__main__":
    sys.exit(main())
