"""CLI benchmark: how long an operator waits for a read command, and how fast an MTA pipe
can feed `maildesk ingest`, one process per message.

    python bench/cli.py [--tickets 2000] [--runs 10] [--ingest 40] [--against PYTHON] [--json]

Fills a fresh SQLite desk with `--tickets` conversations' worth of generated mail (the
workload of bench/ingest.py, processed by the real pipeline, acks and notifications
queued), then runs each read command `--runs` times as its own process (the `maildesk`
entry point next to this Python, as an operator's shell starts it) and prints the median
wall time. Then `--ingest` new messages go through `maildesk ingest --json` one process
at a time, without a daemon (each process processes its message) and next to a running
`maildesk serve` (each process commits, rings the daemon and waits for its result):
msg/s of the median process (1 / median), and the states the processes reported. Next
to the daemon each alternates with an `ingest --queue` (a process that only commits:
the floor of one process per message). `python -c pass` is timed too, and the load
average is printed: on a busy machine everything is slower, the floor included.

`--against PYTHON` pairs two installations (e.g. a venv of the commit before): each
gets a desk of its own, seeded alike, and every measured process alternates between
them, so both see the same moments of a busy machine. Each column is one installation.

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
from ingest import (  # noqa: E402  (bench/ingest.py, next to this file)
    Daemon,
    exit_on_sigterm,
    generate,
    wait_port,
)

READS = [
    ("tickets list", ["tickets", "list"]),
    ("tickets list --json", ["tickets", "list", "--json"]),
    ("tickets list --status open", ["tickets", "list", "--status", "open"]),
    ("tickets show ID", ["tickets", "show", "{ticket}"]),
    ("sla show ID", ["sla", "show", "{ticket}"]),
    ("inbox list", ["inbox", "list"]),
    ("outbox list", ["outbox", "list"]),
    ("report", ["report"]),
]

SEED = """
import sys
sys.path.insert(0, {bench!r})
from cli import seed
from ingest import generate
print(seed({config!r}, generate({tickets}, seed=7)))
"""


def maildesk(python: str) -> list[str]:
    exe = Path(python).with_name("maildesk")
    return [str(exe)] if exe.exists() else [python, "-m", "maildesk.cli"]


class Desk(Daemon):
    """A desk of one installation (its `python`), with its `maildesk serve` on demand."""

    def __init__(self, folder: Path, python: str) -> None:
        folder.mkdir()
        super().__init__(folder)
        self.python = python
        self.ticket = 0

    def start(self) -> None:
        log = open(self.folder / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen(
            [self.python, "-m", "maildesk.cli", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "MAILDESK_LOG_LEVEL": "WARNING"})
        wait_port(self.port, self.proc)

    def seed(self, tickets: int) -> None:
        """Seeded by its own installation (its pipeline, its schema)."""
        done = subprocess.run([self.python, "-c", SEED.format(
            bench=str(Path(__file__).resolve().parent), config=str(self.config),
            tickets=tickets)], capture_output=True, check=True)
        self.ticket = int(done.stdout.split()[-1])

    def argv(self, *args: str) -> list[str]:
        return [*maildesk(self.python), *args, "--config", str(self.config)]


def seed(config: str, messages: list[bytes]) -> int:
    """Store and process `messages` through the real pipeline; the ticket with the most
    entries (for `tickets show`)."""
    from maildesk.app import build_pipeline, open_database
    from maildesk.config import load_settings
    from maildesk.domain import Source
    from maildesk.identity import identity
    from maildesk.store import inbox

    settings = load_settings(Path(config))
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


def reads(desks: list[Desk], runs: int) -> list[dict[str, float]]:
    """Median seconds of each read command per desk; the runs of the commands and of the
    desks interleave, so a busy moment of the machine spreads over all of them."""
    times: list[dict[str, list[float]]] = [{name: [] for name, _ in READS} for _ in desks]
    for _ in range(runs):
        for name, args in READS:
            for desk, mine in zip(desks, times, strict=True):
                mine[name].append(timed(desk.argv(*(a.format(ticket=desk.ticket)
                                                    for a in args)))[0])
    return [{name: statistics.median(ts) for name, ts in mine.items()} for mine in times]


def ingest(desks: list[Desk], messages: list[bytes], *, queue: list[bytes] | None = None
           ) -> list[dict[str, object]]:
    """`maildesk ingest --json` one process per message, one at a time, the desks taking
    turns. With `queue`, each alternates with an `ingest --queue` of a message of that
    list (the floor: a process that only commits), reported as `queue_msg_s` and
    `queue_median_ms`. msg/s is that of the median process."""
    per: list[list[float]] = [[] for _ in desks]
    floor: list[list[float]] = [[] for _ in desks]
    states: list[Counter[str]] = [Counter() for _ in desks]
    for i, raw in enumerate(messages):
        for k, desk in enumerate(desks):
            argv = desk.argv("ingest", "--json", "--recipient", "support@example.com")
            took, out = timed([*argv, "-"], raw)
            per[k].append(took)
            states[k][json.loads(out)["state"]] += 1
            if queue:
                floor[k].append(timed([*argv, "--queue", "-"], queue[i])[0])
    results: list[dict[str, object]] = []
    for k in range(len(desks)):
        median = statistics.median(per[k])
        result: dict[str, object] = {"msg_s": 1 / median, "median_ms": median * 1000,
                                     "states": dict(states[k])}
        if floor[k]:
            median = statistics.median(floor[k])
            result.update(queue_msg_s=1 / median, queue_median_ms=median * 1000)
        results.append(result)
    return results


def interpreter_ms(runs: int) -> float:
    """Median start and exit of this Python doing nothing: how busy the machine is."""
    return statistics.median(timed([sys.executable, "-c", "pass"])[0]
                             for _ in range(runs)) * 1000


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=2000, help="messages to seed the desk with")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ingest", type=int, default=40, help="messages for the ingest figures")
    ap.add_argument("--against", metavar="PYTHON",
                    help="a second installation's python: paired figures, a column each")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    pythons = [sys.executable, *([args.against] if args.against else [])]
    with tempfile.TemporaryDirectory(prefix="maildesk-bench-cli-") as tmp:
        desks = [Desk(Path(tmp) / f"desk{k}", python) for k, python in enumerate(pythons)]
        for desk in desks:
            desk.seed(args.tickets)
        fresh = generate(args.tickets + 3 * args.ingest, seed=7)[args.tickets:]
        n = args.ingest
        result: dict[str, object] = {"pythons": pythons, "load_before": os.getloadavg(),
                                     "python_ms": interpreter_ms(args.runs),
                                     "reads_s": reads(desks, args.runs)}
        result["ingest_no_daemon"] = ingest(desks, fresh[:n])
        for desk in desks:
            desk.start()
        try:
            result["ingest_daemon"] = ingest(desks, fresh[n:2 * n], queue=fresh[2 * n:])
        finally:
            for desk in desks:
                desk.stop()
        result["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(result))
        return
    report(result, args)


def report(result: dict[str, object], args: argparse.Namespace) -> None:
    pythons = result["pythons"]
    assert isinstance(pythons, list)
    load = f"load average {result['load_before'][0]:.1f} before, "  # type: ignore[index]
    load += f"{result['load_after'][0]:.1f} after"  # type: ignore[index]
    print(f"{args.tickets} messages seeded; medians of {args.runs} runs, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]} (`python -c pass`: {result['python_ms']:.0f} ms), "
          f"{load}")
    for k, python in enumerate(pythons):
        print(f"  [{k}] {' '.join(maildesk(python))}")
    for name, _ in READS:
        cells = "  ".join(f"{r[name] * 1000:6.0f} ms" for r in result["reads_s"])  # type: ignore[attr-defined]
        print(f"  {name:<44} {cells}")
    for key, what in (("ingest_no_daemon", "without a daemon"),
                      ("ingest_daemon", "next to a running daemon")):
        rows = result[key]
        assert isinstance(rows, list)
        cells = "  ".join(f"{r['msg_s']:5.1f} msg/s ({r['median_ms']:4.0f} ms)" for r in rows)
        print(f"  ingest --json, {what:<29} {cells}")
        print(f"  {'':<44} states: {'  '.join(str(r['states']) for r in rows)}")
        if "queue_msg_s" in rows[0]:
            cells = "  ".join(f"{r['queue_msg_s']:5.1f} msg/s ({r['queue_median_ms']:4.0f} ms)"
                              for r in rows)
            print(f"  ingest --queue, alternating (the floor)      {cells}")


if __name__ == "__main__":
    main()
