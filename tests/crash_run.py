"""The crash scenario of issue 13, shared by bench/crash.py and tests/test_crash.py.

A real `maildesk serve` takes mail over SMTP (clients that retry on 4xx and on a lost
connection, as an MTA does) and from a real Dovecot over IMAP, while it is killed with
SIGKILL at random moments and restarted. Its outgoing mail goes to a Maildir or, through
the smarthost transport, to an aiosmtpd capture server in a process of its own. Some
threads get a reply from an agent (verified by a trusted DKIM result), which the desk
relays to the customer. When all mail is in, the killing stops, the daemon settles and
stops cleanly, and `verify` reads the database, the Maildir or the capture log:

- every message that got a `250`, or was in the mailbox, is on exactly one ticket, and
  each thread on one ticket; no entry is doubled;
- one acknowledgement per ticket, one agent notification per customer message, one
  relay per agent reply (none doubled, none missing);
- each outgoing message was written (Maildir) or delivered (capture server) exactly
  once: doubles and losses are counted, not assumed.
"""

from __future__ import annotations

import random
import smtplib
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path

from tests.daemon_proc import Capture, Serve, free_port
from tests.dovecot import Dovecot
from tests.helpers import message
from tests.test_imap import mailbox_toml

AGENT = "alice@agents.example.com"
DKIM_PASS = "mx.example.com; dkim=pass header.d=agents.example.com header.s=sel1"
PER_THREAD = 4  # a question and three follow-ups
BODY = ("Hello,\n\nour order {k} has not arrived yet and the tracking page shows no update "
        "since last week. Could you check what happened?\n\nMessage {j}.\n")


@dataclass
class Load:
    smtp: int = 10_000  # messages over SMTP
    imap: int = 2_000  # messages through the IMAP mailbox
    agent_every: int = 10  # one thread in this many gets an agent's reply (a relay)
    kill_every: float = 2.0  # mean seconds between SIGKILLs (uniform, ±50%)
    clients: int = 4  # parallel SMTP client connections
    kills_after_load: int = 3  # more kills while the backlog drains
    max_kills: int = 1_000_000  # then the load goes on without (the test's short form)
    min_kills: int = 0  # kill this often even when all is in and settled earlier
    seed: int = 13
    settle_timeout: float = 600


@dataclass
class Stats:
    """What the SMTP clients saw."""

    accepted: set[str] = field(default_factory=set)  # Message-IDs that got a 250
    rejected: dict[str, str] = field(default_factory=dict)  # a 5xx: never expected
    tries: int = 0
    answers_4xx: int = 0
    connection_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


def _norm(message_id: str) -> str:
    return message_id.strip().strip("<>")


