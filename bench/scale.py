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
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import Daemon, exit_on_sigterm, generate, send_all  # noqa: E402  (bench/ingest.py)

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
BUSINESS_SHARE = 45 / 168  # Mon-Fri 09:00-18:00
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
BODY = ("Hello,\n\nI am writing about my order. Lorem ipsum dolor sit amet, consectetur"
        " adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."
        " Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip"
        " ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit"
        " esse cillum dolore eu fugiat nulla pariatur.\n\nRegards,\nthe writer\n")


# --- the desk's data: SQL that the database runs itself -------------------------------------


class Dialect:
    """The few expressions in which SQLite and PostgreSQL differ."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite

    def ts(self, epoch: str) -> str:
        """A time column's value from seconds since the epoch (as the product stores it)."""
        if self.sqlite:
            return f"(strftime('%Y-%m-%d %H:%M:%f', {epoch}, 'unixepoch') || '000')"
        return f"to_timestamp({epoch})"

    def blob(self, text: str) -> str:
        return f"CAST({text} AS BLOB)" if self.sqlite else f"convert_to({text}, 'UTF8')"

    def pad(self, number: str, width: int) -> str:
        if self.sqlite:
            return f"printf('%0{width}d', {number})"
        return f"lpad(CAST({number} AS TEXT), {width}, '0')"

    def least(self, a: str, b: str) -> str:
        return f"min({a}, {b})" if self.sqlite else f"least({a}, {b})"

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})" if self.sqlite else f"greatest({a}, {b})"


def _case(value: str, choices: list[tuple[int, str]]) -> str:
    """CASE over `value` in 0..99: the first (bound, result) with value < bound."""
    whens = " ".join(f"WHEN {value} < {bound} THEN {result}" for bound, result in choices[:-1])
    return f"CASE {whens} ELSE {choices[-1][1]} END"


