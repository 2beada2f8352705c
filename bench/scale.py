"""Scale benchmark: does anything get slower when the desk holds years of mail?

    python bench/scale.py [--tickets 1000000] [--keep DIR] [--json] [--database URL]
                          [--runs 1] [--messages 2000]

Fills a fresh database with N tickets of the shape two years of a busy desk leave behind,
then measures what an operator and the daemon do on it, each through the product's own
paths:
- ingest: the SMTP workload of bench/ingest.py (imported, not copied) into a real
  `maildesk serve`, fully processed (every ticket stored, every body filled in, every
  outgoing mail written by the sender), msg/s from the first DATA; into an empty desk of
  the same config and into the full one, alternating when `--runs` > 1 (medians);
- the read commands as an operator types them, each a `maildesk` process (medians of
  five): `tickets list --status open --limit 50`, `tickets show ID`, `report`, and the
  same list on the empty desk (the process start: imports, config, connection);
- threading lookups: what processing asks the database to thread a message
  (store.tickets.SessionLookup: references, subject window, participant), per message;
- the SLA scan: maildesk.escalation.scan, three ticks 30 s apart, as the scheduler runs it;
- the database's plan for each of those reads (EXPLAIN): any full scan of a table is
  listed under `full_scans`;
- bytes of database per stored message (inbox rows).

The shape (per ticket, seeded with plain SQL in bulk: sqlite3 executemany, PostgreSQL
COPY, the indexes built afterwards): 1-5 mails alternating customer and agent (3 on
average), each an entry with its inbox row and raw bytes (text only, ~1 KB: no
attachments); the outgoing mail the daemon writes for them (ack, agent notifications,
relays; ~2 KB each, sent) with their references (own Message-IDs, Thread-Index roots);
the requester and sometimes a CC as participants; queues, priorities and agents mixed;
creation times over two years; 80% solved or closed with first response and resolution
times, 20% new, open or pending with SLA due times ahead (pending ones waiting less than
`auto_close_after`, as the daemon leaves them). SQLite gets no ANALYZE (the product never
runs one); PostgreSQL gets the VACUUM ANALYZE its autovacuum would run after such a load.

`--database` names the database to fill (PostgreSQL: an empty database, e.g. one made with
createdb); without it a SQLite file in DIR (`--keep`) or a temporary folder. With `--keep
DIR` the database and `DIR/maildesk.toml` stay, for the CLI:
`maildesk tickets list --config DIR/maildesk.toml`. The empty desks are made and removed
by the bench (PostgreSQL: databases next to `--database`'s, dropped after).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import Daemon, generate, send_all  # noqa: E402  (bench/ingest.py)

from maildesk.store import direct  # noqa: E402
from maildesk.store.tickets import Ticket  # noqa: E402

DAY = 86_400.0
SPAN = 730 * DAY  # two years of tickets
AGENTS = [f"agent{i}@agents.example.com" for i in range(8)]
QUEUES = {  # name: (share of tickets, agents)
    "general": (0.40, AGENTS),
    "billing": (0.25, AGENTS[:3]),
    "tech": (0.25, AGENTS[3:7]),
    "sales": (0.10, AGENTS[6:]),
}
PRIORITIES = (("low", 0.10), ("normal", 0.70), ("high", 0.15), ("urgent", 0.05))
TOPICS = ("Invoice {} is wrong", "Printer out of order (order {})", "Cannot log in, account {}",
          "Refund for order {}", "Delivery {} late", "Question about contract {}",
          "Password reset for {}", "Shipment {} arrived damaged")
CONFIG = """\
[desk]
name = "Scale Desk"
address = "support@example.com"
secret = "bench-secret-0123456789"
templates = "{templates}"
timezone = "Europe/Madrid"
[database]
url = "{url}"
[smtp]
listen = "127.0.0.1:{port}"
[outbound]
maildir = "{folder}/outbox"
[scheduler]
digest_at = ""
{agents}
{queues}
[[sla]]
name = "urgent"
match = {{ priority = ["high", "urgent"] }}
first_response = "1h"
next_response = "4h"
resolution = "1d"
business_hours = "24/7"
remind_before = "15m"
escalate_to = ["lead@agents.example.com"]

