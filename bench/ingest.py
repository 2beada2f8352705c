"""Ingest benchmark: maildesk against the physical limit of its SMTP stack.

    python bench/ingest.py [-n 2000] [--connections 1 4] [--rate 100] [--pipe N] [--runs 3]

For each connection count it sends the same N generated messages (~30% new
conversations, the rest replies with In-Reply-To/References, ~10% carrying a 50-200 KB
attachment, UTF-8 and ISO-8859-1 subjects) twice: to a bare aiosmtpd server that only
writes and fsyncs each message, and to a real `maildesk serve` on a fresh SQLite
database. It prints, first, fully processed msg/s (first DATA to the last message done
whole: its ticket, body and attachments stored, and every outgoing mail written into the
Maildir), then accepted msg/s (first DATA to last 250), ticket-from-headers msg/s (first
DATA to last ticket committed), mail-queued msg/s (first DATA to the last follow-up done:
body filled in, outgoing mail in the outbox), each as a ratio of the bare server (the
median of the ratios of paired runs: the two alternate), the latency from 250 to ticket
and to mail queued at a paced `--rate`, and the daemon's peak RSS.
`--parse-processes N` sets the daemon's `[workers] parse_processes` (default: its own).
`--pipe N` also feeds N messages through `maildesk ingest --queue`, one process per
message, next to a running daemon. `--nodes 1 2 3` prints only the node table instead:
the same messages over N `maildesk serve` nodes on one PostgreSQL (bench/ingest_nodes.py).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESK = "support@example.com"
CONFIG = """
[desk]
name = "Bench Desk"
address = "support@example.com"
secret = "bench-secret-0123456789"
templates = "{templates}"
[database]
url = "sqlite:///{dir}/maildesk.db"
[smtp]
listen = "127.0.0.1:{port}"
[outbound]
maildir = "{dir}/outbox"
[[agents]]
email = "alice@agents.example.com"
name = "Alice"
"""
EXTRA_CONFIG = ""  # --parse-processes


# --- the workload ------------------------------------------------------------------------


def generate(n: int, seed: int = 42) -> list[bytes]:
    """N messages in arrival order: conversations interleave, replies follow their parent."""
    rng = random.Random(seed)
    conversations: list[list[str]] = []  # message ids per conversation
    out: list[bytes] = []
    for i in range(n):
        new = not conversations or rng.random() < 0.30
        if new:
            conversations.append([])
        conv_no = len(conversations) - 1 if new else rng.randrange(len(conversations))
        conv = conversations[conv_no]
        msgid = f"bench-{seed}-{i}@customer{conv_no % 50}.example"
        out.append(_message(rng, i, conv_no, conv, msgid))
        conv.append(msgid)
    return out


def _message(rng: random.Random, i: int, conv_no: int, thread: list[str], msgid: str) -> bytes:
    m = EmailMessage(policy=SMTP)  # CRLF line ends, as on the wire
    m["From"] = f"Customer {conv_no} <customer{conv_no}@customer{conv_no % 50}.example>"
    m["To"] = DESK
    topic = (f"Drucker kaputt – Bestellung {conv_no}" if conv_no % 2
             else f"Problème de facture n°{conv_no}")
    subject = ("Re: " if thread else "") + topic
    if conv_no % 2:
        m["Subject"] = subject  # the email package encodes it as UTF-8
    else:
        m["Subject"] = _latin1_subject(subject)
    m["Date"] = format_datetime(datetime.now(UTC))
    m["Message-ID"] = f"<{msgid}>"
    if thread:
        m["In-Reply-To"] = f"<{thread[-1]}>"
        m["References"] = " ".join(f"<{t}>" for t in thread[-10:])
    body = (f"Hello,\n\nmessage {i} of conversation {conv_no}.\n"
            + "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * rng.randint(3, 30))
    if thread:
        body += "\n> earlier text\n> quoted\n"
    m.set_content(body)
    if rng.random() < 0.10:
        size = rng.randint(50_000, 200_000)
        m.add_attachment(rng.randbytes(size), maintype="application", subtype="pdf",
                         filename=f"scan-{i}.pdf")
    return m.as_bytes()


def _latin1_subject(text: str) -> str:
    from email.header import Header

    return Header(text, "iso-8859-1").encode()


# --- the SMTP client -------------------------------------------------------------------


@dataclass
class Sent:
    first_data: float = 0.0
    last_250: float = 0.0
    accepted: dict[int, float] = field(default_factory=dict)  # inbox id -> time of its 250
    errors: int = 0


def send_all(port: int, messages: list[bytes], connections: int, rate: float | None) -> Sent:
    """Send over `connections` SMTP sessions at once (optionally paced to `rate` msg/s)."""
    result = Sent()
    lock = threading.Lock()
    start = time.time() + 0.05
    result.first_data = start

    def client(k: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo("bench.example")
            for j in range(k, len(messages), connections):
                if rate:
                    delay = start + j / rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                elif j < connections:
                    time.sleep(max(0.0, start - time.time()))
                try:
                    smtp.mail(f"customer{j}@customer.example")
                    smtp.rcpt(DESK)
                    code, reply = smtp.data(messages[j])
                except smtplib.SMTPException:
                    code, reply = 0, b""
                now = time.time()
                with lock:
                    if code == 250:
                        words = reply.split()
                        inbox_id = int(words[-1]) if words and words[-1].isdigit() else -j
                        result.accepted[inbox_id] = now
                    else:
                        result.errors += 1
                    result.last_250 = max(result.last_250, now)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


# --- the bare server -----------------------------------------------------------------------


BARE_SERVER = """
import asyncio, os, sys
from aiosmtpd.smtp import SMTP
folder, port = sys.argv[1], int(sys.argv[2])
count = 0
class Handler:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        with open(os.path.join(folder, str(count)), "wb") as f:
            f.write(envelope.original_content)
            f.flush()
            os.fsync(f.fileno())
        return "250 OK queued as %d" % count
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname="bare", data_size_limit=None), "127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def bare_run(messages: list[bytes], connections: int) -> float:
    """Accepted msg/s of the bare server."""
    with tempfile.TemporaryDirectory(prefix="bare-") as folder:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, folder, str(port)])
        try:
            wait_port(port, proc)
            sent = send_all(port, messages, connections, None)
        finally:
            proc.terminate()
            proc.wait()
    if sent.errors:
        raise RuntimeError(f"bare server: {sent.errors} messages not accepted")
    return len(sent.accepted) / (sent.last_250 - sent.first_data)