def seed_sql(n: int, now: float, d: Dialect) -> list[str]:
    """The statements that fill an empty desk with N tickets (see the module's doc): a
    temporary table of per-ticket facts from integer hashes of the ticket number (so the
    fill is the same every time), and every table from it."""
    start, step = now - SPAN, SPAN / n
    h = "((i * 2654435761) % 4294967296)"
    g = "((i * 2246822519 + 3266489917) % 4294967296)"
    agent = ("'agent' || CAST(CASE queue WHEN 'billing' THEN (g >> 12) % 3 WHEN 'tech' THEN"
             " 3 + (g >> 12) % 4 WHEN 'sales' THEN 6 + (g >> 12) % 2 ELSE (g >> 12) % 8 END"
             " AS TEXT) || '@agents.example.com'")
    topic = " ".join(f"WHEN {k} THEN '{t.format(chr(1))}'" for k, t in enumerate(TOPICS))
    subject = f"replace(CASE i % {len(TOPICS)} {topic} END, char(1), CAST(100000 + i AS TEXT))"
    if not d.sqlite:
        subject = subject.replace("char(1)", "chr(1)")
    live_status = _case("(g >> 16) % 100", [(15, "'new'"), (75, "'open'"), (100, "'pending'")])
    done_status = _case("(g >> 16) % 100", [(35, "'solved'"), (100, "'closed'")])
    queue = _case(f"({h} >> 16) % 100", [(40, "'general'"), (65, "'billing'"),
                                          (90, "'tech'"), (100, "'sales'")])
    nums = ("WITH RECURSIVE s(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM s"
            f" WHERE i < {n})")
    base = (
        f"CREATE TEMP TABLE seed0 AS {nums} SELECT i, h, g, "
        f"CASE WHEN live THEN {live_status} ELSE {done_status} END AS status, live, queue,"
        " CASE WHEN (h >> 8) % 100 < 10 THEN 'low' WHEN (h >> 8) % 100 < 80 THEN 'normal'"
        " WHEN (h >> 8) % 100 < 95 THEN 'high' ELSE 'urgent' END AS priority,"
        f" (g >> 4) % {max(1, n // 3)} AS cust,"
        f" {start} + (i - 1) * {step} + h % 60 AS created, 600 + g % 43200 AS gap"
        f" FROM (SELECT i, {h} AS h, {g} AS g, ({g} >> 24) % 100 < 20 AS live,"
        f" {queue} AS queue"
        f" FROM s) q"
    )
    mails = _case("(h >> 24) % 100", [(20, "1"), (35, "2"), (65, "3"), (85, "4"), (100, "5")])
    recent = d.greatest("created + (mails - 1) * gap", f"{now} - (h >> 4) % 518400")
    last_ = d.least(f"CASE WHEN live THEN {recent} ELSE created + (mails - 1) * gap END",
                    f"{now} - 1")
    seed1 = (
        "CREATE TEMP TABLE seed1 AS SELECT b.*, CASE WHEN status = 'new' THEN 1 ELSE"
        f" {mails} END AS mails FROM seed0 b")
    seed = (
        "CREATE TEMP TABLE seed AS SELECT c.*,"
        " sum(mails) OVER (ORDER BY i) - mails AS first_entry,"
        " sum(mails + 1) OVER (ORDER BY i) - mails - 1 AS first_outbox,"
        " 'c' || CAST(cust AS TEXT) || '@customer' || CAST(cust % 5000 AS TEXT) || '.example'"
        " AS requester, 'Customer ' || CAST(cust AS TEXT) AS name,"
        " 'customer' || CAST(cust % 5000 AS TEXT) || '.example' AS domain,"
        f" CASE WHEN status = 'new' OR h % 20 = 0 THEN NULL ELSE {agent} END AS assignee,"
        f" {subject} AS subject FROM (SELECT s1.*, {last_} AS last FROM seed1 s1) c")
    t = d.ts
    done = "status IN ('solved', 'closed')"
    solved = "last + 600 + h % 14400"
    closed = f"{solved} + 604800"
    is_closed = "status = 'closed'"
    urgent = "priority IN ('high', 'urgent')"
    ticket = (
        f"INSERT INTO ticket ({', '.join(TICKET_COLUMNS)}) SELECT i, subject, lower(subject),"
        " status, priority, queue, assignee, requester, NULL,"
        f" CASE WHEN cust % 17 = 0 THEN 'vip' ELSE '' END, {t('created')},"
        f" {t(f'CASE WHEN {is_closed} THEN {closed} WHEN {done} THEN {solved} ELSE last END')},"
        f" {t('last')}, {t('last')}, CASE WHEN mails > 1 THEN {t('created + gap')} END,"
        f" mails > 1, NULL, CASE WHEN {done} THEN {t(solved)} END,"
        f" CASE WHEN status = 'closed' THEN {t(closed)} END,"
        f" {t(f'created + CASE WHEN {urgent} THEN 3600 ELSE 28800 END')}, NULL,"
        f" {t(f'created + CASE WHEN {urgent} THEN 86400 ELSE 2592000 END')},"
        f" CASE WHEN {urgent} THEN 'urgent' ELSE 'standard' END, NULL, NULL, h % 2, g % 2,"
        f" CASE WHEN status = 'pending' THEN {t('last')} END,"
        f" CASE WHEN status IN ('new', 'open') THEN {t(f'{now} - 30 + g % 2592000')} END,"
        # business times as maildesk.deadlines records them: 45 office hours of a week's 168
        f" CASE WHEN mails > 1 THEN gap * {BUSINESS_SHARE} END,"
        f" CASE WHEN {done} THEN ({solved} - created) * {BUSINESS_SHARE} END"
        " FROM seed")
    # the mails of each ticket: seed x n in 0..mails-1, customer and agent in turn
    agent_of = f"coalesce(s.assignee, '{AGENTS[0]}')"
    frm = f"CASE WHEN j.n % 2 = 1 THEN {agent_of} ELSE s.requester END"
    mid = (f"'m' || {d.pad('s.i', 8)} || '.' || CAST(j.n AS TEXT) || '@' ||"
           " CASE WHEN j.n % 2 = 1 THEN 'agents.example.com' ELSE s.domain END")
    at = t(f"CASE WHEN j.n = s.mails - 1 THEN s.last ELSE"
           f" {d.least('s.created + j.n * s.gap', f'{now} - 1')} END")
    entry = (
        "INSERT INTO entry (id, ticket_id, inbox_id, kind, from_addr, subject, body, created_at,"
        " message_id, verified, thread_rule, thread_reason) SELECT s.first_entry + j.n + 1,"
        " s.i, s.first_entry + j.n + 1, CASE WHEN j.n % 2 = 1 THEN 'agent_reply' ELSE"
        f" 'customer' END, {frm}, CASE WHEN j.n > 0 THEN 'Re: ' ELSE '' END || s.subject,"
        f" '{BODY}', {at}, {mid}, CASE WHEN j.n % 2 = 1 THEN TRUE END,"
        " CASE WHEN j.n > 0 THEN 'references' ELSE 'new_ticket' END, CASE WHEN j.n > 0 THEN"
        " 'In-Reply-To/References or Message-ID link to a message on the ticket' ELSE"
        " 'no ticket matched by token, tag, references or subject' END"
        " FROM seed s CROSS JOIN nums j WHERE j.n < s.mails")
    # the rest from the entries (their times, ids and senders computed once)
    inbox = (
        "INSERT INTO inbox (id, received_at, source, envelope_from, envelope_to, message_id,"
        " content_hash, size, state, reason, attempts, ticket_id, entry_id, processed_at)"
        " SELECT id, created_at, 'smtp', from_addr, 'support@example.com', message_id,"
        f" {d.pad('id * 2654435761', 64)}, 1100 + length(subject), 'processed',"
        " 'threading: rules: none fired', 0, ticket_id, id, created_at FROM entry")
    crlf = "\r\n"
    of_entry = "FROM entry e JOIN seed s ON s.i = e.ticket_id"
    raw_in = d.blob(
        f"format('Return-Path: <%s>{crlf}Received: from mx.%s (mx.%s [192.0.2.1]){crlf}"
        f"\tby desk.example.com with ESMTPS; %s{crlf}From: %s{crlf}To: support@example.com"
        f"{crlf}Subject: %s{crlf}Date: %s{crlf}Message-ID: <%s>{crlf}%sMIME-Version: 1.0{crlf}"
        f"Content-Type: text/plain; charset=utf-8{crlf}Content-Transfer-Encoding: 8bit{crlf}"
        f"{crlf}', e.from_addr, s.domain, s.domain, e.created_at, e.from_addr, e.subject,"
        f" e.created_at, e.message_id, CASE WHEN e.id > s.first_entry + 1 THEN"
        f" format('In-Reply-To: <m%s.%s>{crlf}References: <m%s.%s>{crlf}', {d.pad('s.i', 8)},"
        f" e.id - s.first_entry - 2, {d.pad('s.i', 8)}, e.id - s.first_entry - 2) ELSE '' END)"
        f" || '{BODY}{crlf}> On earlier, the desk wrote:{crlf}> quoted history{crlf}'")
    inbox_raw = f"INSERT INTO inbox_raw (inbox_id, raw) SELECT e.id, {raw_in} {of_entry}"
    refs_in = "INSERT INTO message_ref (key, ticket_id, kind) SELECT message_id, ticket_id," \
              " 'own' FROM entry"
    # what the daemon sent for each mail: the ack and (below) the agent's notification
    # for the first, the relay of an agent's reply, the notification of a customer's
    # reply; outbox k of a ticket: 0 the ack, 1 the notification, n + 1 for mail n > 0
    n_of = "(e.id - s.first_entry - 1)"
    k_of = f"CASE WHEN {n_of} = 0 THEN 0 ELSE {n_of} + 1 END"
    o_id = f"s.first_outbox + {k_of} + 1"
    template = (f"CASE WHEN {n_of} = 0 THEN 'ack' WHEN {n_of} % 2 = 1 THEN 'agent_reply'"
                " ELSE 'customer_reply_agent' END")
    to = f"CASE WHEN {n_of} % 2 = 1 OR {n_of} = 0 THEN s.requester ELSE {agent_of} END"
    raw_out = (
        f"format('From: Scale Desk <support@example.com>{crlf}To: %s{crlf}Reply-To: support+%s"
        f"-abcd1234@example.com{crlf}Subject: %s [MD#%s]{crlf}Date: %s{crlf}Message-ID: <o%s"
        f"f3c1a2b4d5e6@example.com>{crlf}In-Reply-To: <%s>{crlf}References: <%s>{crlf}"
        f"Thread-Topic: %s{crlf}Thread-Index: AdB%sPSLCbfQqO+AtaQ2v{crlf}Auto-Submitted:"
        f" auto-replied{crlf}X-Loop: support@example.com{crlf}MIME-Version: 1.0{crlf}"
        f"Content-Type: multipart/alternative; boundary=\"=_b\"{crlf}{crlf}--=_b{crlf}"
        f"Content-Type: text/plain; charset=\"utf-8\"{crlf}{crlf}', {{to}}, s.i, s.subject, s.i,"
        f" e.created_at, {{oid}}, e.message_id, e.message_id, s.subject, {{oid}})"
        f" || '{BODY}{crlf}--=_b{crlf}Content-Type: text/html; charset=\"utf-8\"{crlf}{crlf}"
        f"<!DOCTYPE html>{crlf}<html><body><p>{BODY}</p></body></html>{crlf}--=_b--{crlf}'")

    def outbox(o: str, k_template: str, k_to: str, automatic: str, where: str) -> str:
        oid = d.pad(o, 12)
        return (
            "INSERT INTO outbox (id, ticket_id, entry_id, template, automatic, recipients,"
            " envelope_from, message_id, raw, created_at, state, attempts, next_attempt_at,"
            f" sent_at) SELECT {o}, s.i, e.id, {k_template}, {automatic}, {k_to},"
            f" 'bounces+' || CAST({o} AS TEXT) || '-abcd1234@example.com',"
            f" 'o' || {oid} || 'f3c1a2b4d5e6@example.com',"
            f" {d.blob(raw_out.format(to=k_to, oid=oid))}, e.created_at, 'sent', 1,"
            f" e.created_at, e.created_at {of_entry}{where}")

    outbox_1 = outbox(o_id, template, to, f"{n_of} = 0", "")
    outbox_2 = outbox("s.first_outbox + 2", "'new_ticket_agent'", agent_of, "1 = 0",
                      f" WHERE {n_of} = 0")
    refs_out = ("INSERT INTO message_ref (key, ticket_id, kind) SELECT message_id, ticket_id,"
                " 'own' FROM outbox")
    refs_ti = ("INSERT INTO message_ref (key, ticket_id, kind) SELECT 'ti:AdB' ||"
               f" {d.pad('id', 12)} || 'PSLCbfQqO+AtaQ2v', ticket_id, 'thread_index' FROM outbox")
    people = (
        "INSERT INTO participant (ticket_id, address, role) SELECT i, address, role FROM"
        " (SELECT i, requester AS address, 'requester' AS role FROM seed UNION ALL"
        " SELECT i, 'colleague' || CAST(cust AS TEXT) || '@' || domain, 'cc' FROM seed"
        " WHERE cust % 5 = 0) p ORDER BY i, role DESC")
    auto = ("INSERT INTO auto_reply (address, created_at) SELECT recipients, created_at FROM"
            " outbox WHERE template = 'ack' ORDER BY id")
    return [
        base, seed1, seed, "CREATE INDEX seed_i ON seed (i)",
        "CREATE TEMP TABLE nums AS SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2"
        " UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5",
        ticket, people, entry, inbox, inbox_raw, refs_in, outbox_1, outbox_2, refs_out,
        refs_ti, auto,
    ]


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
    conn = direct.connect(url)
    if not sqlite:
        conn.autocommit = True
    indexes = _indexes(conn, sqlite)
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    if sqlite:
        conn.execute("PRAGMA journal_mode=OFF")  # a fresh file: nothing to roll back to
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-400000")
        conn.execute("PRAGMA temp_store=FILE")
    else:
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET maintenance_work_mem = '512MB'")
    for sql in seed_sql(n, now, Dialect(sqlite)):
        t0 = time.time()
        conn.execute(sql)
        log(f"  {time.time() - t0:6.1f}s {' '.join(sql.split()[:3])}")
    log("  building the indexes")
    for _, create in indexes:
        conn.execute(create)
    counts = {}
    for table in TABLES:
        found = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        counts[table] = int(found[0])
    if sqlite:
        conn.execute("PRAGMA journal_mode=WAL")  # as the daemon runs it
    else:
        for table in ("ticket", "entry", "inbox", "outbox", "message_ref", "participant",
                      "auto_reply"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                         f" (SELECT max(id) FROM {table}))")
        log("  VACUUM ANALYZE")
        conn.execute("VACUUM ANALYZE")
    conn.close()
    return counts


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


