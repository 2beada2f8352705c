"""Outage bench (issue 13): the database goes away, again and again, under SMTP load.

    python bench/outage.py [--db postgresql|sqlite|both] [--outages 4] [--hold 5]
                           [--rate 40] [--clients 4] [--imap 20] [--json]

A real `maildesk serve` takes mail from `--clients` SMTP connections sending `--rate` new
messages per second in all, each from a customer of its own, and retrying every 4xx
half a second later, as an MTA's queue would (tests/outage_load.py). Meanwhile:
- PostgreSQL (behind a TCP proxy, never the machine's server itself): `--outages` times the
  proxy stops for `--hold` seconds (refused connections, established ones closed), while
  `--imap` messages arrive in a Dovecot mailbox the daemon polls; after each,
  pg_terminate_backend kills every session of the daemon (a restart that is over at once),
  and, with `--partition` (root: the proxy is reached across a network namespace), the
  server goes silent for `--hold` seconds (packets dropped, no reset);
- SQLite: `--outages` times a full disk for `--hold` seconds, alternately RLIMIT_FSIZE on the
  running daemon and, when `mount -t tmpfs` works here (root), the database on a small
  tmpfs that a filler file fills up.
Then the clients retry what waits, until every message got its 250. It prints, per
database: messages sent, DATA answers (250 / 451 / other), 451s inside the outages, 250s
inside them, messages stored, doubled (two entries or tickets), lost (a 250 and no ticket),
half-stored rows, acknowledgements doubled or missing, the daemon's peak RSS (VmHWM), its
exit status after SIGTERM, and the time to recover: from the database's return to the
first 250, and to the 250 of the last message that had got a 451 (median and max). Exit 1
when anything was lost, doubled, half-stored, answered other than 250/451, or the daemon
exited.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dovecot import dovecot_missing, remove, start_dovecot  # noqa: E402
from tests.helpers import message  # noqa: E402
from tests.outage_load import (  # noqa: E402
    Outage,
    Outages,
    SmtpLoad,
    connect,
    max_rss_kb,
    run_outage,
    store_rows,
    verdict,
)
from tests.outages import (  # noqa: E402
    BackendKill,
    FileSizeLimit,
    FullDisk,
    Partition,
    ProxyOutage,
    tmpfs,
    unmount,
)
from tests.tcp_proxy import TcpProxy  # noqa: E402
from tests.test_imap import mailbox_toml  # noqa: E402
from tests.test_serve import Daemon, wait_for  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def catch_up_times(load: SmtpLoad, outages: Outages) -> list[float]:
    """Per outage: seconds from its end to the 250 of the last message that got a 451
    inside it."""
    out = []
    attempts = load.attempts
    for down, up in outages.windows:
        deferred = {a.msgid for a in attempts if down <= a.started <= up and a.code == 451}
        done = [a.ended for a in attempts if a.msgid in deferred and a.code == 250]
        if done:
            out.append(max(done) - up)
    return out


def settle(db_url: str, expected: int, timeout: float) -> float:
    """Until every message is on a ticket and nothing is left to do; the seconds it took."""
    started = time.monotonic()
    while True:
        rows = store_rows(db_url)
        if len(rows.entries) >= expected and not rows.half_stored:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not settled after {timeout:g} s: {len(rows.entries)} of "
                                 f"{expected} on tickets; {rows.half_stored[:5]}")
        time.sleep(1)


def report(name: str, d: Daemon, load: SmtpLoad, outages: Outages, db_url: str,
           recover: list[float], strict: bool, imap: int, extra: dict[str, Any]) -> dict[str, Any]:
    assert d.proc is not None
    alive = d.proc.poll() is None
    rss = max_rss_kb(d.proc.pid) if alive else 0
    v = verdict(load, outages, db_url, d.folder / "outbox", strict=strict)
    code = d.stop() if alive else d.proc.returncode
    catch_up = catch_up_times(load, outages)
    return {
        "database": name, "sent": v.sent, "imap": imap, "data": v.attempts,
        "250": v.answers[250], "451": v.answers[451],
        "other": sum(n for c, n in v.answers.items() if c not in (250, 451)),
        "451_in_outage": v.in_outage[451], "250_in_outage": v.in_outage[250],
        "stored": v.stored, "doubled": len(v.doubled), "lost": len(v.lost),
        "half_stored": len(v.half_stored), "acks_doubled": len(v.acks_doubled),
        "acks_missing": len(v.acks_missing), "bad_answers": len(v.bad_answers),
        "connections_refused": len(v.connect_errors),
        "daemon_exited_during_run": not alive, "exit_status": code, "max_rss_mb": rss / 1024,
        "outages": len(outages.windows),
        "answers_in_outage_by_kind": {
            kind: dict(Counter(a.code for a in load.attempts if outages.kind_of(a) == kind))
            for kind in sorted(set(outages.kinds))},
        "recover_first_250_s": _stats(recover), "recover_all_s": _stats(catch_up),
        "ok": v.ok and alive and code == 0, **extra,
        "examples": (v.doubled + v.lost + v.half_stored + v.acks_doubled + v.acks_missing)[:5]
        + [f"{a.msgid}: {a.code} {a.text[:80]}" for a in v.bad_answers[:5]],
    }


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def run_postgresql(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    admin = connect(PG_ADMIN)
    admin.autocommit = True
    name = f"maildesk_bench_outage_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    part: Partition | None = Partition() if args.partition else None
    if part is not None and part.start() is not None:
        part.close()
        part = None
    proxy = part.outside if part is not None else TcpProxy()
    url = part.url(name) if part is not None else (
        f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{name}")
    server = None if args.imap == 0 or dovecot_missing() else start_dovecot()
    d = Daemon(work / "pg")
    load = SmtpLoad(d.port, clients=args.clients, rate=args.rate, prefix="p", timeout=30)
    try:
        d.config.write_text(d.config.read_text().replace(
            f'url = "sqlite:///{d.folder}/maildesk.db"', f'url = "{url}"'))
        if server is not None:
            d.config.write_text(d.config.read_text() + mailbox_toml(
                "hosted", server, tls="none", processed="Done", poll="2s"))
        if part is None:
            proxy.start()
        d.start()
        load.start()
        load.wait_answers(250, 20, since=0)
        outages, recover, kills = Outages(), [], BackendKill(db_url)
        flagged_while_away = 0
        imap_sent = 0
        for k in range(args.outages):
            def during(k: int = k) -> None:
                nonlocal flagged_while_away, imap_sent
                if server is None:
                    return
                per = args.imap // args.outages
                server.append("alice", "INBOX", *(message(
                    frm=f"Mailbox {k}-{i} <m{k}-{i}@customer.example>",
                    msgid=f"<imap-{k}-{i}@customer.example>", subject=f"Mailbox {k}-{i}")
                    for i in range(per)))
                imap_sent += per
                time.sleep(min(args.hold, 3))  # the poller's round comes meanwhile
                flagged_while_away += len(server.uids("alice", "INBOX", "SEEN"))
                flagged_while_away += len(server.uids("alice", "Done")) - (imap_sent - per)
            recover.append(run_outage(load, ProxyOutage(proxy), outages, hold=args.hold,
                                      during=during))
            time.sleep(args.hold)
            run_outage(load, kills, outages)
            time.sleep(args.hold)
            if part is not None:
                recover.append(run_outage(load, part, outages, hold=args.hold, answers=2))
                time.sleep(args.hold)
        load.finish(timeout=300)
        if server is not None:
            wait_for("the mailbox emptied", lambda: not server.uids("alice", "INBOX"),
                     timeout=300)
        settled = settle(db_url, len(load.accepted) + imap_sent, timeout=1500)
        entries = store_rows(db_url).entries
        imap_once = sum(1 for m, e in entries.items() if m.startswith("imap-") and len(e) == 1)
        return report("postgresql", d, load, outages, db_url, recover, True, imap_sent, {
            "imap_stored_once": imap_once, "imap_flagged_while_away": flagged_while_away,
            "settled_after_load_s": round(settled, 1), "sessions_killed": kills.killed,
            "partitions": args.outages if part else 0,
            "log_internal_errors": d.log().count("unexpected error")})
    finally:
        for c in load.clients:
            c.done.set()
        d.kill()
        if part is not None:
            part.close()
        else:
            proxy.stop()
        if server is not None:
            remove(server)
        admin.cursor().execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,))
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def run_sqlite(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = work / "sqlite"
    mounted = tmpfs(folder / "disk", args.tmpfs_size) if args.tmpfs else False
    d = Daemon(folder)
    db_url = f"sqlite:///{folder}/disk/maildesk.db"
    d.config.write_text(d.config.read_text().replace(
        f'url = "sqlite:///{folder}/maildesk.db"', f'url = "{db_url}"'))
    load = SmtpLoad(d.port, clients=args.clients, rate=args.rate, prefix="s")
    try:
        d.start()
        assert d.proc is not None
        load.start()
        load.wait_answers(250, 20, since=0)
        outages, recover = Outages(), []
        kinds: list[Outage] = [FileSizeLimit(d.proc.pid)]
        if mounted:
            kinds.append(FullDisk(folder / "disk"))
        for k in range(args.outages):
            recover.append(run_outage(load, kinds[k % len(kinds)], outages, hold=args.hold))
            time.sleep(args.hold)
        load.finish(timeout=300)
        settled = settle(db_url, len(load.accepted), timeout=1500)
        return report("sqlite", d, load, outages, db_url, recover, False, 0, {
            "settled_after_load_s": round(settled, 1),
            "full_disk_by": "RLIMIT_FSIZE" + (" and a full tmpfs" if mounted else ""),
            "log_internal_errors": d.log().count("unexpected error")})
    finally:
        for c in load.clients:
            c.done.set()
        d.kill()
        if mounted:
            unmount(folder / "disk")


def show(r: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(r), flush=True)
        return
    print(f"== {r['database']}: {r['outages']} outages of {args.hold:g} s, "
          f"{args.clients} clients at {args.rate:g} msg/s")
    for key, value in r.items():
        if key not in ("database", "outages"):
            print(f"  {key:26} {value}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    p.add_argument("--outages", type=int, default=4)
    p.add_argument("--hold", type=float, default=5.0, help="seconds each outage lasts")
    p.add_argument("--rate", type=float, default=40.0, help="new messages per second")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--imap", type=int, default=20, help="messages into the mailbox (PG)")
    p.add_argument("--tmpfs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--partition", action=argparse.BooleanOptionalAction, default=True,
                   help="PostgreSQL also goes silent (needs root and ip netns)")
    p.add_argument("--tmpfs-size", default="24m")
    p.add_argument("--json", action="store_true")
    p.add_argument("--workdir", help="keep the daemons' folders (logs, databases) here")
    args = p.parse_args()
    results = []
    with contextlib.ExitStack() as stack:
        tmp = args.workdir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="maildesk-outage-"))
        for name, run in (("postgresql", run_postgresql), ("sqlite", run_sqlite)):
            if args.db in (name, "both"):
                results.append(run(Path(tmp), args))
                show(results[-1], args)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