# --- maildesk --------------------------------------------------------------------------


class Daemon:
    """A real `maildesk serve` on a fresh SQLite database in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = folder / "maildesk.toml"
        self.config.write_text(CONFIG.format(templates=REPO / "templates", dir=folder,
                                             port=self.port) + EXTRA_CONFIG)
        self.db = folder / "maildesk.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maildesk.cli", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "MAILDESK_LOG_LEVEL": "WARNING"})
        wait_port(self.port, self.proc)

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


class Progress:
    """Polls the database for two counts: messages processed (their ticket committed) and,
    of those, settled (their follow-up done too: body filled in, outgoing mail queued);
    and whether any outgoing mail is still to be written. The worker takes both in inbox
    id order, so the k-th smallest id is done when k are."""

    SQL = ("SELECT (SELECT count(*) FROM inbox WHERE state != 'queued'),"
           " (SELECT count(*) FROM deferred),"
           " (SELECT count(*) FROM outbox WHERE state = 'pending')")

    def __init__(self, db: Path) -> None:
        self.db = db
        self.marks: list[tuple[float, int, int, int]] = []  # (time, processed, settled, unsent)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        last = (0, 0, 0)
        while not self._stop.is_set():
            processed, waiting, unsent = conn.execute(self.SQL).fetchone()
            if (processed, processed - waiting, unsent) != last:
                last = (processed, processed - waiting, unsent)
                self.marks.append((time.time(), *last))
            time.sleep(0.002)
        conn.close()

    def wait_for(self, n: int, timeout: float = 600) -> tuple[float, float, float]:
        """When the n-th ticket was committed, when the n-th follow-up was done, and when
        all n were fully processed (their outgoing mail written too)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.marks and self.marks[-1][2] >= n and self.marks[-1][3] == 0:
                self._stop.set()
                return self._first(n, 1), self._first(n, 2), self.marks[-1][0]
            time.sleep(0.01)
        raise RuntimeError(f"only {self.marks[-1][1:] if self.marks else 0} of {n} done")

    def _first(self, n: int, column: int) -> float:
        return next(mark[0] for mark in self.marks if mark[column] >= n)

    def done_at(self, ids: list[int], column: int = 1) -> dict[int, float]:
        out: dict[int, float] = {}
        ordered = sorted(ids)
        k = 0
        for mark in self.marks:
            while k < min(mark[column], len(ordered)):
                out[ordered[k]] = mark[0]
                k += 1
        return out


