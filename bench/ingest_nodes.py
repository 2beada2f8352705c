"""`bench/ingest.py --nodes 1 2 3`: the ingest workload over N `maildesk serve` nodes on one
PostgreSQL (SPEC §5).

For each N, a fresh database and N nodes, each with its own SMTP port and Maildir (one
config each: the same but for `smtp.listen` and `outbound.maildir`), started together.
The same messages as bench/ingest.py go over 2 SMTP connections per node of the largest
cluster, spread evenly over the N nodes' ports (so the clients are the same for every N).
Printed per N, medians of the runs (the N alternate): accepted msg/s (first DATA to last
250), fully processed msg/s (first DATA to the last message done whole: ticket, body,
every outgoing mail written), and the cost: CPU seconds of each node process (utime +
stime from /proc/PID/stat) and of the database's server processes, per message.
"""

from __future__ import annotations

import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ingest import CONFIG as INGEST_CONFIG
from ingest import DESK, REPO, free_port, wait_port

# bench/ingest.py's desk, on the cluster's database, without the daily digest
CONFIG = INGEST_CONFIG.replace('url = "sqlite:///{dir}/maildesk.db"', 'url = "{url}"') + """\
[scheduler]
digest_at = ""
"""
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class Cluster:
    """N `maildesk serve` processes on one fresh PostgreSQL database."""

    def __init__(self, folder: Path, admin_url: str, n: int) -> None:
        import psycopg

        self.name = f"maildesk_bench_{uuid.uuid4().hex[:10]}"
        self.admin = psycopg.connect(admin_url, autocommit=True)
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        base = admin_url.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"
        self.ports = [free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for k, port in enumerate(self.ports):
            node = folder / f"node{k}"
            node.mkdir()
            (node / "maildesk.toml").write_text(CONFIG.format(
                templates=REPO / "templates", port=port, dir=node,
                url=self.url.replace("postgresql://", "postgresql+psycopg://")))
            log = open(node / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the node
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "maildesk.cli", "serve", "--config",
                 str(node / "maildesk.toml")], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "MAILDESK_LOG_LEVEL": "WARNING"}))
        for port, proc in zip(self.ports, self.procs, strict=True):
            wait_port(port, proc, timeout=60)

    def node_cpu(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.procs]

    def server_cpu(self) -> float:
        """CPU seconds of the PostgreSQL backends serving this database now."""
        pids = [p for (p,) in self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)).fetchall()]
        return sum(cpu_seconds(p) for p in pids)

    def progress(self) -> tuple[int, int, int]:
        """(messages processed, follow-ups waiting, outgoing mail unsent)."""
        import psycopg

        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM inbox WHERE state != 'queued'),"
                " (SELECT count(*) FROM deferred),"
                " (SELECT count(*) FROM outbox WHERE state = 'pending')").fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE datname = %s", (self.name,))
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        self.admin.close()


def send_spread(ports: list[int], messages: list[bytes], connections: int
                ) -> tuple[float, float, int]:
    """Send over `connections` sessions, session k to ports[k % len(ports)]:
    (first DATA, last 250, messages accepted)."""
    accepted = [0] * connections
    last = [0.0] * connections
    start = time.time() + 0.05

    def client(k: int) -> None:
        with smtplib.SMTP("127.0.0.1", ports[k % len(ports)], timeout=120) as smtp:
            smtp.ehlo("bench.example")
            time.sleep(max(0.0, start - time.time()))
            for j in range(k, len(messages), connections):
                smtp.mail(f"customer{j}@customer.example")
                smtp.rcpt(DESK)
                code, _ = smtp.data(messages[j])
                accepted[k] += code == 250
                last[k] = time.time()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return start, max(last), sum(accepted)


@dataclass
class NodeFigures:
    nodes: int
    accepted: float  # msg/s
    fully: float  # msg/s
    node_cpu_ms: list[float]  # per node, CPU ms per message of the whole workload
    server_cpu_ms: float  # PostgreSQL backends, CPU ms per message


def nodes_run(messages: list[bytes], n: int, connections: int, admin_url: str
              ) -> NodeFigures:
    with tempfile.TemporaryDirectory(prefix="maildesk-nodes-") as tmp:
        cluster = Cluster(Path(tmp), admin_url, n)
        try:
            time.sleep(1)  # let the nodes settle (first ticks, pools)
            cpu0, server0 = cluster.node_cpu(), cluster.server_cpu()
            first, last_250, accepted = send_spread(cluster.ports, messages, connections)
            if accepted != len(messages):
                raise RuntimeError(f"{len(messages) - accepted} messages not accepted")
            deadline = time.time() + 600
            while True:
                processed, waiting, unsent = cluster.progress()
                if processed >= accepted and waiting == 0 and unsent == 0:
                    done = time.time()
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"only {processed} of {accepted} processed")
                time.sleep(0.02)
            cpu = [b - a for a, b in zip(cpu0, cluster.node_cpu(), strict=True)]
            server = cluster.server_cpu() - server0
        finally:
            cluster.close()
    per_msg = 1000 / len(messages)
    return NodeFigures(n, accepted / (last_250 - first), accepted / (done - first),
                       [c * per_msg for c in cpu], server * per_msg)


def nodes_bench(messages: list[bytes], counts: list[int], runs: int, admin_url: str) -> None:
    """Print the node table: the runs of the different N alternate, medians per N."""
    connections = 2 * max(counts)
    results: dict[int, list[NodeFigures]] = {n: [] for n in counts}
    for _ in range(runs):
        for n in counts:
            results[n].append(nodes_run(messages, n, connections, admin_url))
    print(f"nodes on PostgreSQL, {connections} SMTP connections spread over them; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("nodes | accepted msg/s | fully processed msg/s | CPU ms/msg: each node"
          " | all nodes | PostgreSQL")
    for n in counts:
        rs = results[n]
        each = [statistics.median(r.node_cpu_ms[k] for r in rs) for k in range(n)]
        total = statistics.median(sum(r.node_cpu_ms) for r in rs)
        print(f"{n:5d} | {statistics.median(r.accepted for r in rs):14.1f} | "
              f"{statistics.median(r.fully for r in rs):21.1f} | "
              f"{' '.join(f'{c:.1f}' for c in each):>20} | {total:9.1f} | "
              f"{statistics.median(r.server_cpu_ms for r in rs):.1f}")