[[sla]]
name = "standard"
first_response = "8h"
next_response = "1d"
resolution = "30d"
business_hours = "Mon-Fri 09:00-18:00"
timezone = "Europe/Madrid"
remind_before = "30m"
"""

TICKET_COLUMNS = tuple(f.name for f in fields(Ticket))
TABLES: dict[str, tuple[str, ...]] = {
    "ticket": TICKET_COLUMNS,
    "entry": ("id", "ticket_id", "inbox_id", "kind", "from_addr", "subject", "body",
              "created_at", "message_id", "verified", "thread_rule", "thread_reason"),
    "inbox": ("id", "received_at", "source", "envelope_from", "envelope_to", "message_id",
              "content_hash", "size", "state", "reason", "attempts", "ticket_id", "entry_id",
              "processed_at"),
    "inbox_raw": ("inbox_id", "raw"),
    "outbox": ("id", "ticket_id", "entry_id", "template", "automatic", "recipients",
               "envelope_from", "message_id", "raw", "created_at", "state", "attempts",
               "next_attempt_at", "sent_at"),
    "message_ref": ("key", "ticket_id", "kind"),
    "participant": ("ticket_id", "address", "role"),
    "auto_reply": ("address", "created_at"),
}
BODY = ("Hello,\n\nI am writing about {subject}. "
        + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 4
        + "\n\nRegards,\n{name}\n")
RAW_IN = ("Return-Path: <{frm}>\r\nReceived: from mx.{domain} (mx.{domain} [192.0.2.1])\r\n"
          "\tby desk.example.com with ESMTPS; {date}\r\nFrom: {name} <{frm}>\r\n"
          "To: {to}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{mid}>\r\n"
          "{refs}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
          "Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n> On earlier, the desk wrote:\r\n"
          "> quoted history of the conversation\r\n")
RAW_OUT = ("From: Scale Desk <support@example.com>\r\nTo: {to}\r\n"
           "Reply-To: support+{ticket}-{token}@example.com\r\nSubject: {subject} [MD#{ticket}]\r\n"
           "Date: {date}\r\nMessage-ID: <{mid}>\r\nIn-Reply-To: <{parent}>\r\n"
           "References: <{parent}>\r\nThread-Topic: {subject}\r\nThread-Index: {ti}\r\n"
           "Auto-Submitted: auto-replied\r\nX-Loop: support@example.com\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/alternative; boundary=\"=_b{ticket}\"\r\n\r\n"
           "--=_b{ticket}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\n{body}\r\n"
           "--=_b{ticket}\r\nContent-Type: text/html; charset=\"utf-8\"\r\n\r\n"
           "<!DOCTYPE html>\r\n<html><body><p>{body}</p></body></html>\r\n--=_b{ticket}--\r\n")


# --- the desk's data ------------------------------------------------------------------------


class Shape:
    """The rows of N tickets, generated ticket by ticket in id order (so ids, times and most
    keys ascend, as they do in a desk that grew), `chunk` tickets at a time."""

    def __init__(self, n: int, now: float, *, sqlite: bool, seed: int = 14) -> None:
        self.n = n
        self.now = now
        self.start = now - SPAN
        self.sqlite = sqlite
        self.rng = random.Random(seed)
        self.entry_id = self.outbox_id = 0
        self.counts = {t: 0 for t in TABLES}

    def ts(self, t: float) -> str:
        s = datetime.fromtimestamp(t, UTC).isoformat(" ", "microseconds")
        return s[:26] if self.sqlite else s

    def chunks(self, chunk: int = 5000) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
        for first in range(1, self.n + 1, chunk):
            out: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
            for i in range(first, min(self.n, first + chunk - 1) + 1):
                self._ticket(i, out)
            for t, rows in out.items():
                self.counts[t] += len(rows)
            yield out

    def _ticket(self, i: int, out: dict[str, list[tuple[Any, ...]]]) -> None:
        rng, ts = self.rng, self.ts
        created = self.start + SPAN * (i - 1) / self.n + rng.random() * 60
        queue = rng.choices(list(QUEUES), [q[0] for q in QUEUES.values()])[0]
        priority = rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]
        policy = "urgent" if priority in ("high", "urgent") else "standard"
        customer = rng.randrange(max(1, self.n // 3))  # customers come back
        domain = f"customer{customer % 5000}.example"
        requester = f"c{customer}@{domain}"
        name = f"Customer {customer}"
        subject = TOPICS[i % len(TOPICS)].format(100_000 + i)
        live = rng.random() < 0.20
        mails = rng.choices((1, 2, 3, 4, 5), (20, 15, 30, 20, 15))[0]
        status = (rng.choices(("new", "open", "pending"), (15, 60, 25))[0] if live else
                  rng.choices(("solved", "closed"), (35, 65))[0])
        if status == "new":
            mails = 1
        assignee = (None if status == "new" or rng.random() < 0.05
                    else rng.choice(QUEUES[queue][1]))
        agent = assignee or AGENTS[0]
        # the conversation: customer, agent, customer, ... minutes to days apart
        times, t = [], created
        for _ in range(mails):
            times.append(t)
            t += rng.expovariate(1 / (6 * 3600))
        if live:  # still running: its last mail is recent
            times[-1] = max(times[-1], self.now - rng.random() * 6 * DAY)
        times = [min(x, self.now - 1) for x in times]
        first_response = times[1] if mails > 1 else None
        last = times[-1]
        solved = closed = paused = sla_next = None
        if status in ("solved", "closed"):
            solved = last + rng.expovariate(1 / (2 * 3600))
            closed = solved + 7 * DAY if status == "closed" else None
        elif status == "pending":
            paused = max(last, self.now - rng.random() * 6.5 * DAY)
        else:  # new, open: the next reminder or breach is ahead (next 30 days)
            sla_next = self.now - 30 + rng.random() * 30 * DAY
        updated = max(x for x in (last, solved, closed, paused) if x is not None)
        fr_due = created + (3600 if policy == "urgent" else 8 * 3600)
        res_due = created + (DAY if policy == "urgent" else 30 * DAY)
        out["ticket"].append((
            i, subject, subject.lower(), status, priority, queue, assignee, requester, None,
            "vip" if customer % 17 == 0 else "", ts(created), ts(updated), ts(last), ts(last),
            ts(first_response) if first_response else None, mails > 1, None,
            ts(solved) if solved else None, ts(closed) if closed else None, ts(fr_due), None,
            ts(res_due), policy, None, None, rng.randrange(2), rng.randrange(2),
            ts(paused) if paused else None, ts(sla_next) if sla_next else None))
        out["participant"].append((i, requester, "requester"))
        if customer % 5 == 0:
            out["participant"].append((i, f"colleague{customer}@{domain}", "cc"))
        parent = ""
        for j, at in enumerate(times):
            self.entry_id += 1
            e = self.entry_id
            by_agent = j % 2 == 1
            frm = agent if by_agent else requester
            mid = f"{int(at):x}.{i}.{j}@{'agents.example.com' if by_agent else domain}"
            subj = ("Re: " if j else "") + subject
            body = BODY.format(subject=subject, name=agent if by_agent else name)
            when = ts(at)
            raw = RAW_IN.format(frm=frm, domain=domain, date=when, name=name, subject=subj,
                                to="support@example.com", mid=mid, body=body,
                                refs=f"In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\n"
                                if parent else "").encode()
            out["entry"].append((e, i, e, "agent_reply" if by_agent else "customer", frm, subj,
                                 body, when, mid, True if by_agent else None,
                                 "references" if j else "new_ticket",
                                 "In-Reply-To/References or Message-ID link to a message on"
                                 " the ticket" if j else "no ticket matched"))
            out["inbox"].append((e, when, "smtp", frm, "support@example.com", mid,
                                 hashlib.sha256(raw).hexdigest(), len(raw), "processed",
                                 "threading references; rules: none fired", 0, i, e, when))
            out["inbox_raw"].append((e, raw))
            out["message_ref"].append((mid, i, "own"))
            # what the daemon sent for it: an ack and the agent's notification for a new
            # ticket, the relay of an agent's reply, a notification of a customer's reply
            sent = ([("ack", requester, True), ("new_ticket_agent", agent, False)] if j == 0
                    else [("agent_reply", requester, False)] if by_agent
                    else [("customer_reply_agent", agent, False)])
            for template, to, automatic in sent:
                self.outbox_id += 1
                o = self.outbox_id
                omid = f"{o:012x}{rng.getrandbits(80):020x}@example.com"
                ti = "ti:" + base64.b64encode(o.to_bytes(6, "big") + rng.randbytes(16)).decode()
                oraw = RAW_OUT.format(to=to, ticket=i, token="abcd1234", subject=subject,
                                      date=when, mid=omid, parent=mid, ti=ti[3:],
                                      body=body).encode()
                out["outbox"].append((o, i, e, template, automatic, to,
                                      f"bounces+{o}-abcd1234@example.com", omid, oraw, when,
                                      "sent", 1, when, when))
                out["message_ref"].append((omid, i, "own"))
                out["message_ref"].append((ti, i, "thread_index"))
                if automatic:
                    out["auto_reply"].append((to, when))
            parent = mid


# --- filling a database ------------------------------------------------------------------


def _indexes(conn: Any, sqlite: bool) -> list[tuple[str, str]]:
    """(name, CREATE statement) of the droppable secondary indexes of our tables."""
    if sqlite:
        return [(name, sql) for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            f" AND tbl_name IN ({', '.join('?' * len(TABLES))})", list(TABLES)).fetchall()]
    with conn.cursor() as cur:
        cur.execute("SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname ="
                    " 'public' AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM"
                    " pg_constraint c WHERE c.conname = i.indexname)", (list(TABLES),))
        return list(cur.fetchall())


def fill(url: str, n: int, now: float, log: Any) -> dict[str, int]:
    """N tickets into the (migrated, empty) database of `url`; the row counts."""
    sqlite = url.startswith("sqlite")
    shape = Shape(n, now, sqlite=sqlite)
    conn = direct.connect(url)
    indexes = _indexes(conn, sqlite)
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    if sqlite:
        conn.execute("PRAGMA journal_mode=OFF")  # a fresh file: nothing to roll back to
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-500000")
        sql = {t: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})"
               for t, c in TABLES.items()}
    else:
        conn.commit()
    done = 0
    for chunk in shape.chunks():
        if sqlite:
            conn.execute("BEGIN")
            for table, rows in chunk.items():
                conn.executemany(sql[table], rows)
            conn.execute("COMMIT")
        else:
            with conn.cursor() as cur:
                for table, rows in chunk.items():
                    with cur.copy(f"COPY {table} ({', '.join(TABLES[table])}) FROM STDIN") as cp:
                        for row in rows:
                            cp.write_row(row)
            conn.commit()
        done += len(chunk["ticket"])
        if done % 100_000 < 5000:
            log(f"  {done:,} tickets seeded")
    log("  building the indexes")
    for _, create in indexes:
        conn.execute(create)
    if sqlite:
        conn.execute("PRAGMA journal_mode=WAL")  # as the daemon runs it
    else:
        for table in ("ticket", "entry", "inbox", "outbox", "message_ref"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                         f" (SELECT max(id) FROM {table}))")
        conn.commit()
        conn.autocommit = True
        log("  VACUUM ANALYZE")
        conn.execute("VACUUM ANALYZE")
    conn.close()
    return shape.counts


# --- databases ----------------------------------------------------------------------------


class Postgres:
    """Scratch databases next to the one of `url` (the empty desks), dropped after."""

    def __init__(self, url: str) -> None:
        self.base = url.rsplit("/", 1)[0]
        self.made: list[str] = []

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect("postgresql://" + self.base.partition("://")[2] + "/postgres",
                               autocommit=True)

    def create(self) -> str:
        name = f"maildesk_scale_{uuid.uuid4().hex[:10]}"
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return f"{self.base}/{name}"

    def drop(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = %s", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        self.made.remove(name)


def migrate(url: str) -> None:
    """The schema, through the product (`Database.ensure_schema`: its migrations)."""
    from maildesk.store import Database

    db = Database(url)
    db.ensure_schema()
    db.dispose()


def db_bytes(url: str) -> int:
    path = direct.sqlite_file(url)
    if path is not None:
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    with direct.Reader(url).read_raw() as r:
        found = r.one("SELECT pg_database_size(current_database())")
    return int(found[0]) if found else 0


def count(url: str, table: str) -> int:
    with direct.Reader(url).read_raw() as r:
        found = r.one(f"SELECT max(id) FROM {table}")
    return int(found[0] or 0) if found else 0


# --- ingest: bench/ingest.py's workload into a real daemon ------------------------------


def write_config(folder: Path, url: str, port: int) -> Path:
    agents = "\n".join(f'[[agents]]\nemail = "{a}"\nname = "Agent {k}"\n'
                       for k, a in enumerate(AGENTS))
    queues = "\n".join(f'[[queues]]\nname = "{q}"\naddress = "{q}@example.com"\n'
                       f"agents = {json.dumps(agents_)}\n"
                       for q, (_, agents_) in QUEUES.items() if q != "general")
    path = folder / "maildesk.toml"
    path.write_text(CONFIG.format(templates=REPO / "templates", url=url, port=port,
                                  folder=folder, agents=agents, queues=queues))
    return path


class Desk(Daemon):
    """bench/ingest.py's `maildesk serve`, on the database of `url` with this bench's config."""

    def __init__(self, folder: Path, url: str) -> None:
        super().__init__(folder)
        self.url = url
        self.config = write_config(folder, url, self.port)


class Settled:
    """Polls the database until every message sent since it started is fully processed:
    its ticket stored (inbox row no longer queued), its body filled in (no follow-up left)
    and every outgoing mail written (no outbox row pending)."""

    def __init__(self, url: str) -> None:
        self.inbox0, self.outbox0 = count(url, "inbox"), count(url, "outbox")
        self.conn = direct.connect(url)
        if not url.startswith("sqlite"):
            self.conn.autocommit = True
        self.sql = ("SELECT (SELECT count(*) FROM inbox WHERE id > ? AND state != 'queued'),"
                    " (SELECT count(*) FROM deferred),"
                    " (SELECT count(*) FROM outbox WHERE id > ? AND state = 'pending')")
        if not url.startswith("sqlite"):
            self.sql = self.sql.replace("?", "%s")

    def wait_for(self, n: int, timeout: float = 900) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            stored, following, pending = self.conn.execute(
                self.sql, (self.inbox0, self.outbox0)).fetchone()
            if stored >= n and following == 0 and pending == 0:
                self.conn.close()
                return time.time()
            time.sleep(0.01)
        raise RuntimeError(f"after {timeout}s: {stored} of {n} stored, {following} follow-ups"
                           f" and {pending} outgoing mails left")


def ingest(folder: Path, url: str, messages: list[bytes]) -> float:
    """msg/s of `messages` over one SMTP connection into a `maildesk serve` on `url`, from
    the first DATA until all are fully processed."""
    desk = Desk(folder, url)
    settled = Settled(url)
    desk.start()
    try:
        sent = send_all(desk.port, messages, 1, None)
        done = settled.wait_for(len(sent.accepted))
    finally:
        code = desk.stop()
    if code != 0 or sent.errors:
        raise RuntimeError(f"daemon exit {code}, {sent.errors} messages not accepted"
                           f" (see {folder / 'daemon.log'})")
    return len(sent.accepted) / (done - sent.first_data)


# --- the reads ------------------------------------------------------------------------------


def maildesk() -> list[str]:
    exe = Path(sys.executable).with_name("maildesk")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "maildesk.cli"]


def cli_seconds(config: Path, args: list[str], runs: int = 5) -> float:
    """Median wall time of `maildesk ARGS --config CONFIG`, one process each."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([*maildesk(), *args, "--config", str(config)],
                              capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"maildesk {' '.join(args)}: exit {done.returncode}:"
                               f" {done.stderr.decode()[-2000:]}")
    return statistics.median(times)