def reads_ms(url: str, ticket: int, runs: int = 5) -> tuple[float, float]:
    """Median ms of what `tickets list --status open --limit 50` and `tickets show ID` read
    (the store functions the commands call, on a store.direct.Reader as they do): the
    commands' time beyond the process start, imports and config."""
    from maildesk.store import tickets

    db = direct.Reader(url)
    lists, shows = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        page = tickets.page(db, status="open", limit=50)
        lists.append((time.perf_counter() - t0) * 1000)
        assert len(page.tickets) == min(50, page.total)
        t0 = time.perf_counter()
        with db.read_raw() as r:
            row = tickets.get_row(r, ticket)
            assert row is not None
            tickets.view(r, row)
            tickets.entries(r, row.id)
        shows.append((time.perf_counter() - t0) * 1000)
    return statistics.median(lists), statistics.median(shows)


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
    week_ago = datetime.now(UTC) - timedelta(days=7)  # the subject window; a report's week
    t = week_ago.strftime("%Y-%m-%d %H:%M:%S.%f")
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
        "report since": ("SELECT id FROM ticket WHERE merged_into IS NULL AND created_at >= ?",
                         (t,)),
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
                params = tuple(week_ago if p == t else p for p in params)
                rows = r.rows(f"EXPLAIN {sql}", params)
                out[name] = "; ".join(str(row[0]).strip() for row in rows)
    return out


