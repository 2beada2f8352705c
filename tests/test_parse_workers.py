"""`maildesk serve` reading mail whole in worker processes of its own ([workers]
parse_processes, maildesk.parse_pool): a real daemon over SMTP, its SQLite database and
its Maildir.

To see what the workers do, and to make one of them crash, the daemon runs with a
`sitecustomize` on PYTHONPATH that wraps parse_message in the forkserver only (so in
every worker, never in the daemon): each whole read appends the worker's pid to a file;
a message with `X-Test-Parse-Delay` is read that many seconds slower; one with
`X-Test-Poison: crash` kills the worker with SIGSEGV, as a crash in C would."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk.domain import EntryView, InboxState
from maildesk.store import inbox
from tests.test_serve import Daemon, wait_for

SITECUSTOMIZE = '''
import os, signal, sys, time
if any("multiprocessing.forkserver" in a for a in sys.orig_argv):
    import maildesk.parse as _parse
    _real = _parse.parse_message
    def parse_message(raw):
        with open(os.environ["MAILDESK_TEST_PARSE_LOG"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        if b"X-Test-Poison: crash" in raw:
            os.kill(os.getpid(), signal.SIGSEGV)
        if b"X-Test-Parse-Delay: " in raw:
            time.sleep(float(raw.split(b"X-Test-Parse-Delay: ")[1].split(b"\\r")[0]))
        return _real(raw)
    _parse.parse_message = parse_message
'''


class WorkerDaemon(Daemon):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder, extra="\n[workers]\nparse_processes = 2\n")
        (folder / "site").mkdir()
        (folder / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.parse_log = folder / "parses.log"
        self.parse_log.touch()

    def start(self) -> None:
        saved = dict(os.environ)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(self.folder / "site"), *filter(None, [saved.get("PYTHONPATH")])])
        os.environ["MAILDESK_TEST_PARSE_LOG"] = str(self.parse_log)
        try:
            super().start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def parsers(self) -> list[int]:
        """Pids of the worker processes: children of the forkserver the daemon started."""
        assert self.proc is not None
        forkservers = [p for p in _children(self.proc.pid) if b"forkserver" in _cmdline(p)]
        return [w for f in forkservers for w in _children(f)]

    def parses(self) -> list[int]:
        """The pid of the process of each whole read so far."""
        return [int(x) for x in self.parse_log.read_text().split()]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerDaemon]:
    d = WorkerDaemon(tmp_path_factory.mktemp("workers"))
    try:
        d.start()
        yield d
    finally:
        d.kill()


def mail(n: str, *, attachment: bytes | None = None, headers: dict[str, str] | None = None,
         ) -> bytes:
    m = EmailMessage()
    m["From"] = f"Customer {n} <c{n}@customer.example>"
    m["To"] = "support@example.com"
    m["Subject"] = f"Drucker {n} kaputt – bitte helfen"
    m["Message-ID"] = f"<w{n}@customer.example>"
    for name, value in (headers or {}).items():
        m[name] = value
    m.set_content(f"Hallo,\nder Drucker {n} druckt nicht.\n\nDanke\n\n> quoted earlier text\n"
                  "> more of it\n", charset="iso-8859-1")
    if attachment is not None:
        m.add_attachment(attachment, maintype="application", subtype="pdf",
                         filename=f"scan-{n}.pdf")
    return m.as_bytes().replace(b"\n", b"\r\n")


def whole_entry(d: Daemon, n: str) -> tuple[int, EntryView] | None:
    """(ticket, entry) of message n once it is fully processed: body filled in and the
    ack written into the Maildir."""
    desk = d.desk()
    try:
        item = next((i for i in inbox.list_items(desk.db, limit=1000)
                     if i.message_id == f"w{n}@customer.example"), None)
        if item is None or item.ticket_id is None or item.state.value != "processed":
            return None
        [entry] = [e for e in desk.entries(item.ticket_id) if e.inbox_id == item.id]
        if entry.pending or not d.mails_to(f"c{n}@customer.example"):
            return None
        return item.ticket_id, entry
    finally:
        desk.db.dispose()


def test_workers_read_the_mail_and_it_comes_out_whole(daemon: WorkerDaemon) -> None:
    workers = wait_for("the worker processes", lambda: len(daemon.parsers()) == 2 or None)
    pdf = os.urandom(120_000)
    assert daemon.send(mail("1", attachment=pdf))[0] == 250
    assert daemon.send(mail("2"))[0] == 250
    for n in ("1", "2"):
        ticket, entry = wait_for(f"message {n} fully processed", lambda n=n: whole_entry(daemon, n))
        assert entry.body.startswith(f"Hallo,\nder Drucker {n} druckt nicht.")  # Latin-1 read
        assert "quoted earlier text" not in entry.body  # quoted history trimmed
        [ack] = daemon.mails_to(f"c{n}@customer.example")
        assert ack["Subject"] == f"Re: Drucker {n} kaputt – bitte helfen [MD#{ticket}]"
        if n == "1":
            assert entry.attachments == [("scan-1.pdf", "application/pdf", len(pdf))]
    parses = daemon.parses()
    assert len(parses) >= 2 and set(parses) <= set(daemon.parsers())  # never in the daemon
    assert daemon.proc is not None and daemon.proc.pid not in parses and workers


def test_a_worker_killed_mid_run_loses_nothing(daemon: WorkerDaemon) -> None:
    before = len(daemon.parses())
    names = [f"k{i}" for i in range(12)]
    for n in names:  # each read takes 0.15 s: the workers are busy when one is killed
        raw = mail(n, attachment=os.urandom(20_000) if n.endswith("3") else None,
                   headers={"X-Test-Parse-Delay": "0.15"})
        assert daemon.send(raw)[0] == 250
    wait_for("a few whole reads", lambda: len(daemon.parses()) >= before + 3 or None)
    victim = daemon.parses()[-1]  # reading a message right now
    os.kill(victim, signal.SIGKILL)
    for n in names:
        wait_for(f"message {n} fully processed", lambda n=n: whole_entry(daemon, n), timeout=30)
    assert victim not in daemon.parsers() and 1 <= len(daemon.parsers()) <= 2  # replaced
    assert "a parsing process died" in daemon.log()
    desk = daemon.desk()
    assert [i for i in inbox.list_items(desk.db, limit=1000) if i.state.value == "failed"] == []
    desk.db.dispose()


def test_a_poison_message_ends_failed_with_a_reason(daemon: WorkerDaemon) -> None:
    assert daemon.send(mail("p1", headers={"X-Test-Poison": "crash"}))[0] == 250
    assert daemon.send(mail("p2"))[0] == 250  # the next message goes through
    wait_for("message p2 fully processed", lambda: whole_entry(daemon, "p2"), timeout=30)
    desk = daemon.desk()

    def poisoned() -> inbox.InboxItem | None:
        return next((i for i in inbox.list_items(desk.db, state=InboxState.FAILED)
                     if i.message_id == "wp1@customer.example"), None)

    item = wait_for("the poison message failed", poisoned, timeout=30)
    assert "the parsing process died reading it" in (item.reason or "")
    assert daemon.mails_to("cp1@customer.example") == []  # nothing sent for it
    desk.db.dispose()
    assert daemon.proc is not None and daemon.proc.poll() is None  # the daemon lives on


def test_the_workers_die_with_the_daemon(daemon: WorkerDaemon) -> None:
    assert daemon.send(mail("d1"))[0] == 250  # the pool a poison broke starts again
    wait_for("message d1 fully processed", lambda: whole_entry(daemon, "d1"), timeout=30)
    workers = daemon.parsers()
    assert workers and set(daemon.parses()[-1:]) <= set(workers)
    assert daemon.proc is not None
    daemon.proc.kill()  # SIGKILL: no shutdown of ours runs
    daemon.proc.wait(10)
    wait_for("the workers to exit", lambda: not any(_alive(w) for w in workers) or None)
