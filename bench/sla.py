"""Benchmark: the SLA scan over a desk with many open tickets, on SQLite and PostgreSQL.

    python bench/sla.py [--sizes 10000 100000 1000000] [--db sqlite postgresql]
                        [--pg postgresql://postgres@127.0.0.1:5432/test] [--ticks 5]
    python bench/sla.py --hook

For each size it fills a fresh database (the migrations, then plain SQL in bulk: sqlite3
executemany, PostgreSQL COPY) with N open tickets in the state the daemon leaves them:
70% open with their first response met and a resolution reminder ahead (their
`sla_next_at` spread over the next 30 days, as a 30-day resolution target of a 24/7
policy gives), 30% pending (clock stopped, nothing ahead). Then it runs the real scan
(maildesk.escalation.scan, which composes and queues the mail of what is due) as the
daemon's ticks would:
- steady: `--ticks` consecutive ticks 30 s apart (the default interval), median time;
- catch-up: one tick after an hour without any (the scheduler was down an hour).
It prints one table row per database and size, with the tickets each scan visited, the
reminders and breaches it sent (queued: one mail per recipient), and whether the
database's plan for the scan's read uses the `ix_ticket_sla_next_at` index.
Targets: 1M in < 2 s on both, 100k in < 0.2 s.

`--hook` prints instead what processing pays per message to keep due times in step
(maildesk.deadlines.refresh, SQLite): without a policy, and with one for a reply that
changes no clock, a reply that moves one, and a new ticket.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from maildesk.config import settings_from_dict  # noqa: E402
from maildesk.escalation import scan  # noqa: E402
from maildesk.outbound.compose import Composer  # noqa: E402
from maildesk.outbound.render import Templates  # noqa: E402
from maildesk.store import Database  # noqa: E402
from maildesk.store import sla as store_sla  # noqa: E402

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TARGET = timedelta(days=30)
REMIND = timedelta(minutes=30)
INTERVAL = timedelta(seconds=30)
COLUMNS = ("subject", "subject_key", "status", "priority", "queue", "assignee", "requester",
           "tags", "created_at", "updated_at", "last_activity_at", "first_response_at",
           "agent_touched", "resolution_due", "sla_policy", "paused_since", "sla_next_at",
           "next_response_met", "next_response_breached")
AGENTS = [f"agent{i}@agents.example.com" for i in range(8)]


def settings(url: str, folder: Path):  # type: ignore[no-untyped-def]
    return settings_from_dict({
        "desk": {"address": "support@example.com", "secret": "bench-secret"},
        "database": {"url": url},
        "outbound": {"maildir": str(folder / "outbox")},
        "agents": [{"email": a} for a in AGENTS],
        "sla": [{"name": "bench", "resolution": "30d", "business_hours": "24/7",
                 "remind_before": "30m", "escalate_to": ["lead@agents.example.com"]}],
    }, folder)


def tickets(n: int, seed: int = 1) -> Iterator[tuple[object, ...]]:
    """N tickets as the daemon leaves them (times as aware datetimes)."""
    rng = random.Random(seed)
    span = (TARGET + INTERVAL).total_seconds()
    for i in range(n):
        pending = rng.random() < 0.3
        # the resolution reminder at E: created E - (30d - 30m)
        event = NOW - INTERVAL + timedelta(seconds=rng.random() * span)
        created = event - (TARGET - REMIND)
        answered = created + timedelta(minutes=rng.randrange(5, 240))
        yield (f"Case {i}", f"case {i}", "pending" if pending else "open", "normal", "general",
               AGENTS[i % len(AGENTS)], f"c{i}@customer.example", "", created, answered,
               answered, answered, True, None if pending else created + TARGET, "bench",
               answered if pending else None, None if pending else event, 0, 0)


def _text(v: object) -> object:
    return v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v


def fill_sqlite(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    sql = (f"INSERT INTO ticket ({', '.join(COLUMNS)}) VALUES "
           f"({', '.join('?' * len(COLUMNS))})")
    with conn:
        conn.executemany(sql, ([_text(v) for v in row] for row in tickets(n)))
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a running daemon's log would be
    conn.close()


def fill_postgres(url: str, n: int) -> None:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        with conn.cursor() as cur, cur.copy(
                f"COPY ticket ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in tickets(n):
                copy.write_row(row)
        conn.execute("ANALYZE ticket")


def run(kind: str, n: int, ticks: int, pg: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="maildesk-sla-bench-") as tmp:
        folder = Path(tmp)
        admin = None
        if kind == "sqlite":
            url = f"sqlite:///{folder}/bench.db"
        else:
            name = f"maildesk_bench_{uuid.uuid4().hex[:10]}"
            admin = psycopg.connect(pg.replace("+psycopg", ""), autocommit=True)
            admin.execute(f'CREATE DATABASE "{name}"')
            base = pg.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0]
            url = f"{base}/{name}"
        try:
            db = Database(url)
            db.ensure_schema()
            started = time.monotonic()
            (fill_sqlite(folder / "bench.db", n) if kind == "sqlite" else fill_postgres(url, n))
            filled = time.monotonic() - started
            cfg = settings(url, folder)
            composer = Composer(cfg, Templates(cfg.desk.templates))
            assert composer.templates.check(["sla_reminder", "sla_breach"]) == []  # compiled
            with db.read() as s:
                plan = store_sla.scan_plan(s, NOW)
            steady, visited, queued = [], [], []
            for k in range(ticks):
                t0 = time.perf_counter()
                result = scan(db, cfg, composer, NOW + k * INTERVAL)
                steady.append(time.perf_counter() - t0)
                visited.append(result.tickets)
                queued.append(result.queued)
            t0 = time.perf_counter()
            catch_up = scan(db, cfg, composer, NOW + (ticks - 1) * INTERVAL + timedelta(hours=1))
            catch_up_s = time.perf_counter() - t0
            db.dispose()
        finally:
            if admin is not None:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE datname = %s", (name,))
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                admin.close()
    return {"db": kind, "tickets": n, "fill_s": filled, "scan_s": statistics.median(steady),
            "scan_max_s": max(steady), "visited": statistics.median(visited),
            "queued": statistics.median(queued), "catch_up_s": catch_up_s,
            "catch_up_visited": catch_up.tickets, "catch_up_queued": catch_up.queued,
            "index": "ix_ticket_sla_next_at" in plan}


def hook_cost(repeat: int = 5, n: int = 2000) -> list[tuple[str, float]]:
    """µs per call of the due-time hook processing runs for every message
    (maildesk.deadlines.refresh) on SQLite: medians of `repeat` rounds of `n` calls."""
    from maildesk import deadlines
    from maildesk.store import tickets as store_tickets
    from tests.sla_desk import NO_DIGEST, OFFICE, SlaDesk, at

    out = []
    with tempfile.TemporaryDirectory(prefix="maildesk-sla-hook-") as tmp:
        for policy, cases in (("", (("no [[sla]] policy", False, False),)),
                              (OFFICE, (("a reply, clocks unchanged", False, False),
                                        ("a reply that moves a clock", True, False),
                                        ("a new ticket", True, True)))):
            folder = Path(tmp) / str(len(out))
            folder.mkdir()
            d = SlaDesk.open(folder, f"sqlite:///{folder}/m.db", policy + NO_DIGEST)
            t = d.customer("2026-11-30 10:00")
            d.agent_reply("2026-11-30 10:30", t)
            d.customer("2026-11-30 11:00", ticket=t)
            for name, moves, new in cases:
                rounds = []
                for _ in range(repeat):
                    with d.desk.db.write() as s:
                        row = store_tickets.load(s, t)
                        assert row is not None
                        base, now = row.created_at, at("2026-11-30 11:05")
                        t0 = time.perf_counter()
                        for i in range(n):
                            if moves:
                                row.created_at = base + timedelta(microseconds=i)
                            deadlines.refresh(s, d.desk.settings, row, now=now,
                                              customer_wrote=True, new=new)
                        rounds.append((time.perf_counter() - t0) / n * 1e6)
                out.append((name, statistics.median(rounds)))
            d.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--hook", action="store_true",
                    help="only the per-message cost of the due-time hook (processing)")
    args = ap.parse_args()
    if args.hook:
        for name, us in hook_cost():
            print(f"due-time hook per message, {name:<28} {us:7.1f} µs")
        return
    print(f"{'database':<11} {'tickets':>9} {'fill':>7} {'scan (median)':>14} {'max':>8} "
          f"{'visited':>8} {'sent':>5} {'1h catch-up':>12} {'visited':>8} {'sent':>6} "
          f"{'index':>6}")
    for kind in args.db:
        for n in args.sizes:
            r = run(kind, n, args.ticks, args.pg)
            print(f"{kind:<11} {n:>9,} {r['fill_s']:>6.1f}s {r['scan_s'] * 1000:>12.1f}ms "
                  f"{r['scan_max_s'] * 1000:>6.1f}ms {r['visited']:>8} {r['queued']:>5} "
                  f"{r['catch_up_s'] * 1000:>10.0f}ms {r['catch_up_visited']:>8} "
                  f"{r['catch_up_queued']:>6} {'yes' if r['index'] else 'NO':>6}", flush=True)


if __name__ == "__main__":
    main()