def sample_tickets(url: str, k: int, seed: int = 3) -> list[tuple[int, str, str, str]]:
    """(id, requester, subject_key, a Message-ID on it) of k tickets across the desk."""
    rng = random.Random(seed)
    with direct.Reader(url).read_raw() as r:
        top = int((r.one("SELECT max(id) FROM ticket") or (0,))[0] or 0)
        out = []
        for i in rng.sample(range(1, top + 1), min(k, top)):
            row = r.one("SELECT t.id, t.requester, t.subject_key, e.message_id FROM ticket t"
                        " JOIN entry e ON e.ticket_id = t.id WHERE t.id = ?"
                        " ORDER BY e.id DESC LIMIT 1", (i,))
            if row:
                out.append((int(row[0]), str(row[1]), str(row[2]), str(row[3])))
    return out


def threading_ms(url: str, samples: list[tuple[int, str, str, str]]) -> tuple[float, float]:
    """Median and p99 ms of the lookups threading makes for one message (SessionLookup, the
    processing path's): a reply naming a stored message among unknown ones, the subject
    window for its sender and subject, and whether the sender is a participant."""
    from maildesk.store.tickets import SessionLookup

    since = datetime.now(UTC) - timedelta(days=7)
    took = []
    with direct.Reader(url).read_raw() as r:
        for ticket, sender, key, mid in samples:
            t0 = time.perf_counter()
            lookup = SessionLookup(r)
            found = lookup.tickets_by_keys([f"unknown-{ticket}-{k}@x.example" for k in range(4)]
                                           + [mid])
            lookup.ticket_by_subject(sender, key, since)
            lookup.ticket_by_subject(f"new-{ticket}@x.example", key + " x", since)
            lookup.is_participant(ticket, sender)
            took.append((time.perf_counter() - t0) * 1000)
            assert found and found[0].id == ticket, (found, ticket)
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(0.99 * len(took)))]