def customer_threads(tag: str, prefix: str, n: int) -> list[list[tuple[str, bytes]]]:
    """`n` messages in threads of PER_THREAD: [(Message-ID, bytes), ...] per thread."""
    threads = []
    for k in range((n + PER_THREAD - 1) // PER_THREAD):
        root = f"<crash-{tag}-{prefix}{k}-0@customer.example>"
        thread = []
        for j in range(min(PER_THREAD, n - k * PER_THREAD)):
            mid = f"<crash-{tag}-{prefix}{k}-{j}@customer.example>"
            thread.append((mid, _crlf(message(
                frm=f"Customer {prefix}{k} <{prefix}{k}@customer.example>",
                subject=f"Order {prefix}{k} missing" if not j else f"Re: Order {prefix}{k} missing",
                body=BODY.format(k=k, j=j), msgid=mid,
                in_reply_to=root if j else None, references=[root] if j else None))))
        threads.append(thread)
    return threads


def agent_reply(tag: str, root: str, subject: str) -> tuple[str, bytes]:
    mid = f"<crash-{tag}-agent-{_norm(root).split('@')[0]}@agents.example.com>"
    return mid, _crlf(message(
        frm=f"Alice <{AGENT}>", to="support@example.com", subject=f"Re: {subject}",
        body="We have sent the parcel again; it should arrive tomorrow.\n", msgid=mid,
        in_reply_to=root, references=[root], headers={"Authentication-Results": DKIM_PASS}))


class Client:
    """One SMTP connection, reused from message to message, that retries like an MTA:
    on a 4xx or a lost connection it waits (50 ms doubling to 0.5 s) and sends again."""

    def __init__(self, port: int, stats: Stats, stop: threading.Event) -> None:
        self.port, self.stats, self.stop = port, stats, stop
        self.conn: smtplib.SMTP | None = None

    def send(self, mid: str, raw: bytes, mail_from: str) -> None:
        delay = 0.05
        while not self.stop.is_set():
            with self.stats.lock:
                self.stats.tries += 1
            try:
                if self.conn is None:
                    self.conn = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                    self.conn.ehlo("mta.customer.example")
                code, resp = self.conn.mail(mail_from)
                if code == 250:
                    code, resp = self.conn.rcpt("support@example.com")
                if code == 250:
                    code, resp = self.conn.data(raw)
                if code == 250:
                    with self.stats.lock:
                        self.stats.accepted.add(mid)
                    return
                if code >= 500:
                    with self.stats.lock:
                        self.stats.rejected[mid] = f"{code} {resp!r}"
                    self.conn.rset()
                    return
                with self.stats.lock:
                    self.stats.answers_4xx += 1
                self.close()
            except smtplib.SMTPDataError as exc:  # DATA itself refused (not 354)
                with self.stats.lock:
                    self.stats.answers_4xx += exc.smtp_code < 500
                self.close()
            except (OSError, smtplib.SMTPException):
                with self.stats.lock:
                    self.stats.connection_errors += 1
                self.close()
            self.stop.wait(delay)
            delay = min(delay * 2, 0.5)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()  # no QUIT: the connection may be dead or mid-transaction


class Desk:
    """The daemon's database, read the way an operator's script would (read-only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if not self.path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # no tables yet
            return []
        finally:
            conn.close()

    def one(self, sql: str, args: tuple[object, ...] = ()) -> int:
        rows = self.query(sql, args)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def with_entries(self, message_ids: list[str]) -> set[str]:
        """Those of `message_ids` that are stored on a ticket."""
        found: set[str] = set()
        for i in range(0, len(message_ids), 400):
            part = message_ids[i:i + 400]
            keys = [*part, *map(_norm, part)]
            found |= {_norm(str(m)) for (m,) in self.query(
                f"SELECT message_id FROM entry WHERE message_id IN ({','.join('?' * len(keys))})",
                tuple(keys))}
        return {m for m in message_ids if _norm(m) in found}

    def backlog(self) -> dict[str, int]:
        return {
            "queued": self.one("SELECT count(*) FROM inbox WHERE state = 'queued'"),
            "follow_ups": self.one("SELECT count(*) FROM deferred"),
            "outbox": self.one("SELECT count(*) FROM outbox WHERE state IN"
                               " ('pending', 'sending')"),
        }


def config(work: Path, transport: str, smtp_port: int, capture_port: int,
           server: Dovecot | None, box: str, done: str) -> Path:
    outbound = (f'transport = "maildir"\nmaildir = "{work}/outbox"' if transport == "maildir"
                else f'transport = "smtp"\nhost = "127.0.0.1"\nport = {capture_port}')
    mailbox = "" if server is None else mailbox_toml("crash", server, box=box, processed=done,
                                                     poll="1s")
    path = work / "maildesk.toml"
    path.write_text(f"""
[desk]
name = "Crash Desk"
address = "support@example.com"
secret = "crash-secret-0123456789"

[database]
url = "sqlite:///{work}/maildesk.db"

[smtp]
listen = "127.0.0.1:{smtp_port}"

[outbound]
{outbound}

[[agents]]
email = "{AGENT}"
name = "Alice"

[security]
trusted_authserv_id = "mx.example.com"

[log]
format = "text"
{mailbox}""")
    return path


@dataclass
class Result:
    transport: str
    smtp_sent: int
    imap_sent: int
    agent_replies: int
    kills: int
    unexpected_exits: int
    clean_exit: int | None
    seconds: float
    peak_rss_mb: float
    smtp_tries: int
    smtp_4xx: int
    smtp_connection_errors: int
    smtp_rejected: int
    # the invariants: all of these are 0 in a good run
    lost_messages: int  # got a 250 (or was in the mailbox), on no ticket
    doubled_entries: int
    split_threads: int  # a thread's messages on more than one ticket
    imap_left_in_folder: int
    ack_mismatch: int  # |acks - tickets|
    notification_mismatch: int  # |notifications - customer messages|
    relay_mismatch: int  # |relays - agent replies|
    outbox_unsent: int  # rows not `sent` after settling
    outbox_doubled: int  # extra copies written/delivered
    outbox_lost: int  # rows counted sent that never arrived
    outbox_phantoms: int  # arrivals no outbox row explains
    # for the record
    tickets: int
    outbox_rows: int
    presumed_sent: int  # rows a crash left `sending` (counted as sent)
    logged_errors: int  # "Traceback" / unexpected-error lines in the daemon's log

    def failures(self) -> list[str]:
        names = ("lost_messages", "doubled_entries", "split_threads", "imap_left_in_folder",
                 "ack_mismatch", "notification_mismatch", "relay_mismatch", "outbox_unsent",
                 "outbox_doubled", "outbox_lost", "outbox_phantoms", "unexpected_exits",
                 "smtp_rejected")
        bad = [f"{n}={getattr(self, n)}" for n in names if getattr(self, n)]
        if self.clean_exit != 0:
            bad.append(f"clean_exit={self.clean_exit}")
        return bad

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def run(work: Path, transport: str, load: Load, server: Dovecot | None,
        say: Callable[[str], None] = lambda _: None, daemon_repo: Path | None = None) -> Result:
    """One crash run into `work` (a fresh folder); `server` None: no IMAP part.
    `daemon_repo`: run the daemon from that checkout instead (to compare versions)."""
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{load.seed}-{transport}")
    tag = uuid.uuid4().hex[:8]
    capture = Capture(work / "captured.jsonl")
    if transport == "smarthost":
        capture.start()
    try:
        return _run(work, transport, load, server, say, daemon_repo, rng, tag, capture)
    finally:
        capture.stop()


def _run(work: Path, transport: str, load: Load, server: Dovecot | None,
         say: Callable[[str], None], daemon_repo: Path | None, rng: random.Random, tag: str,
         capture: Capture) -> Result:
    box, done = f"Crash{tag}", f"Done{tag}"
    if server is not None and load.imap:
        with server.client() as c:
            c.create_folder(box)
            c.create_folder(done)
    smtp_port = free_port()
    cfg = config(work, "maildir" if transport == "maildir" else "smtp", smtp_port,
                 capture.port, server if load.imap else None, box, done)
    serve = Serve(cfg, work / "daemon.log", smtp_port, **(
        {"repo": daemon_repo} if daemon_repo else {}))
    desk = Desk(work / "maildesk.db")
    smtp_threads = customer_threads(tag, "s", load.smtp)
    imap_threads = customer_threads(tag, "i", load.imap) if server is not None else []
    agent_roots = [t[0] for i, t in enumerate(smtp_threads) if i % load.agent_every == 0]
    stats, stop_clients = Stats(), threading.Event()
    started = time.monotonic()
    serve.start()

    # --- the killer --------------------------------------------------------------------
    kills = unexpected = 0
    peak_kb = 0
    load_done, stop_killing = threading.Event(), threading.Event()

    def killer() -> None:
        nonlocal kills, unexpected, peak_kb
        after_load = 0
        while not stop_killing.is_set():
            if stop_killing.wait(rng.uniform(0.5, 1.5) * load.kill_every):
                break
            if not serve.alive:
                unexpected += 1
                say(f"daemon exited by itself: {serve.log.read_text()[-1500:]}")
            peak_kb = max(peak_kb, serve.kill())
            kills += 1
            after_load += load_done.is_set()
            serve.start()
            if after_load >= load.kills_after_load or kills >= load.max_kills:
                break

    # --- the load ----------------------------------------------------------------------
    def smtp_client(mine: list[list[tuple[str, bytes]]]) -> None:
        client = Client(smtp_port, stats, stop_clients)
        order = sorted(((k // 25, j, k) for k, t in enumerate(mine) for j in range(len(t))))
        for _, j, k in order:
            mid, raw = mine[k][j]
            client.send(mid, raw, "mta@customer.example")
        client.close()

    agent_sent: set[str] = set()

    def agent_client() -> None:
        """Answers a thread once its first message is on a ticket."""
        client = Client(smtp_port, stats, stop_clients)
        waiting = list(agent_roots)
        while waiting and not stop_clients.is_set():
            stored = desk.with_entries([root for root, _ in waiting])
            ready = [t for t in waiting if t[0] in stored]
            for root, _ in ready:
                mid, raw = agent_reply(tag, root, "Order missing")
                client.send(mid, raw, AGENT)
                agent_sent.add(mid)
            waiting = [t for t in waiting if t not in ready]
            if waiting and not ready:
                stop_clients.wait(0.2)
        client.close()

    def imap_feeder() -> None:
        """Delivers the mailbox's mail in chunks while the killing goes on."""
        assert server is not None
        flat = [raw for t in imap_threads for _, raw in t]
        chunk = max(10, len(flat) // 40)
        for i in range(0, len(flat), chunk):
            server.deliver("alice", box, *(r.replace(b"\r\n", b"\n") for r in flat[i:i + chunk]))
            if stop_clients.wait(load.kill_every / 2):
                break

    kill_thread = threading.Thread(target=killer, name="killer")
    workers = [threading.Thread(target=smtp_client, args=(smtp_threads[c::load.clients],))
               for c in range(load.clients)]
    workers.append(threading.Thread(target=agent_client))
    if imap_threads:
        workers.append(threading.Thread(target=imap_feeder))
    kill_thread.start()
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
        say(f"load in after {time.monotonic() - started:.1f}s ({kills} kills so far)")
        load_done.set()
        imap_total = sum(len(t) for t in imap_threads)

        def settled() -> bool:
            backlog = desk.backlog()
            if any(backlog.values()):
                return False
            if imap_total:
                in_box = desk.one("SELECT count(*) FROM inbox WHERE source = 'imap'")
                return in_box >= imap_total
            return True

        deadline = time.monotonic() + load.settle_timeout
        while kill_thread.is_alive() and not (settled() and kills >= load.min_kills):
            kill_thread.join(0.2)
        stop_killing.set()
        kill_thread.join()
        if not serve.alive:
            serve.start()
        while not settled():
            if time.monotonic() > deadline:
                say(f"not settled after {load.settle_timeout}s: {desk.backlog()}")
                break
            time.sleep(0.1)
        if server is not None and imap_total:  # the last move may trail the last commit
            while server.uids("alice", box) and time.monotonic() < deadline:
                time.sleep(0.1)
        status, rss = serve.stop()
        peak_kb = max(peak_kb, rss)
    finally:
        stop_clients.set()
        stop_killing.set()
        if serve.alive:
            serve.kill()
    seconds = time.monotonic() - started
    log_text = serve.log.read_text(errors="replace")
    return verify(
        desk, transport=transport, work=work, capture=capture, stats=stats,
        smtp_threads=[[m for m, _ in t] for t in smtp_threads],
        imap_threads=[[m for m, _ in t] for t in imap_threads], agent_sent=agent_sent, kills=kills,
        unexpected=unexpected, clean_exit=status, seconds=seconds, peak_kb=peak_kb,
        imap_sent=sum(len(t) for t in imap_threads),
        imap_left=len(server.uids("alice", box)) if server is not None and imap_threads else 0,
        logged_errors=log_text.count("Traceback") + log_text.count("unexpected error"))


def delivered(transport: str, work: Path, capture: Capture) -> Counter[str]:
    """How many copies of each Message-ID the world outside got."""
    if transport == "smarthost":
        return Counter(_norm(m) for m, n in capture.received().items() for _ in range(n))
    found: Counter[str] = Counter()
    parser = BytesHeaderParser()
    for sub in ("new", "cur"):
        for path in (work / "outbox" / sub).glob("*"):
            with path.open("rb") as f:
                found[_norm(parser.parse(f)["Message-ID"] or "")] += 1
    return found


def verify(desk: Desk, *, transport: str, work: Path, capture: Capture, stats: Stats,
           smtp_threads: list[list[str]], imap_threads: list[list[str]],
           agent_sent: set[str], kills: int,
           unexpected: int, clean_exit: int | None, seconds: float, peak_kb: int,
           imap_sent: int, imap_left: int, logged_errors: int) -> Result:
    merged = dict(desk.query("SELECT id, merged_into FROM ticket WHERE merged_into IS NOT NULL"))

    def final(ticket: object) -> object:
        while ticket in merged:
            ticket = merged[ticket]
        return ticket

    on: dict[str, list[object]] = {}
    for mid, ticket in desk.query("SELECT message_id, ticket_id FROM entry"
                                  " WHERE message_id IS NOT NULL"):
        on.setdefault(_norm(str(mid)), []).append(final(ticket))
    expected_threads = smtp_threads + imap_threads
    customer = [m for t in smtp_threads for m in t if m in stats.accepted]
    customer += [m for t in imap_threads for m in t]  # all were in the mailbox
    wanted = customer + [m for m in agent_sent if m in stats.accepted]
    lost = sum(1 for m in wanted if not on.get(_norm(m)))
    doubled = sum(len(v) - 1 for v in on.values() if len(v) > 1)
    split = sum(1 for t in expected_threads
                if len({x for m in t for x in on.get(_norm(m), [])}) > 1)
    tickets = desk.one("SELECT count(*) FROM ticket WHERE merged_into IS NULL")
    by_template = Counter(str(t) for (t,) in desk.query("SELECT template FROM outbox"))
    rows = desk.query("SELECT message_id, state, last_error FROM outbox")
    got = delivered(transport, work, capture)
    ours = {_norm(str(m)) for m, _, _ in rows}
    from maildesk.store.outbox import PRESUMED_SENT
    return Result(
        transport=transport, smtp_sent=len(stats.accepted) - len(agent_sent & stats.accepted),
        imap_sent=imap_sent, agent_replies=len(agent_sent & stats.accepted), kills=kills,
        unexpected_exits=unexpected, clean_exit=clean_exit, seconds=round(seconds, 1),
        peak_rss_mb=round(peak_kb / 1024, 1), smtp_tries=stats.tries,
        smtp_4xx=stats.answers_4xx, smtp_connection_errors=stats.connection_errors,
        smtp_rejected=len(stats.rejected),
        lost_messages=lost, doubled_entries=doubled, split_threads=split,
        imap_left_in_folder=imap_left,
        ack_mismatch=abs(by_template["ack"] - tickets),
        notification_mismatch=abs(by_template["new_ticket_agent"]
                                  + by_template["customer_reply_agent"] - len(customer)),
        relay_mismatch=abs(by_template["agent_reply"] - len(agent_sent & stats.accepted)),
        outbox_unsent=sum(1 for _, state, _ in rows if state != "sent"),
        outbox_doubled=sum(n - 1 for m, n in got.items() if m in ours and n > 1),
        outbox_lost=sum(1 for m, _, _ in rows if not got.get(_norm(str(m)))),
        outbox_phantoms=sum(n for m, n in got.items() if m not in ours),
        tickets=tickets, outbox_rows=len(rows),
        presumed_sent=sum(1 for _, _, e in rows if e == PRESUMED_SENT),
        logged_errors=logged_errors,
    )


def lines(result: Result) -> Iterator[str]:
    r = result
    yield (f"{r.transport}: {r.smtp_sent} SMTP + {r.imap_sent} IMAP messages and "
           f"{r.agent_replies} agent replies, {r.kills} SIGKILLs in {r.seconds}s "
           f"(SMTP: {r.smtp_tries} tries, {r.smtp_4xx} 4xx, {r.smtp_connection_errors} "
           f"lost connections); peak RSS {r.peak_rss_mb} MB")
    yield (f"  messages: {r.lost_messages} lost, {r.doubled_entries} doubled entries, "
           f"{r.split_threads} split threads, {r.tickets} tickets, "
           f"{r.imap_left_in_folder} left in the IMAP folder")
    yield (f"  outbox: {r.outbox_rows} rows, {r.outbox_unsent} unsent, {r.outbox_doubled} "
           f"doubled, {r.outbox_lost} lost, {r.outbox_phantoms} unexplained; acks/"
           f"notifications/relays off by {r.ack_mismatch}/{r.notification_mismatch}/"
           f"{r.relay_mismatch}; {r.presumed_sent} presumed sent after a crash")
    yield (f"  daemon: {r.unexpected_exits} unexpected exits, clean stop exit "
           f"{r.clean_exit}, {r.logged_errors} errors logged")
