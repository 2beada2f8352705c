"""A harness that runs one input through all of maildesk and says what went wrong.

`Harness`: the real pipeline on a real SQLite database (`tests.helpers.Desk`, as the
other tests drive it) plus the real sender into a Maildir. `run(raw)` stores one input,
processes it (headers first, follow-up, rules, reactors), sends what it queued, and
returns a `Result` listing every broken promise: an exception out of processing, a
logged exception, an input neither ticketed nor parked with a one-line reason, a
follow-up left behind, outgoing mail that was not sent or whose headers carry a raw
CR or LF, and the time each step took. The inputs: tests/fuzz_mail.py.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from maildesk.domain import InboxState
from maildesk.outbound.sender import Sender
from maildesk.outbound.transports import make_transport
from maildesk.store import deferred, inbox, outbox
from tests.helpers import Desk, write_config

# A config that takes every path: header and subject rules (read from the headers), a
# body rule (the whole message is read before storing), a rule reply template, notify.
RULES = r"""
[[rules]]
name = "urgent subject"
[rules.when]
subject = { regex = ["(urgent|dringend|asap)\\W*$", "^\\s*(re|aw|fwd?):"] }
[rules.then]
priority = "high"
tags = ["fuzz"]

[[rules]]
name = "header and from"
[rules.when]
header = { "X-Mailer" = { contains = ["outlook", "mail"] } }
from = { regex = ["@(example|gmail)\\.(com|org)$"] }
[rules.then]
notify = ["lead@agents.example.com"]

[[rules]]
name = "body words"
[rules.when]
body = { contains = ["invoice", "refund", "rechnung"] }
[rules.then]
queue = "billing"
reply_template = "ack"
"""


@dataclass
class Result:
    state: str | None = None
    reason: str | None = None
    ticket: int | None = None
    process_s: float = 0.0  # store in the inbox, process, follow up
    send_s: float = 0.0  # render was done in processing; this is the sender's drain
    cpu_s: float = 0.0  # CPU time of both (the machine is shared: wall time is noisy)
    sent: int = 0
    outgoing: list[tuple[str, bytes]] = field(default_factory=list)  # (template, raw)
    crash: str | None = None  # an exception out of processing or sending
    problems: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.process_s + self.send_s


class _Errors(logging.Handler):
    """Collects what maildesk logs at ERROR, or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.lines.append(f"{record.levelname}: {record.getMessage()}")


@contextmanager
def _watching(logger: str = "maildesk") -> Iterator[_Errors]:
    handler = _Errors()
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


_OUT_HEADER = re.compile(rb"[A-Za-z][A-Za-z0-9-]*: [\x20-\x7e]*")
_FINAL_STATES = {InboxState.PROCESSED.value, InboxState.FAILED.value, InboxState.IGNORED.value,
                 InboxState.DUPLICATE.value}


def header_problems(raw: bytes) -> list[str]:
    """What is wrong with the header block of a message we send (CRLF form): a CR or LF
    that does not end a line, a line that is neither a field nor a folded continuation,
    anything not 7-bit printable, a line past RFC 5322's 998 characters."""
    end = raw.find(b"\r\n\r\n")
    head = raw[:end + 2] if end >= 0 else raw
    problems = []
    if head.replace(b"\r\n", b"").count(b"\r") or head.replace(b"\r\n", b"").count(b"\n"):
        problems.append("raw CR or LF inside a header value")
    for line in head.split(b"\r\n")[:-1]:
        if len(line) > 998:
            problems.append(f"header line of {len(line)} characters")
        if line[:1] in (b" ", b"\t"):
            if not re.fullmatch(rb"[\x20-\x7e\t]*", line):
                problems.append(f"folded line not printable ASCII: {line[:80]!r}")
        elif not _OUT_HEADER.fullmatch(line):
            problems.append(f"not a header field: {line[:80]!r}")
    return problems


