"""A database outage under load, for tests/test_outage.py and bench/outage.py.

Real SMTP clients (smtplib) send to a real `maildesk serve` without pause, each message from
a customer of its own (so each opens a ticket and gets one acknowledgement), and keep every
message the daemon answered with a 4xx for a later try, as a sending MTA's queue does. What
each DATA got, and when, is recorded; the outage windows are recorded by the caller
(`Outages`); `verdict()` holds the answers against the windows and the database (read
directly, not through the daemon) against the answers.

The outages themselves are in tests/outages.py.
"""

from __future__ import annotations

import contextlib
import itertools
import smtplib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.helpers import message


@dataclass(frozen=True)
class Attempt:
    msgid: str
    started: float  # monotonic, right before DATA
    ended: float
    code: int | None  # None: the connection broke without an answer
    text: str


@dataclass(eq=False)
class Client(threading.Thread):
    """One SMTP connection sending message after message; a 4xx goes back in the queue."""

    port: int
    name_prefix: str
    counter: itertools.count[int]
    interval: float = 0.0  # seconds between new messages (0: as fast as answers come)
    retry_after: float = 0.5
    timeout: float = 60.0  # an answer later than this counts as none
    attempts: list[Attempt] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    waiting: dict[str, tuple[bytes, float]] = field(default_factory=dict)  # msgid -> raw, due
    new_mail: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    connect_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(daemon=True, name=f"smtp-{self.name_prefix}")
        self.new_mail.set()

    def _next(self, new_allowed: bool) -> tuple[str, bytes, bool] | None:
        """A message due for a retry, else a new one (when allowed), else None."""
        now = time.monotonic()
        due = [m for m, (_, at) in self.waiting.items() if at <= now]
        if due:
            msgid = min(due, key=lambda m: self.waiting[m][1])
            return msgid, self.waiting.pop(msgid)[0], False
        if not new_allowed:
            return None
        n = next(self.counter)
        msgid = f"{self.name_prefix}-{n}@customer.example"
        raw = message(frm=f"Customer {n} <c{n}-{self.name_prefix}@customer.example>",
                      subject=f"Order {n} has not arrived", msgid=f"<{msgid}>",
                      body=f"Hello,\norder {n} is late.\n" + "Details.\n" * 20)
        return msgid, raw.replace(b"\n", b"\r\n"), True

    def run(self) -> None:
        smtp: smtplib.SMTP | None = None
        next_new = time.monotonic()  # pacing of new messages (retries are not paced)
        while not self.done.is_set():
            sending = self.new_mail.is_set()
            item = self._next(sending and time.monotonic() >= next_new)
            if item is None:
                if not sending and not self.waiting:
                    break  # drained
                time.sleep(0.005)
                continue
            msgid, raw, new = item
            if new:
                next_new = max(next_new + self.interval, time.monotonic() - 1)
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=self.timeout)
                    smtp.ehlo("client.example")
            except OSError as exc:  # the daemon is not listening: it must never happen
                self.connect_errors.append(f"{type(exc).__name__}: {exc}")
                self.waiting[msgid] = (raw, time.monotonic() + self.retry_after)
                smtp = None
                time.sleep(0.1)
                continue
            started = time.monotonic()
            try:
                code, text = smtp.mail(f"sender@{self.name_prefix}.example")
                if code == 250:
                    code, text = smtp.rcpt("support@example.com")
                if code == 250:
                    code, text = smtp.data(raw)
            except smtplib.SMTPResponseException as exc:  # e.g. DATA refused before 354
                code, text = exc.smtp_code, exc.smtp_error
            except (smtplib.SMTPException, OSError) as exc:  # no answer: the session broke
                code, text = None, f"{type(exc).__name__}: {exc}".encode()
                with contextlib.suppress(Exception):
                    smtp.close()
                smtp = None
            self.attempts.append(Attempt(msgid, started, time.monotonic(), code,
                                         text.decode(errors="replace")))
            if code == 250:
                self.accepted.add(msgid)
            else:
                self.waiting[msgid] = (raw, time.monotonic() + self.retry_after)
                if code is not None and smtp is not None:
                    with contextlib.suppress(smtplib.SMTPException, OSError):
                        smtp.rset()
        if smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()


