"""Abuse, long forms (issue 13; the short forms are tests/test_abuse.py).

    python bench/abuse.py [pingpong] [loris] [flood]      (default: all three)

pingpong  Two `maildesk serve` desks (support@a.example, help@b.example) whose smarthosts
          are each other: a relay in between carries what one sends to the other's SMTP
          and counts it. One message from help@b.example to support@a.example starts it.
          Three rounds, each guard layer taken away in turn:
            guards   as shipped (Auto-Submitted, X-Loop: classify.py stops it);
            stripped the relay strips every loop and threading header, as a naive
                     forwarder or auto-responder would (only an ack on a new ticket is
                     left to stop it);
            worst    stripped, and each desk has a rule that answers every message with
                     a template (only loop.max_auto_replies_per_hour is left).
          Prints the messages carried until 5 s pass quietly, and the time it took.
loris     N slow clients (default 60) against a daemon with max_connections = 50: each
          opens a DATA, sends ~1 MB of it at once and stalls, so that it sits in the
          daemon's memory; meanwhile one real message a second is sent for 40 s. Prints the
          daemon's RSS before, at its peak and after, how long the lorises were kept, and
          how legitimate mail fared.
flood     N (default 500) connections opened at once against max_connections = 100,
          held for 2 s: how many got 220 and 421, whether the daemon survived, and the
          time a legitimate message took to get in during and after the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import free_port, wait_port  # noqa: E402 - a sibling script, not a package

REPO = Path(__file__).resolve().parents[1]
DESK_CONFIG = """
[desk]
name = "Desk {name}"
address = "{address}"
secret = "abuse-secret-{name}-0123456789"
templates = "{templates}"
[database]
url = "sqlite:///{dir}/maildesk.db"
[smtp]
listen = "127.0.0.1:{port}"
{smtp}
[outbound]
{outbound}
"""
LIMIT = 200  # messages: a ping-pong still going by then is called endless
RULE_ANSWER_ALL = """
[[rules]]
name = "answer everything"
[rules.then]
reply_template = "ack"
"""


class Desk:
    def __init__(self, folder: Path, name: str, address: str, *, outbound: str,
                 smtp: str = "", extra: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port, self.address = folder, free_port(), address
        self.config = folder / "maildesk.toml"
        self.config.write_text(DESK_CONFIG.format(
            name=name, address=address, templates=REPO / "templates", dir=folder,
            port=self.port, smtp=smtp, outbound=outbound) + extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.folder / "daemon.log", "wb")  # noqa: SIM115 - lives with the daemon
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maildesk.cli", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "MAILDESK_LOG_LEVEL": "WARNING"})
        wait_port(self.port, self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self, field: str = "VmRSS") -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def query(self, sql: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(self.folder / "maildesk.db", timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(60)


# --- ping-pong ----------------------------------------------------------------------------

LOOP_HEADERS = re.compile(
    rb"^(auto-submitted|x-loop|x-auto-response-suppress|precedence|in-reply-to|references|"
    rb"thread-index|thread-topic|return-path):.*\r?\n(?:[ \t].*\r?\n)*", re.I | re.M)


def strip(raw: bytes) -> bytes:
    """What a naive forwarder leaves: no loop or threading headers, no ticket tag."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    head = LOOP_HEADERS.sub(b"", head + b"\r\n").rstrip(b"\r\n")
    head = re.sub(rb"\[[A-Z]+#\d+\]", b"", head)
    return head + sep + body