@dataclass
class Figures:
    accepted: float
    e2e: float
    settled: float  # first DATA to the last follow-up (body, outgoing mail) done
    fully: float  # first DATA to the last message fully processed (its mail written too)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    mail_p50_ms: float = float("nan")  # 250 to outgoing mail queued
    mail_p99_ms: float = float("nan")
    rss_mb: float = float("nan")


def maildesk_run(messages: list[bytes], connections: int, rate: float | None) -> Figures:
    with tempfile.TemporaryDirectory(prefix="maildesk-bench-") as tmp:
        daemon = Daemon(Path(tmp))
        daemon.start()
        try:
            progress = Progress(daemon.db)
            sent = send_all(daemon.port, messages, connections, rate)
            last, settled, fully = progress.wait_for(len(sent.accepted))
            lat = _latencies(sent, progress.done_at(list(sent.accepted)))
            mail_lat = _latencies(sent, progress.done_at(list(sent.accepted), column=2))
            rss = daemon.peak_rss_mb()
        finally:
            code = daemon.stop()
        if code != 0 or sent.errors:
            raise RuntimeError(f"daemon exit {code}, {sent.errors} messages not accepted")
        n = len(sent.accepted)
        return Figures(n / (sent.last_250 - sent.first_data), n / (last - sent.first_data),
                       n / (settled - sent.first_data), n / (fully - sent.first_data),
                       _pct(lat, 50), _pct(lat, 99),
                       _pct(mail_lat, 50), _pct(mail_lat, 99), rss)


def _latencies(sent: Sent, done: dict[int, float]) -> list[float]:
    """Milliseconds from each 250 to `done`, sorted."""
    return sorted((done[i] - t) * 1000 for i, t in sent.accepted.items() if i in done)