class SmtpLoad:
    """`clients` connections sending at `rate` new messages per second in all."""

    def __init__(self, port: int, *, clients: int = 2, rate: float = 40.0,
                 retry_after: float = 0.5, prefix: str = "o", timeout: float = 60.0) -> None:
        counter = itertools.count(1)
        self.clients = [Client(port, f"{prefix}{i}", counter, clients / rate, retry_after,
                               timeout) for i in range(clients)]

    def start(self) -> None:
        for c in self.clients:
            c.start()

    def finish(self, timeout: float) -> None:
        """No new messages; send what waits for a retry until all got their 250."""
        for c in self.clients:
            c.new_mail.clear()
            c.retry_after = min(c.retry_after, 0.2)
        deadline = time.monotonic() + timeout
        for c in self.clients:
            c.join(max(0.0, deadline - time.monotonic()))
        for c in self.clients:
            c.done.set()
            c.join(5)
        left = sum(len(c.waiting) for c in self.clients)
        assert left == 0, f"{left} messages still not accepted {timeout}s after the load ended"

    @property
    def attempts(self) -> list[Attempt]:
        return [a for c in self.clients for a in c.attempts]

    @property
    def accepted(self) -> set[str]:
        return {m for c in self.clients for m in c.accepted}

    def answered_since(self, t: float) -> Counter[int | None]:
        return Counter(a.code for a in self.attempts if a.started >= t)

    def wait_answers(self, code: int, n: int, since: float, timeout: float = 20) -> None:
        """Until `n` DATA started after `since` got `code` (the load is running)."""
        deadline = time.monotonic() + timeout
        while self.answered_since(since)[code] < n:
            assert time.monotonic() < deadline, (
                f"no {n} answers {code} within {timeout}s: {self.answered_since(since)}")
            time.sleep(0.01)