class Harness:
    """One desk (SQLite database, Maildir outbox) that inputs are fed into one by one."""

    def __init__(self, folder: Path, *, rules: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        extra = RULES if rules else ""
        extra += '\n[[agents]]\nemail = "lead@agents.example.com"\nname = "Lead"\n'
        self.config = write_config(folder, f"sqlite:///{folder}/fuzz.db", extra)
        self.desk = Desk.open(self.config)
        settings = self.desk.settings
        self.maildir = folder / "outbox"
        self.sender = Sender(self.desk.db, lambda: make_transport(settings.outbound),
                             max_retry=settings.outbound.max_retry)
        self.now = datetime.now(UTC)

    def close(self) -> None:
        self.desk.db.dispose()

    def run(self, raw: bytes, *, envelope_from: str | None = "carol@customer.example"
            ) -> Result:
        result = Result()
        cpu = time.process_time()
        last_outbox = self._last_outbox_id()
        with _watching() as errors:
            started = time.perf_counter()
            try:
                outcome = self.desk.ingest(raw, envelope_from=envelope_from,
                                           envelope_to=("support@example.com",))
            except Exception as exc:
                result.process_s = time.perf_counter() - started
                result.crash = f"processing raised {_summary(exc)}"
                return result
            result.process_s = time.perf_counter() - started
            before = set(self._maildir_files())
            started = time.perf_counter()
            try:  # the hourly cap counts from `now`: each input an hour after the last
                self.now += timedelta(hours=1)
                drained = self.sender.drain(self.now + timedelta(days=3))
            except Exception as exc:
                result.crash = f"sending raised {_summary(exc)}"
                return result
            finally:
                result.send_s = time.perf_counter() - started
                result.cpu_s = time.process_time() - cpu
            result.sent = drained.sent
        result.problems += [f"logged {line}" for line in errors.lines]
        if drained.failed or drained.retried:
            result.problems.append(f"outgoing mail not sent: {drained}")
        item = inbox.get(self.desk.db, outcome.inbox_id)
        assert item is not None
        result.state, result.reason, result.ticket = item.state.value, item.reason, item.ticket_id
        result.problems += self._state_problems(result)
        result.outgoing = self._outbox_since(last_outbox)
        if deferred.count(self.desk.db):
            result.problems.append("a follow-up was left behind")
        for path in set(self._maildir_files()) - before:
            data = path.read_bytes().replace(b"\n", b"\r\n")
            result.problems += [f"outgoing {path.name}: {p}" for p in header_problems(data)]
            result.problems += _readable_problems(path.name, data)
        return result

    def _state_problems(self, r: Result) -> list[str]:
        problems = []
        if r.state not in _FINAL_STATES:
            problems.append(f"inbox state {r.state!r} after processing")
        if r.state == InboxState.PROCESSED.value and r.ticket is None:
            problems.append("processed without a ticket")
        if r.state != InboxState.PROCESSED.value and not (r.reason or "").strip():
            problems.append(f"{r.state} without a reason")
        if r.reason is not None and ("\n" in r.reason or "\r" in r.reason):
            problems.append(f"reason of more than one line: {r.reason[:200]!r}")
        if r.reason is not None and len(r.reason) > 2000:
            problems.append(f"reason of {len(r.reason)} characters")
        if r.ticket is not None:
            self.desk.ticket(r.ticket)  # readable as the CLI reads it
        return problems

    def _maildir_files(self) -> list[Path]:
        return list((self.maildir / "new").glob("*"))

    def _last_outbox_id(self) -> int:
        items = outbox.list_items(self.desk.db, limit=1)
        return items[0].id if items else 0

    def _outbox_since(self, last_id: int) -> list[tuple[str, bytes]]:
        with self.desk.db.read_raw() as r:
            rows = r.rows("SELECT template, raw FROM outbox WHERE id > ? ORDER BY id",
                          (last_id,))
            return [(str(t), bytes(raw)) for t, raw in rows]


def _readable_problems(name: str, data: bytes) -> list[str]:
    """The mail we send must parse cleanly as a client reads it."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    problems = [f"outgoing {name}: defect {type(d).__name__}" for d in msg.defects]
    for key in ("subject", "from", "to"):
        value = str(msg.get(key, ""))
        if any(ord(c) < 32 for c in value):
            problems.append(f"outgoing {name}: control character in decoded {key}")
    return problems


def _summary(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    return (f"{type(exc).__name__}: {str(exc)[:200]} "
            f"(at {Path(where.filename).name}:{where.lineno})")