def sla_scan_s(url: str, config: Path) -> tuple[float, int]:
    """Median seconds of three SLA scans (maildesk.escalation.scan) 30 s apart from now,
    and the tickets they visited."""
    from maildesk.config import load_settings
    from maildesk.escalation import scan
    from maildesk.outbound.compose import Composer
    from maildesk.outbound.render import Templates
    from maildesk.store import Database

    cfg = load_settings(config)
    db = Database(url)
    composer = Composer(cfg, Templates(cfg.desk.templates))
    now = datetime.now(UTC)
    times, visited = [], 0
    for k in range(3):
        t0 = time.perf_counter()
        result = scan(db, cfg, composer, now + timedelta(seconds=30 * k))
        times.append(time.perf_counter() - t0)
        visited += result.tickets
    db.dispose()
    return statistics.median(times), visited


def plans(url: str, sample: tuple[int, str, str, str]) -> dict[str, str]:
    """The database's plan for each read measured here (the SQL the product runs)."""
    ticket, sender, key, mid = sample
    t = "2026-01-01 00:00:00.000000"
    reads = {
        "list page": ("SELECT id FROM ticket WHERE merged_into IS NULL AND status = ?"
                      " ORDER BY id DESC LIMIT ?", ("open", 51)),
        "list total": ("SELECT count(*) FROM ticket WHERE merged_into IS NULL AND status = ?",
                       ("open",)),
        "show entries": ("SELECT e.id FROM entry e LEFT JOIN deferred d ON d.entry_id = e.id"
                         " WHERE e.ticket_id = ? ORDER BY e.created_at, e.id", (ticket,)),
        "thread refs": ("SELECT DISTINCT ticket_id FROM message_ref WHERE key IN (?, ?)",
                        (mid, "x@y")),
        "thread subject": ("SELECT t.id FROM ticket t JOIN participant p ON p.ticket_id = t.id"
                           " WHERE t.subject_key = ? AND p.address = ? AND t.status != ?"
                           " AND t.merged_into IS NULL AND t.last_activity_at >= ?"
                           " ORDER BY t.last_activity_at DESC LIMIT 1",
                           (key, sender, "closed", t)),
        "participant": ("SELECT 1 FROM participant WHERE ticket_id = ? AND address = ? LIMIT 1",
                        (ticket, sender)),
        "sla scan": ("SELECT id FROM ticket WHERE sla_next_at <= ? ORDER BY sla_next_at, id"
                     " LIMIT ?", (t, 50)),
    }
    out = {}
    with direct.Reader(url).read_raw() as r:
        for name, (sql, params) in reads.items():
            if r.sqlite:
                rows = r.rows(f"EXPLAIN QUERY PLAN {sql}", params)
                out[name] = "; ".join(str(row[-1]) for row in rows)
            else:
                if not r.sqlite:
                    params = tuple(datetime(2026, 1, 1, tzinfo=UTC) if p == t else p
                                   for p in params)
                rows = r.rows(f"EXPLAIN {sql}", params)
                out[name] = "; ".join(str(row[0]).strip() for row in rows)
    return out