class Relay:
    """An SMTP server on its own port that hands each message to `target_port`, counting."""

    def __init__(self, target_port: int, stripping: bool) -> None:
        self.port, self.target, self.stripping = free_port(), target_port, stripping
        self.carried: list[float] = []
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        from aiosmtpd.smtp import SMTP

        relay = self

        class Handler:
            async def handle_DATA(self, server: object, session: object, envelope: object
                                  ) -> str:
                raw = envelope.original_content  # type: ignore[attr-defined]
                if relay.stripping:
                    raw = strip(raw)
                sender = envelope.mail_from  # type: ignore[attr-defined]
                rcpts = envelope.rcpt_tos  # type: ignore[attr-defined]
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, relay._deliver, sender, rcpts, raw)
                except smtplib.SMTPException as exc:
                    relay.refused += 1
                    return f"550 5.0.0 refused downstream: {exc}"
                relay.carried.append(time.monotonic())
                return "250 OK"

        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(self._loop.create_server(
            lambda: SMTP(Handler(), hostname="relay"), "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def _deliver(self, sender: str, rcpts: list[str], raw: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", self.target, timeout=30) as smtp:
            smtp.sendmail(sender, rcpts, raw)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def pingpong_round(kind: str, cap: int) -> tuple[int, int, float, list[str]]:
    """(messages carried, refused, seconds until quiet, why each desk stopped)."""
    with tempfile.TemporaryDirectory(prefix=f"maildesk-pingpong-{kind}-") as tmp:
        relays: dict[str, Relay] = {}
        desks: dict[str, Desk] = {}
        extra = f"[loop]\nmax_auto_replies_per_hour = {cap}\n"
        if kind == "worst":
            extra += RULE_ANSWER_ALL
        # each desk's smarthost is a relay that hands its mail to the other desk's SMTP
        for me in ("a", "b"):
            relays[me] = Relay(0, stripping=kind != "guards")
            address = "support@a.example" if me == "a" else "help@b.example"
            outbound = (f'transport = "smtp"\nhost = "127.0.0.1"\nport = {relays[me].port}\n'
                        'tls = "none"\ntimeout = "10s"')
            desks[me] = Desk(Path(tmp) / me, me.upper(), address, outbound=outbound,
                             extra=extra)
        relays["a"].target, relays["b"].target = desks["b"].port, desks["a"].port
        try:
            for desk in desks.values():
                desk.start()
            start = time.monotonic()
            first = (b"From: Help Desk B <help@b.example>\r\nTo: support@a.example\r\n"
                     b"Subject: Where is my order?\r\nMessage-ID: <start@b.example>\r\n\r\n"
                     b"Hello, where is my order?\r\n")
            with smtplib.SMTP("127.0.0.1", desks["a"].port, timeout=30) as smtp:
                smtp.sendmail("help@b.example", ["support@a.example"], first)
            last = start
            while time.monotonic() - last < 5 and time.monotonic() - start < 600 \
                    and sum(len(r.carried) for r in relays.values()) < LIMIT:
                time.sleep(0.2)
                marks = [t for r in relays.values() for t in r.carried]
                last = max([start, *marks])
            carried = sum(len(r.carried) for r in relays.values())
            refused = sum(r.refused for r in relays.values())
            why = []
            for name, desk in desks.items():
                states = desk.query("SELECT state, count(*) FROM inbox GROUP BY state")
                acks = desk.query("SELECT recipients, count(*) FROM outbox WHERE template = 'ack'"
                                  " GROUP BY recipients")
                tickets = desk.query("SELECT count(*) FROM ticket")[0][0]
                why.append(f"desk {name.upper()}: inbox {dict(states)}, {tickets} ticket(s), "
                           f"acks queued {dict(acks)}")
            for name, desk in desks.items():
                for line in (desk.folder / "daemon.log").read_text().splitlines():
                    if "already got" in line:
                        why.append(f"desk {name.upper()}: {line.split(': ', 1)[-1][:120]}")
                        break
            return carried, refused, last - start, why
        finally:
            for desk in desks.values():
                if desk.alive():
                    desk.stop()
            for relay in relays.values():
                relay.close()


def pingpong(cap: int) -> None:
    print(f"ping-pong between two desks, loop.max_auto_replies_per_hour = {cap}; "
          f"load {os.getloadavg()[0]:.2f}")
    for kind in ("guards", "stripped", "worst"):
        carried, refused, took, why = pingpong_round(kind, cap)
        print(f"  {kind:8s}: {carried} message(s) carried between the desks "
              f"({refused} refused), quiet after {took:.1f} s")
        for line in why:
            print(f"            {line}")


# --- slow-loris ---------------------------------------------------------------------------

def loris(clients: int, size: int, seconds: float = 40.0) -> None:
    """Lorises that send `size` bytes of a DATA at once and then stall (what they sent
    sits in the daemon's memory), and one legitimate message a second meanwhile."""
    with tempfile.TemporaryDirectory(prefix="maildesk-loris-") as tmp:
        desk = Desk(Path(tmp), "L", "support@example.com",
                    outbound=f'maildir = "{tmp}/outbox"',
                    smtp="max_connections = 50\nconnection_timeout = \"30s\"")
        desk.start()
        try:
            time.sleep(1)
            before = desk.rss_mb()
            held: list[float] = []
            refused = [0]
            lock = threading.Lock()
            t_start = time.monotonic()

            def slow() -> None:
                t0 = time.monotonic()
                try:
                    s = socket.create_connection(("127.0.0.1", desk.port), timeout=120)
                    f = s.makefile("rb")
                    if not f.readline().startswith(b"220"):
                        with lock:
                            refused[0] += 1
                        return
                    for cmd in (b"HELO loris.example", b"MAIL FROM:<l@evil.example>",
                                b"RCPT TO:<support@example.com>", b"DATA"):
                        s.sendall(cmd + b"\r\n")
                        f.readline()
                    s.sendall(b"Subject: loris\r\n\r\n" + (b"X" * 998 + b"\r\n") * (size // 1000))
                    f.readline()  # stall until the server hangs up
                except OSError:
                    pass
                with lock:
                    held.append(time.monotonic() - t0)

            threads = [threading.Thread(target=slow) for _ in range(clients)]
            for t in threads:
                t.start()
            peak, legit = before, []
            while time.monotonic() - t_start < seconds:
                t0 = time.monotonic()
                try:
                    with smtplib.SMTP("127.0.0.1", desk.port, timeout=30) as smtp:
                        smtp.sendmail("c@customer.example", ["support@example.com"],
                                      b"Subject: real\r\n\r\nhello\r\n")
                    legit.append((t0 - t_start, time.monotonic() - t0))
                except (smtplib.SMTPException, OSError):
                    pass
                peak = max(peak, desk.rss_mb())
                time.sleep(max(0.0, 1 - (time.monotonic() - t0)))
            for t in threads:
                t.join()
            after = desk.rss_mb()
            hwm = desk.rss_mb("VmHWM")
            tries = int(seconds)
            print(f"slow-loris: {clients} clients each sending {size / 1e6:.1f} MB of a DATA "
                  f"and stalling; max_connections 50, connection_timeout 30 s, "
                  f"busy_idle_timeout 10 s; load {os.getloadavg()[0]:.2f}")
            print(f"  daemon RSS {before:.0f} MB before, peak {max(peak, hwm):.0f} MB, "
                  f"{after:.0f} MB after; alive: {desk.alive()}")
            kept = sorted(held)
            print(f"  {refused[0]} lorises refused at once (421); the others were held "
                  f"{statistics.median(kept) if kept else 0:.1f} s (median), "
                  f"{max(kept) if kept else 0:.1f} s (max)")
            first = f"{legit[0][0]:.1f} s" if legit else "never"
            print(f"  legitimate mail, one a second for {seconds:.0f} s: {len(legit)}/{tries} "
                  f"accepted, the first at {first}, median "
                  f"{statistics.median(t for _, t in legit) * 1000 if legit else 0:.0f} ms")
        finally:
            desk.stop()


# --- connection flood -----------------------------------------------------------------------

def flood(clients: int) -> None:
    with tempfile.TemporaryDirectory(prefix="maildesk-flood-") as tmp:
        desk = Desk(Path(tmp), "F", "support@example.com", outbound=f'maildir = "{tmp}/outbox"',
                    smtp="max_connections = 100")
        desk.start()
        try:
            greetings: list[bytes] = []
            socks: list[socket.socket] = []
            lock = threading.Lock()
            go = threading.Event()

            def connect() -> None:
                go.wait()
                try:
                    s = socket.create_connection(("127.0.0.1", desk.port), timeout=30)
                    banner = s.makefile("rb").readline()[:3]
                except OSError as exc:
                    banner, s = type(exc).__name__.encode(), None  # type: ignore[assignment]
                with lock:
                    greetings.append(banner)
                    if s is not None:
                        socks.append(s)

            threads = [threading.Thread(target=connect) for _ in range(clients)]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            go.set()
            for t in threads:
                t.join()
            opened = time.monotonic() - t0
            during = _legit(desk.port)
            time.sleep(2)
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
            after = _legit(desk.port)
            print(f"flood: {clients} connections at once, max_connections 100; "
                  f"load {os.getloadavg()[0]:.2f}")
            kinds = {k.decode() or "closed": greetings.count(k) for k in sorted(set(greetings))}
            print(f"  answers: {kinds}, all in {opened:.2f} s; daemon alive: {desk.alive()}, "
                  f"RSS {desk.rss_mb():.0f} MB")
            print(f"  legitimate mail during the flood: {during}; after it: {after}")
        finally:
            desk.stop()


def _legit(port: int) -> str:
    t0 = time.monotonic()
    tries = 0
    while time.monotonic() - t0 < 60:
        tries += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.sendmail("c@customer.example", ["support@example.com"],
                              b"Subject: real\r\n\r\nhello\r\n")
            return f"accepted after {time.monotonic() - t0:.2f} s ({tries} attempt(s))"
        except (smtplib.SMTPException, OSError):
            time.sleep(0.1)
    return f"NOT accepted in 60 s ({tries} attempts)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("parts", nargs="*", default=["pingpong", "loris", "flood"])
    ap.add_argument("--cap", type=int, default=5, help="loop.max_auto_replies_per_hour")
    ap.add_argument("--lorises", type=int, default=60)
    ap.add_argument("--loris-size", type=int, default=1_000_000)
    ap.add_argument("--flood", type=int, default=500)
    args = ap.parse_args()
    for part in args.parts:
        if part == "pingpong":
            pingpong(args.cap)
        elif part == "loris":
            loris(args.lorises, args.loris_size)
        elif part == "flood":
            flood(args.flood)
        else:
            raise SystemExit(f"unknown part {part!r}")


if __name__ == "__main__":
    main()