@dataclass
class Outages:
    """The windows in which the database was away: from the moment the outage is complete
    to the moment the recovery starts (monotonic)."""

    windows: list[tuple[float, float]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # the outage's class, per window

    def inside(self, a: Attempt) -> bool:
        return self.kind_of(a) is not None

    def kind_of(self, a: Attempt) -> str | None:
        for (down, up), kind in zip(self.windows, self.kinds, strict=True):
            if down <= a.started and a.ended <= up:
                return kind
        return None


@dataclass
class Verdict:
    sent: int = 0  # distinct messages
    attempts: int = 0
    answers: Counter[int | None] = field(default_factory=Counter)
    in_outage: Counter[int | None] = field(default_factory=Counter)
    stored: int = 0  # distinct Message-IDs on a ticket
    doubled: list[str] = field(default_factory=list)  # on two entries, or two tickets
    lost: list[str] = field(default_factory=list)  # got a 250, on no ticket
    half_stored: list[str] = field(default_factory=list)
    acks_doubled: list[str] = field(default_factory=list)
    acks_missing: list[str] = field(default_factory=list)
    bad_answers: list[Attempt] = field(default_factory=list)  # 5xx, no answer, 250 inside
    connect_errors: list[str] = field(default_factory=list)  # the listener was not there

    @property
    def ok(self) -> bool:
        return not (self.doubled or self.lost or self.half_stored or self.acks_doubled
                    or self.acks_missing or self.bad_answers or self.connect_errors)

    def summary(self) -> str:
        return (f"sent {self.sent}, DATA {self.attempts} ({dict(self.answers)}), in outages "
                f"{dict(self.in_outage)}, stored {self.stored}, doubled {len(self.doubled)}, "
                f"lost {len(self.lost)}, half-stored {len(self.half_stored)}, acks doubled "
                f"{len(self.acks_doubled)}, acks missing {len(self.acks_missing)}, bad answers "
                f"{len(self.bad_answers)}, connections refused {len(self.connect_errors)}")


def verdict(load: SmtpLoad, outages: Outages, db_url: str, maildir: Path,
            *, strict: bool = True) -> Verdict:
    """The answers against the windows, the database against the answers.

    `strict`: inside a window every DATA must get 451 (the database is unreachable). Without
    it (a full disk: SQLite may still commit a transaction that rewrites pages it already
    has), a 250 inside is allowed, and is held to the same rule as every 250: stored."""
    v = Verdict()
    attempts = load.attempts
    v.attempts = len(attempts)
    v.sent = len({a.msgid for a in attempts})
    for a in attempts:
        v.answers[a.code] += 1
        inside = outages.inside(a)
        if inside:
            v.in_outage[a.code] += 1
        if a.code is None or a.code >= 500 or a.code not in (250, 451) \
                or (strict and inside and a.code == 250):
            v.bad_answers.append(a)
    rows = store_rows(db_url, maildir)
    accepted = load.accepted
    sent = {a.msgid for a in attempts}
    for msgid in sorted(sent):
        entries = rows.entries.get(msgid, [])
        tickets = {t for t, _ in entries}
        if len(entries) > 1 or len(tickets) > 1:
            v.doubled.append(msgid)
        if msgid in accepted and not entries:
            v.lost.append(msgid)
        if entries:
            v.stored += 1
            if any(not has_body for _, has_body in entries):
                v.half_stored.append(f"{msgid}: entry without its body")
            acks = sum(rows.acks[t] for t in tickets)
            files = rows.ack_files[msgid]
            if acks > 1 or files > 1:
                v.acks_doubled.append(f"{msgid}: {acks} outbox rows, {files} files")
            elif acks == 0 or files == 0:
                v.acks_missing.append(f"{msgid}: {acks} outbox rows, {files} files")
    v.half_stored += rows.half_stored
    v.connect_errors = [e for c in load.clients for e in c.connect_errors]
    return v


@dataclass
class StoreRows:
    entries: dict[str, list[tuple[int, bool]]]  # msgid -> (ticket, body filled in) per entry
    acks: Counter[int]  # ticket -> acknowledgements in the outbox
    ack_files: Counter[str]  # msgid -> acknowledgements of it in the Maildir
    half_stored: list[str]


def connect(db_url: str) -> Any:
    if db_url.startswith("sqlite"):
        return sqlite3.connect(db_url.removeprefix("sqlite:///"))
    import psycopg

    return psycopg.connect("postgresql://" + db_url.partition("://")[2])


def store_rows(db_url: str, maildir: Path | None = None) -> StoreRows:
    """What the database holds, read without the daemon (and without any proxy)."""
    conn = connect(db_url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT message_id, ticket_id, body IS NOT NULL AND body <> ''"
                    " FROM entry WHERE message_id IS NOT NULL")
        entries: dict[str, list[tuple[int, bool]]] = {}
        for msgid, ticket, has_body in cur.fetchall():
            entries.setdefault(msgid, []).append((ticket, bool(has_body)))
        cur.execute("SELECT ticket_id FROM outbox WHERE template = 'ack'")
        acks = Counter(t for (t,) in cur.fetchall())
        half: list[str] = []
        cur.execute("SELECT id, state FROM inbox WHERE state NOT IN ('processed', 'duplicate')")
        half += [f"inbox {i} left {s}" for i, s in cur.fetchall()]
        cur.execute("SELECT count(*) FROM deferred")
        (n,) = cur.fetchone()
        if n:
            half.append(f"{n} follow-ups never done")
        cur.execute("SELECT i.id FROM inbox i LEFT JOIN inbox_raw r ON r.inbox_id = i.id"
                    " WHERE r.inbox_id IS NULL")
        half += [f"inbox {i} without its raw bytes" for (i,) in cur.fetchall()]
        cur.execute("SELECT t.id FROM ticket t LEFT JOIN entry e ON e.ticket_id = t.id"
                    " WHERE e.id IS NULL")
        half += [f"ticket {i} without entries" for (i,) in cur.fetchall()]
        cur.execute("SELECT state, count(*) FROM outbox WHERE state <> 'sent' GROUP BY state")
        half += [f"{n} outgoing messages {s}" for s, n in cur.fetchall()]
    finally:
        conn.close()
    return StoreRows(entries, acks, maildir_replies(maildir) if maildir else Counter(), half)


def maildir_replies(maildir: Path) -> Counter[str]:
    """Message-ID answered -> replies to the customer in the Maildir (its new/ folder)."""
    found: Counter[str] = Counter()
    for path in (maildir / "new").glob("*"):
        head = path.read_bytes().split(b"\n\n", 1)[0]
        fields = dict(line.split(b":", 1) for line in head.splitlines() if b":" in line
                      and not line[:1].isspace())
        if b"@customer.example" in fields.get(b"To", b""):  # not the agents' notifications
            found[fields.get(b"In-Reply-To", b"").strip().strip(b"<>").decode()] += 1
    return found


class Outage(Protocol):
    strict: bool  # inside the window the database takes no write at all
    lasting: bool  # False: over as soon as it happened

    def down(self) -> None: ...
    def up(self) -> None: ...


def max_rss_kb(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_outage(load: SmtpLoad, outage: Outage, outages: Outages, *, hold: float = 0.0,
               answers: int = 20, during: Callable[[], object] | None = None) -> float:
    """Take the database away under load until `answers` DATA got their 451 and at least
    `hold` seconds passed (an instant for BackendKill), then bring it back. Returns the
    seconds from the recovery to the first 250 of a DATA sent after it."""
    outage.down()
    down = time.monotonic()
    if outage.lasting:
        load.wait_answers(451, answers, since=down, timeout=max(30.0, hold + 30))
    if during is not None:
        during()
    while time.monotonic() - down < hold:
        time.sleep(0.05)
    up = time.monotonic()
    if outage.lasting:
        outages.windows.append((down, up))
        outages.kinds.append(type(outage).__name__)
    outage.up()
    back = time.monotonic()
    load.wait_answers(250, 1, since=back, timeout=60)
    return min(a.ended for a in load.attempts if a.started >= back and a.code == 250) - back