def full_scans(found: dict[str, str]) -> list[str]:
    """The reads whose plan scans a whole table (SQLite `SCAN t` without an index,
    PostgreSQL `Seq Scan`)."""
    bad = []
    for name, plan in found.items():
        for step in plan.split("; "):
            if "Seq Scan" in step or (step.startswith("SCAN ") and "INDEX" not in step):
                bad.append(f"{name}: {step}")
    return bad


# --- the run --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="leave the database and DIR/maildesk.toml here")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--database", metavar="URL",
                    help="the (empty) database to fill; default a SQLite file")
    ap.add_argument("--messages", type=int, default=2000, help="the ingest workload")
    ap.add_argument("--runs", type=int, default=1, help="ingest runs into each desk")
    args = ap.parse_args()
    began = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - began:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="maildesk-scale-"))
    scratch = Path(tempfile.mkdtemp(prefix="maildesk-scale-empty-"))
    url = args.database or f"sqlite:///{folder.resolve()}/maildesk.db"
    sqlite = url.startswith("sqlite")
    pg = None if sqlite else Postgres(url)
    result: dict[str, Any] = {"tickets": args.tickets,
                              "database": "sqlite" if sqlite else "postgresql"}
    try:
        migrate(url)
        if count(url, "ticket"):
            raise SystemExit(f"{url} is not empty: the bench fills a fresh database")
        t0 = time.time()
        log(f"seeding {args.tickets:,} tickets into {url}")
        counts = fill(url, args.tickets, t0, log)
        result["fill_s"] = round(time.time() - t0, 1)
        result["rows"] = counts
        log(f"seeded in {result['fill_s']}s: {counts}")

        empty_rates, full_rates = [], []
        start_desk: tuple[Path, str] | None = None
        for run in range(args.runs):
            messages = generate(args.messages, seed=42 + run)
            empty_dir = scratch / f"empty{run}"
            empty_dir.mkdir()
            empty_url = f"sqlite:///{empty_dir}/maildesk.db" if pg is None else pg.create()
            migrate(empty_url)
            empty_rates.append(ingest(empty_dir, empty_url, messages))
            log(f"ingest into the empty desk: {empty_rates[-1]:.1f} msg/s")
            if start_desk is None:
                start_desk = (empty_dir / "maildesk.toml", empty_url)
            elif pg is not None:
                pg.drop(empty_url)
            full_rates.append(ingest(folder, url, messages))
            log(f"ingest into the full desk: {full_rates[-1]:.1f} msg/s")
        result["ingest_empty_msg_s"] = round(statistics.median(empty_rates), 1)
        result["ingest_full_msg_s"] = round(statistics.median(full_rates), 1)
        result["ingest_ratio"] = round(statistics.median(
            f / e for f, e in zip(full_rates, empty_rates, strict=True)), 3)

        config = folder / "maildesk.toml"
        samples = sample_tickets(url, 300)
        show_id = samples[0][0]
        assert start_desk is not None
        start = cli_seconds(start_desk[0], ["tickets", "list", "--status", "open", "--limit",
                                            "50"])
        result["cli_start_s"] = round(start, 3)
        for name, argv in (("list_open_s", ["tickets", "list", "--status", "open",
                                            "--limit", "50"]),
                           ("show_s", ["tickets", "show", str(show_id)]),
                           ("report_s", ["report", "--json"])):
            result[name] = round(cli_seconds(config, argv, runs=3 if name == "report_s" else 5),
                                 3)
            log(f"{name}: {result[name]}s")
        median_ms, p99_ms = threading_ms(url, samples)
        result["thread_lookup_ms"] = round(median_ms, 2)
        result["thread_lookup_p99_ms"] = round(p99_ms, 2)
        scan_s, visited = sla_scan_s(url, config)
        result["sla_scan_s"] = round(scan_s, 3)
        result["sla_scan_visited"] = visited
        found = plans(url, samples[0])
        result["full_scans"] = full_scans(found)
        messages_stored = count(url, "inbox")
        result["db_bytes"] = db_bytes(url)
        result["db_bytes_per_message"] = round(result["db_bytes"] / max(1, messages_stored))
        result["load"] = os.getloadavg()[0]
        result["total_s"] = round(time.time() - began, 1)
        if not args.json:
            for name, plan in found.items():
                print(f"  plan of {name:<15} {plan}")
    finally:
        if pg is not None:
            for name in list(pg.made):
                pg.drop(f"{pg.base}/{name}")
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:<24} {value}")


if __name__ == "__main__":
    main()
