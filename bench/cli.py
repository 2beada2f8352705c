"""CLI benchmark: how long an operator waits for a read command, and how fast an MTA pipe
can feed `maildesk ingest`, one process per message.

    python bench/cli.py [--tickets 2000] [--runs 10] [--ingest 40] [--json]

Fills a fresh SQLite desk with `--tickets` conversations' worth of generated mail (the
workload of bench/ingest.py, processed by the real pipeline, acks and notifications
queued), then runs each read command `--runs` times as its own process (the `maildesk`
entry point next to this Python, as an operator's shell starts it) and prints the median
wall time. Then `--ingest` new messages go through `maildesk ingest --json` one process
at a time, without a daemon (each process processes its message) and next to a running
`maildesk serve` (each process commits, rings the daemon and waits for its result):
msg/s (of the time in the processes), the median per process, and the states the
processes reported. Next to the daemon each alternates with an `ingest --queue` (a
process that only commits: the floor of one process per message). `python -c pass`
is timed too: on a busy machine everything is slower, the floor included.

Install the package regularly (`pip install .`) for figures an operator would see: an
editable install adds an import hook to every process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import Daemon, generate  # noqa: E402  (bench/ingest.py, next to this file)

READS = [
    ("tickets list", ["tickets", "list"]),
    ("tickets list --json", ["tickets", "list", "--json"]),
    ("tickets list --status open", ["tickets", "list", "--status", "open"]),
    ("tickets show ID", ["tickets", "show", "{ticket}"]),
    ("inbox list", ["inbox", "list"]),
    ("outbox list", ["outbox", "list"]),
    ("report", ["report"]),
]


def maildesk() -> list[str]:
    exe = Path(sys.executable).with_name("maildesk")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "maildesk.cli"]


def seed(config: Path, messages: list[bytes]) -> int:
    """Store and process `messages` through the real pipeline; the ticket with the most
    entries (for `tickets show`)."""
    from maildesk.app import build_pipeline, open_database
    from maildesk.config import load_settings
    from maildesk.domain import Source
    from maildesk.identity import identity
    from maildesk.store import inbox

    settings = load_settings(config)
    db = open_database(settings)
    pipeline = build_pipeline(settings, db)
    for i in range(0, len(messages), 256):
        rows = []
        for raw in messages[i:i + 256]:
            message_id, digest = identity(raw)
            rows.append(inbox.new_row(raw, source=Source.SMTP, message_id=message_id,
                                      content_hash=digest, envelope_to=("support@example.com",)))
        pipeline.process_batch(inbox.add_many(db, rows))
        while pipeline.follow_up(limit=256):
            pass
    with db.read_raw() as r:
        row = r.one("SELECT ticket_id FROM entry GROUP BY ticket_id ORDER BY count(*) DESC"
                    " LIMIT 1")
    db.dispose()
    assert row is not None
    return int(row[0])


def timed(argv: list[str], stdin: bytes | None = None) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.decode()}")
    return took, done.stdout


def reads(config: Path, ticket: int, runs: int) -> dict[str, float]:
    """Median seconds of each read command; the runs of the commands interleave, so a
    busy moment of the machine spreads over all of them."""
    times: dict[str, list[float]] = {name: [] for name, _ in READS}
    for _ in range(runs):
        for name, args in READS:
            argv = [*maildesk(), *(a.format(ticket=ticket) for a in args),
                    "--config", str(config)]
            times[name].append(timed(argv)[0])
    return {name: statistics.median(ts) for name, ts in times.items()}


def ingest(config: Path, messages: list[bytes], *, queue: list[bytes] | None = None
           ) -> dict[str, object]:
    """`maildesk ingest --json` one process per message, one at a time. With `queue`,
    each alternates with an `ingest --queue` of a message of that list (the floor: a
    process that only commits), reported as `queue_msg_s` and `queue_median_ms`."""
    argv = [*maildesk(), "ingest", "--json", "--config", str(config),
            "--recipient", "support@example.com", "-"]
    per: list[float] = []
    floor: list[float] = []
    states: Counter[str] = Counter()
    for i, raw in enumerate(messages):
        took, out = timed(argv, raw)
        per.append(took)
        states[json.loads(out)["state"]] += 1
        if queue:
            floor.append(timed([*argv[:-1], "--queue", "-"], queue[i])[0])
    result: dict[str, object] = {"msg_s": len(per) / sum(per),
                                 "median_ms": statistics.median(per) * 1000,
                                 "states": dict(states)}
    if floor:
        result.update(queue_msg_s=len(floor) / sum(floor),
                      queue_median_ms=statistics.median(floor) * 1000)
    return result


def interpreter_ms(runs: int) -> float:
    """Median start and exit of this Python doing nothing: how busy the machine is."""
    return statistics.median(timed([sys.executable, "-c", "pass"])[0]
                             for _ in range(runs)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=2000, help="messages to seed the desk with")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ingest", type=int, default=40, help="messages for the ingest figures")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="maildesk-bench-cli-") as tmp:
        daemon = Daemon(Path(tmp))
        seeded = generate(args.tickets, seed=7)
        ticket = seed(daemon.config, seeded)
        fresh = generate(args.tickets + 3 * args.ingest, seed=7)[args.tickets:]
        n = args.ingest
        result: dict[str, object] = {"python_ms": interpreter_ms(args.runs),
                                     "reads_s": reads(daemon.config, ticket, args.runs)}
        result["ingest_no_daemon"] = ingest(daemon.config, fresh[:n])
        daemon.start()
        try:
            result["ingest_daemon"] = ingest(daemon.config, fresh[n:2 * n],
                                             queue=fresh[2 * n:])
        finally:
            daemon.stop()
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.tickets} messages seeded; medians of {args.runs} runs, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]} (`python -c pass`: {result['python_ms']:.0f} ms), "
          f"{' '.join(maildesk())}")
    for name, seconds in result["reads_s"].items():  # type: ignore[attr-defined]
        print(f"  {name:<28} {seconds * 1000:6.0f} ms")
    for key, what in (("ingest_no_daemon", "without a daemon"),
                      ("ingest_daemon", "next to a running daemon")):
        r = result[key]
        assert isinstance(r, dict)
        print(f"  ingest --json, {what:<25} {r['msg_s']:5.1f} msg/s "
              f"(median {r['median_ms']:.0f} ms a process; states {r['states']})")
        if "queue_msg_s" in r:
            print(f"  ingest --queue, alternating with it     {r['queue_msg_s']:5.1f} msg/s "
                  f"(median {r['queue_median_ms']:.0f} ms a process: the floor)")


if __name__ == "__main__":
    main()