def pipe_run(messages: list[bytes], parallel: int) -> tuple[float, float]:
    """`maildesk ingest --queue`, one process per message: (ingest msg/s, e2e msg/s)."""
    exe = Path(sys.executable).with_name("maildesk")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "maildesk.cli"]
    with tempfile.TemporaryDirectory(prefix="maildesk-pipe-") as tmp:
        daemon = Daemon(Path(tmp))
        daemon.start()
        try:
            progress = Progress(daemon.db)
            start = time.time()
            todo = list(messages)
            lock = threading.Lock()

            def feeder() -> None:
                while True:
                    with lock:
                        if not todo:
                            return
                        raw = todo.pop(0)
                    subprocess.run([*cmd, "ingest", "--queue", "--config", str(daemon.config),
                                    "--recipient", DESK, "-"], input=raw, check=True,
                                   stdout=subprocess.DEVNULL)

            threads = [threading.Thread(target=feeder) for _ in range(parallel)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            stored = time.time()
            last, _, _ = progress.wait_for(len(messages))
        finally:
            daemon.stop()
    return len(messages) / (stored - start), len(messages) / (last - start)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def _paired(runs: list[Figures], bares: list[float], name: str) -> str:
    """The median rate, and the median of its ratios to the bare run paired with each."""
    value = statistics.median(getattr(r, name) for r in runs)
    ratio = statistics.median(getattr(r, name) / b for r, b in zip(runs, bares, strict=True))
    return f"{value:6.1f} msg/s ({ratio:.2f}x)"


def exit_on_sigterm() -> None:
    """SIGTERM (a `kill`, a CI timeout) unwinds like Ctrl-C, so every `finally` stops the
    daemons it started: by default the bench died at once and left them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rate", type=float, default=100.0, help="paced run for latency (msg/s)")
    ap.add_argument("--latency-messages", type=int, default=1000)
    ap.add_argument("--nodes", type=int, nargs="+", metavar="N",
                    help="only the node table: N `maildesk serve` nodes on one PostgreSQL"
                         " (bench/ingest_nodes.py)")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL for --nodes: a fresh database is made there per run")
    ap.add_argument("--pipe", type=int, default=0, metavar="N",
                    help="also feed N messages through `maildesk ingest --queue`")
    ap.add_argument("--runs", type=int, default=1, help="repeat and print medians")
    ap.add_argument("--parse-processes", type=int, metavar="N",
                    help="the daemon's [workers] parse_processes")
    args = ap.parse_args()
    if args.parse_processes is not None:
        global EXTRA_CONFIG
        EXTRA_CONFIG = f"\n[workers]\nparse_processes = {args.parse_processes}\n"
    messages = generate(args.messages)
    if args.nodes:
        from ingest_nodes import nodes_bench

        print(f"{len(messages)} messages, {os.cpu_count()} CPUs; medians of {args.runs} run(s)")
        nodes_bench(messages, args.nodes, args.runs, args.pg)
        return
    mb = sum(map(len, messages)) / 1e6
    print(f"{len(messages)} messages, {mb:.1f} MB, {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}; medians of {args.runs} run(s); load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for c in args.connections:
        # Bare and maildesk runs alternate, and each ratio is taken against the bare run
        # just before it: this VM's disk drifts between runs more than either server does.
        bares: list[float] = []
        runs: list[Figures] = []
        for _ in range(args.runs):
            bares.append(bare_run(messages, c))
            runs.append(maildesk_run(messages, c, None))
        print(f"{c} connection(s): maildesk fully processed {_paired(runs, bares, 'fully')}"
              f" | bare server {statistics.median(bares):6.1f} msg/s | "
              f"accepted {_paired(runs, bares, 'accepted')}, "
              f"ticket from headers {_paired(runs, bares, 'e2e')}, "
              f"mail queued {_paired(runs, bares, 'settled')}, "
              f"peak RSS {max(r.rss_mb for r in runs):.0f} MB")
    paced = messages[: args.latency_messages]
    lat = [maildesk_run(paced, 1, args.rate) for _ in range(args.runs)]
    print(f"latency at {args.rate:.0f} msg/s ({len(paced)} messages): 250 -> ticket "
          f"p50 {statistics.median(r.p50_ms for r in lat):.1f} ms, "
          f"p99 {statistics.median(r.p99_ms for r in lat):.1f} ms; 250 -> mail queued "
          f"p50 {statistics.median(r.mail_p50_ms for r in lat):.1f} ms, "
          f"p99 {statistics.median(r.mail_p99_ms for r in lat):.1f} ms; "
          f"peak RSS {max(r.rss_mb for r in lat):.0f} MB")
    if args.pipe:
        piped = messages[: args.pipe]
        for parallel in (1, 4):
            rates = [pipe_run(piped, parallel) for _ in range(args.runs)]
            print(f"ingest --queue, {parallel} process(es) at a time ({len(piped)} messages): "
                  f"{statistics.median(r[0] for r in rates):.1f} msg/s stored, "
                  f"{statistics.median(r[1] for r in rates):.1f} msg/s end to end")


if __name__ == "__main__":
    main()