def full_scans(found: dict[str, str]) -> list[str]:
    """The reads whose plan scans a whole table (SQLite `SCAN t` without an index,
    PostgreSQL `Seq Scan`), but for `deferred` (`d`): the follow-ups still to do, a few
    rows that live for milliseconds, however large the desk."""
    bad = []
    for name, plan in found.items():
        for step in plan.split("; "):
            scan = re.search(r"(?:^SCAN|Seq Scan on) (\w+)", step.strip(" ->"))
            if scan and "INDEX" not in step and scan.group(1) not in ("d", "deferred"):
                bad.append(f"{name}: {step}")
    return bad


# --- the run --------------------------------------------------------------------------------


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="leave the database and DIR/maildesk.toml here")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--database", metavar="URL",
                    help="the (empty) database to fill; default a SQLite file")
    ap.add_argument("--messages", type=int, default=2000,
                    help="messages of the ingest workload (0: no ingest)")
    ap.add_argument("--runs", type=int, default=1, help="ingest runs into each desk")
    ap.add_argument("--reuse", action="store_true",
                    help="measure the desk an earlier --keep left in DIR (or --database)")
    ap.add_argument("--reads", type=int, default=5,
                    help="runs of each read command (median; 0: none)")
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
        t0 = time.time()
        migrate(url)
        seed = 42
        if args.reuse:  # the desk an earlier --keep left, upgraded to this schema
            result["migrate_s"] = round(time.time() - t0, 1)
            result["rows"] = {table: count(url, table) for table in TABLES if table != "inbox_raw"}
            result["tickets"] = result["rows"]["ticket"]
            seed += int(time.time()) % 100_000  # mail it has not seen yet
        elif count(url, "ticket"):
            raise SystemExit(f"{url} is not empty: the bench fills a fresh database"
                             " (--reuse measures it as it is)")
        else:
            log(f"seeding {args.tickets:,} tickets into {url}")
            result["rows"] = fill(url, args.tickets, t0, log)
            result["fill_s"] = round(time.time() - t0, 1)
            log(f"seeded in {result['fill_s']}s: {result['rows']}")

        empty_rates, full_rates = [], []
        start_desk: tuple[Path, str] | None = None
        for run in range(args.runs if args.messages else 0):  # --messages 0: no ingest
            messages = generate(args.messages, seed=seed + run)
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
        if empty_rates:
            result["ingest_empty_msg_s"] = round(statistics.median(empty_rates), 1)
            result["ingest_full_msg_s"] = round(statistics.median(full_rates), 1)
            result["ingest_ratio"] = round(statistics.median(
                f / e for f, e in zip(full_rates, empty_rates, strict=True)), 3)
        config = folder / "maildesk.toml"
        if start_desk is None:  # no ingest: an empty desk for the process start, and the
            start_dir = scratch / "start"  # config of the full one
            start_dir.mkdir()
            start_url = f"sqlite:///{start_dir}/maildesk.db" if pg is None else pg.create()
            migrate(start_url)
            start_desk = (write_config(start_dir, start_url, 2525), start_url)
            if not config.exists():
                write_config(folder, url, 2525)
        samples = sample_tickets(url, 300)
        show_id = samples[0][0]
        if args.reads:  # the commands as an operator types them
            start = cli_seconds(start_desk[0], ["tickets", "list", "--status", "open",
                                                "--limit", "50"], args.reads)
            result["cli_start_s"] = round(start, 3)
            month_ago = (datetime.now(UTC) - timedelta(days=30)).date().isoformat()
            for name, argv in (("list_open_s", ["tickets", "list", "--status", "open",
                                                "--limit", "50"]),
                               ("show_s", ["tickets", "show", str(show_id)]),
                               ("report_s", ["report", "--json"]),
                               ("report_month_s", ["report", "--json", "--since",
                                                   month_ago])):
                result[name] = round(cli_seconds(config, argv, args.reads), 3)
                log(f"{name}: {result[name]}s")
        result["list_open_read_ms"], result["show_read_ms"] = (
            round(ms, 1) for ms in reads_ms(url, show_id))
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
