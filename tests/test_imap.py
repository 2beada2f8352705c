"""IMAP intake against real Dovecot servers on loopback (SPEC §2.1, §5, §6).

Two Dovecot instances serve the whole session; each test works in folders of
its own. "Daemon" tests run a real `maildesk serve` process. Every wait polls
the database or the server with a deadline: no fixed sleeps.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import col, func, select

from maildesk import metrics
from maildesk.app import build_pipeline, open_database
from maildesk.config import load_settings
from maildesk.intake import imap as imap_module
from maildesk.intake import imap_session
from maildesk.intake.imap import CRASH_HOOK_ENV, ImapIntake
from maildesk.intake.imap_batches import plan_batches
from maildesk.intake.imap_health import Backoff
from maildesk.store import Database
from maildesk.store.mailboxes import (
    Checkpoint,
    CheckpointMoved,
    MailboxLock,
    commit_batch,
    get_checkpoint,
    reset_checkpoint,
)
from maildesk.store.tables import EntryRow, InboxRow, OutboxRow, TicketRow
from maildesk.worker import Worker
from tests.dovecot import (
    USERS,
    Dovecot,
    remove,
    require_dovecot,
    start_dovecot,
    trust,
    wait_for,
)
from tests.helpers import REPO, message, write_config

# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[Dovecot, Dovecot]]:
    require_dovecot()
    a, b = start_dovecot(), start_dovecot()
    yield a, b
    remove(a)
    remove(b)


@pytest.fixture
def trusted(servers: tuple[Dovecot, Dovecot], tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """Trust the servers' self-signed certificates the way an operator would: SSL_CERT_FILE."""
    bundle = trust(*servers, into=tmp_path / "ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return bundle


def folder() -> str:
    return f"T{uuid.uuid4().hex[:10]}"


def mailbox_toml(name: str, server: Dovecot, *, user: str = "alice", tls: str = "none",
                 box: str = "INBOX", processed: str | None = None, password: str | None = None,
                 idle: bool = True, poll: str = "60s", batch: int = 100) -> str:
    port = server.imaps_port if tls == "implicit" else server.port
    lines = [
        "[[mailboxes]]", f'name = "{name}"', f'host = "{server.host}"', f"port = {port}",
        f'tls = "{tls}"', f'username = "{user}"',
        f'password = "{password if password is not None else USERS[user]}"',
        f'folder = "{box}"', f'poll_interval = "{poll}"', f"idle = {str(idle).lower()}",
        f"batch_size = {batch}",
    ]
    if processed:
        lines.append(f'processed_folder = "{processed}"')
    return "\n" + "\n".join(lines) + "\n"


@dataclass
class Running:
    db: Database
    intake: ImapIntake | None = None

    def count(self, table: type, *where: object) -> int:
        with self.db.read() as s:
            return int(s.exec(select(func.count()).select_from(table).where(*where)).one())

    def processed(self) -> int:
        return self.count(InboxRow, col(InboxRow.state) != "queued")


@contextmanager
def running(config: Path, **kw: float) -> Iterator[Running]:
    """The intake and the processing worker, in process, as the daemon wires them."""
    settings = load_settings(config)
    db = open_database(settings)
    worker = Worker(db, build_pipeline(settings, db), poll=0.2)
    intake = ImapIntake(settings, db, worker.wake, **kw)
    worker.start()
    intake.start()
    try:
        yield Running(db, intake)
    finally:
        intake.stop(5)
        worker.stop(5)
        db.dispose()


def conversations(n: int, per: int, tag: str) -> list[bytes]:
    """`n` threads of `per` messages each (a question, then follow-ups that reference it)."""
    out: list[bytes] = []
    for k in range(n):
        ids: list[str] = []
        for j in range(per):
            mid = f"<{tag}-{k}-{j}@customer.example>"
            out.append(message(
                frm=f"Customer {k} <c{k}.{tag}@customer.example>", subject=f"Problem {k} {tag}",
                body=f"Message {j} about problem {k}.\n", msgid=mid,
                in_reply_to=ids[-1] if ids else None, references=list(ids) or None,
            ))
            ids.append(mid)
    return out


def metric(counter: object, *labels: str) -> float:
    value: float = counter.labels(*labels)._value.get()  # type: ignore[attr-defined]
    return value


# --- pure parts -----------------------------------------------------------------------------


def test_batches_are_bounded_by_count_and_bytes() -> None:
    sizes = {1: 10, 2: 10, 3: 10, 4: 500, 5: 10, 6: 10}
    assert list(plan_batches([1, 2, 3, 4, 5, 6], sizes, 2, 100)) == [[1, 2], [3], [4], [5, 6]]
    assert list(plan_batches([1, 2, 3], {}, 100, 1)) == [[1, 2, 3]]  # sizes unknown: count only
    assert list(plan_batches([], {}, 10, 10)) == []


def test_backoff_doubles_up_to_five_minutes_and_resets() -> None:
    b = Backoff()
    assert [b.next() for _ in range(11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    b.reset()
    assert b.next() == 1


def test_checkpoint_commit_is_fenced_and_dedupes(db_url: str, tmp_path: Path) -> None:
    db = open_database(load_settings(write_config(tmp_path, db_url)))
    cp = reset_checkpoint(db, "m", "INBOX", Checkpoint(3_000_000_000, 0))  # > 2**31 fits
    assert get_checkpoint(db, "m", "INBOX") == cp

    def row(raw: bytes, uid: int) -> InboxRow:
        from maildesk.domain import Source
        from maildesk.identity import content_hash, header_message_id
        from maildesk.store import inbox
        return inbox.new_row(raw, source=Source.IMAP, message_id=header_message_id(raw),
                             content_hash=content_hash(raw), origin=f"m/INBOX/{uid}")

    a, b = message(msgid="<a@x>"), message(msgid="<b@x>")
    ids = commit_batch(db, "m", "INBOX", cp, [row(a, 1), row(a, 2)], last_uid=2)
    assert ids[0] and ids[1] is None  # the same message twice in one batch: stored once
    with pytest.raises(CheckpointMoved):  # a stale poller stores nothing
        commit_batch(db, "m", "INBOX", cp, [row(b, 3)], last_uid=3)
    cp = Checkpoint(3_000_000_000, 2)
    assert get_checkpoint(db, "m", "INBOX") == cp
    ids = commit_batch(db, "m", "INBOX", cp, [row(a, 1), row(b, 3)], last_uid=4_000_000_000)
    assert ids[0] is None and ids[1]
    assert get_checkpoint(db, "m", "INBOX") == Checkpoint(3_000_000_000, 4_000_000_000)
    with db.read() as s:
        assert s.exec(select(func.count()).select_from(InboxRow)).one() == 2
    db.dispose()


@pytest.mark.postgres
def test_one_node_at_a_time_polls_a_mailbox(pg_url: str, tmp_path: Path) -> None:
    db = Database(pg_url)
    first, second = MailboxLock(db, "hosted"), MailboxLock(db, "hosted")
    other = MailboxLock(db, "other")
    assert first.acquire() and first.held()
    assert not second.acquire()
    assert other.acquire()
    first.release()  # or its node dies: PostgreSQL drops the lock with the connection
    assert second.acquire()
    for lock in (second, other):
        lock.release()
    db.dispose()


# --- against Dovecot ------------------------------------------------------------------------


@pytest.mark.dovecot
def test_twenty_messages_of_five_conversations_make_five_tickets(
    servers: tuple[Dovecot, Dovecot], trusted: Path, tmp_path: Path
) -> None:
    a, _ = servers
    box, done = folder(), folder()
    a.append("alice", box, *conversations(5, 4, box))
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/d.db",
                       mailbox_toml("twenty", a, tls="implicit", box=box, processed=done,
                                    batch=7))
    with running(cfg) as r:
        wait_for(lambda: r.processed() == 20, 20, "20 processed messages")
        assert r.count(TicketRow) == 5
        assert r.count(EntryRow) == 20
        assert r.count(InboxRow, InboxRow.source == "imap") == 20
        wait_for(lambda: len(a.uids("alice", done)) == 20, 5, "20 moved messages")
    assert a.uids("alice", box) == []
    assert a.uids("alice", done, "SEEN") == []  # BODY.PEEK[]: fetching flagged nothing
    assert metric(metrics.mailbox_fetched, "twenty") == 20
    assert metric(metrics.mailbox_up, "twenty") == 1


@pytest.mark.dovecot
def test_two_mailboxes_on_two_servers_with_their_own_folders(
    servers: tuple[Dovecot, Dovecot], trusted: Path, tmp_path: Path
) -> None:
    a, b = servers
    box_a, done_a, box_b = folder(), folder(), folder()
    b.append("bob", box_b, message(subject="read long ago", msgid="<old@x>"), seen=True)
    a.append("alice", box_a, message(subject="to A", msgid=f"<{box_a}@x>"))
    b.append("bob", box_b, message(subject="to B", msgid=f"<{box_b}@x>"))
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/d.db",
                       mailbox_toml("on-a", a, tls="starttls", box=box_a, processed=done_a)
                       + mailbox_toml("on-b", b, user="bob", tls="implicit", box=box_b,
                                      idle=False, poll="1s"))
    with running(cfg) as r:
        wait_for(lambda: r.processed() == 2, 10, "one message from each mailbox")
        a.append("alice", box_a, message(subject="to A again", msgid=f"<{box_a}.2@x>"))
        b.append("bob", box_b, message(subject="to B again", msgid=f"<{box_b}.2@x>"))
        wait_for(lambda: r.processed() == 4, 10, "the second message of each")
        with r.db.read() as s:
            origins = sorted(o.rsplit("/", 1)[0] for o in s.exec(select(InboxRow.origin)).all()
                             if o)
        assert origins == [f"on-a/{box_a}"] * 2 + [f"on-b/{box_b}"] * 2
        # The old, already read message is not imported on the first sync.
        assert r.count(InboxRow, InboxRow.message_id == "old@x") == 0
        wait_for(lambda: len(b.uids("bob", box_b, "SEEN")) == 3, 5, "B's mail flagged \\Seen")
        wait_for(lambda: len(a.uids("alice", done_a)) == 2, 5, "A's mail moved")


@pytest.mark.dovecot
def test_wrong_password_is_logged_once_counted_alerted_and_others_keep_working(
    servers: tuple[Dovecot, Dovecot], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = servers
    box = folder()
    a.append("alice", box, message(msgid=f"<{box}@x>"))
    cfg = write_config(
        tmp_path, f"sqlite:///{tmp_path}/d.db",
        mailbox_toml("badpw", a, user="bob", password="wrong")
        + mailbox_toml("goodpw", a, box=box, processed=folder()),
    )
    text = cfg.read_text().replace('secret = "', 'alert_after = "1s"\noperators = '
                                   '["ops@example.com"]\nsecret = "', 1)
    cfg.write_text(text)
    caplog.set_level(logging.INFO, logger="maildesk.intake")
    with running(cfg) as r:
        wait_for(lambda: r.processed() == 1, 10, "mail from the working mailbox")
        wait_for(lambda: metric(metrics.mailbox_errors, "badpw", "login") >= 3, 10,
                 "three failed logins (1 s, then 2 s backoff)")
        assert metric(metrics.mailbox_up, "badpw") == 0
        assert metric(metrics.mailbox_up, "goodpw") == 1
        is_alert = OutboxRow.template == "mailbox_alert"
        wait_for(lambda: r.count(OutboxRow, is_alert) == 1, 5, "the operator alert")
        with r.db.read() as s:
            alert = s.exec(select(OutboxRow).where(is_alert)).one()
    failures = [rec.getMessage() for rec in caplog.records
                if "badpw" in rec.getMessage() and rec.levelno >= logging.ERROR]
    assert len(failures) == 1, failures
    assert "login failed" in failures[0] and "bob@127.0.0.1" in failures[0]
    assert "[AUTHENTICATIONFAILED] Authentication failed." in failures[0]
    assert "b'" not in failures[0]
    assert alert.template == "mailbox_alert" and alert.recipients == "ops@example.com"
    assert b"Subject: maildesk: mailbox badpw failing since" in alert.raw
    assert b"Auto-Submitted: auto-generated" in alert.raw
    assert b"X-Loop: support@example.com" in alert.raw


@pytest.mark.dovecot
def test_a_message_that_cannot_be_fetched_does_not_block_the_others(
    servers: tuple[Dovecot, Dovecot], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = servers
    box, done = folder(), folder()
    a.append("alice", box, *(message(msgid=f"<{box}.{i}@x>", subject=f"m{i}") for i in range(3)))
    [bad] = [p for p in (a.maildir("alice") / f".{box}").glob("*/*")
             if f"{box}.1@x".encode() in p.read_bytes()]
    mode = bad.stat().st_mode
    bad.chmod(0)  # Dovecot fails this FETCH and drops the connection (BYE)
    if os.geteuid() == 0:
        os.chown(bad, 0, 0)
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/d.db",
                       mailbox_toml("poison", a, box=box, processed=done))
    try:
        with running(cfg) as r:
            wait_for(lambda: r.processed() == 2, 15, "the two readable messages")
            a.append("alice", box, message(msgid=f"<{box}.3@x>", subject="later"))
            wait_for(lambda: r.processed() == 3, 10, "mail arriving afterwards")
            wait_for(lambda: len(a.uids("alice", box)) == 1, 5, "only the bad one left")
    finally:  # Dovecot has moved the file from new/ to cur/ meanwhile
        for path in bad.parent.parent.glob(f"*/{bad.name}*"):
            path.chmod(mode)
    errors = [rec.getMessage() for rec in caplog.records if "cannot fetch UID 2" in
              rec.getMessage()]
    assert len(errors) == 1, errors


@pytest.mark.dovecot
def test_uidvalidity_change_rescans_without_duplicates(
    servers: tuple[Dovecot, Dovecot], tmp_path: Path
) -> None:
    a, _ = servers
    box, done = folder(), folder()
    first = [message(msgid=f"<{box}.{i}@x>", subject=f"m{i}") for i in range(3)]
    a.append("alice", box, *first)
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/d.db",
                       mailbox_toml("rescan", a, box=box, processed=done))
    with running(cfg) as r:
        wait_for(lambda: r.processed() == 3, 10, "the first three")
    db = open_database(load_settings(cfg))
    before = get_checkpoint(db, "rescan", box)
    a.recreate("alice", box)  # new UIDVALIDITY; the same mail shows up again, plus one
    a.append("alice", box, *first, message(msgid=f"<{box}.new@x>", subject="new"))
    with running(cfg) as r:
        wait_for(lambda: r.processed() == 4, 10, "the one new message")
        wait_for(lambda: a.uids("alice", box) == [], 5, "the folder emptied")
        assert r.count(InboxRow) == 4 and r.count(EntryRow) == 4
    after = get_checkpoint(db, "rescan", box)
    assert before and after and after.uidvalidity != before.uidvalidity
    db.dispose()


@pytest.mark.dovecot
def test_idle_is_renewed_and_new_mail_arrives_at_once(
    servers: tuple[Dovecot, Dovecot], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = servers
    box = folder()
    a.append("alice", box, message(msgid=f"<{box}.0@x>"))
    idles: list[float] = []
    real_idle = imap_session.ImapSession.idle

    def counting(self: imap_session.ImapSession, *args: object) -> bool:
        idles.append(1)
        return real_idle(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(imap_session.ImapSession, "idle", counting)
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/d.db",
                       mailbox_toml("renew", a, box=box, processed=folder()))
    with running(cfg, idle_renew=0.2) as r:
        wait_for(lambda: r.processed() == 1, 10, "the first message")
        wait_for(lambda: len(idles) >= 4, 5, "IDLE re-issued several times")
        a.append("alice", box, message(msgid=f"<{box}.1@x>"))
        took = wait_for(lambda: r.processed() == 2, 5, "mail appended during IDLE")
    assert took < 2


@pytest.mark.dovecot
@pytest.mark.postgres
def test_two_nodes_share_a_mailbox_and_one_takes_over_from_the_other(
    servers: tuple[Dovecot, Dovecot], pg_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(imap_module, "LOCK_RETRY", 0.2)
    a, _ = servers
    box = folder()
    a.append("alice", box, *(message(msgid=f"<{box}.{i}@x>", subject=f"m{i}") for i in range(5)))
    cfg = write_config(tmp_path, pg_url, mailbox_toml("shared", a, box=box, processed=folder()))
    with running(cfg) as one, running(cfg) as two:
        wait_for(lambda: one.processed() == 5, 10, "the first five, from one node")
        polling = [r for r in (one, two) if r.intake and r.intake.states()["shared"]]
        assert len(polling) == 1
        assert polling[0].intake is not None
        polling[0].intake.stop(5)  # that node goes away
        a.append("alice", box, *(message(msgid=f"<{box}.{i}@x>") for i in range(5, 8)))
        wait_for(lambda: one.processed() == 8, 10, "the rest, from the other node")
        assert one.count(InboxRow) == 8


# --- the daemon -----------------------------------------------------------------------------


@dataclass
class Daemon:
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maildesk.cli", "serve", "--config", str(self.config)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "maildesk.toml", tmp_path / "daemon.log")
    yield d
    d.stop()
    if d.log.exists():
        sys.stderr.write(d.log.read_text(errors="replace")[-4000:])


def daemon_config(tmp_path: Path, server: Dovecot, box: str, done: str) -> Path:
    return write_config(tmp_path, f"sqlite:///{tmp_path}/d.db",
                        mailbox_toml("daemon", server, tls="implicit", box=box, processed=done))


@pytest.mark.dovecot
def test_daemon_turns_mail_appended_during_idle_into_a_ticket_within_2s(
    servers: tuple[Dovecot, Dovecot], trusted: Path, tmp_path: Path, daemon: Daemon
) -> None:
    a, _ = servers
    box, done = folder(), folder()
    a.append("alice", box, message(msgid=f"<{box}.warm@x>", subject="warm-up"))
    daemon_config(tmp_path, a, box, done)
    db = open_database(load_settings(daemon.config))  # migrated before the daemon starts
    r = Running(db)
    daemon.start()
    wait_for(lambda: r.count(TicketRow) == 1, 20, "the daemon's first ticket")
    a.append("alice", box, message(msgid=f"<{box}.probe@x>", subject="new problem"))
    took = wait_for(lambda: r.count(TicketRow) == 2, 5, "a ticket for the appended mail")
    assert took < 2, f"{took:.2f}s from APPEND to ticket"
    assert daemon.stop() == 0
    db.dispose()


@pytest.mark.dovecot
def test_daemon_killed_between_commit_and_move_stores_nothing_twice(
    servers: tuple[Dovecot, Dovecot], trusted: Path, tmp_path: Path, daemon: Daemon
) -> None:
    a, _ = servers
    box, done = folder(), folder()
    a.append("alice", box)  # an empty folder
    daemon_config(tmp_path, a, box, done)
    db = open_database(load_settings(daemon.config))  # migrated before the daemon starts
    r = Running(db)
    daemon.start(env={CRASH_HOOK_ENV: "1"})  # SIGKILLs itself right after the first commit
    wait_for(lambda: get_checkpoint(db, "daemon", box) is not None, 20, "the first sync")
    a.append("alice", box, message(msgid=f"<{box}.1@x>", subject="crash test"))
    assert daemon.proc is not None
    daemon.proc.wait(20)
    assert daemon.proc.returncode == -signal.SIGKILL
    assert r.count(InboxRow) == 1
    assert len(a.uids("alice", box)) == 1 and a.uids("alice", done) == []  # not moved yet

    daemon.start()
    wait_for(lambda: a.uids("alice", box) == [], 20, "the leftover moved after the restart")
    wait_for(lambda: r.count(EntryRow) == 1, 10, "the message processed")
    assert r.count(InboxRow) == 1 and r.count(EntryRow) == 1
    assert len(a.uids("alice", done)) == 1
    assert daemon.stop() == 0
    db.dispose()


@pytest.mark.dovecot
def test_daemon_reconnects_after_dovecot_restarts(
    tmp_path: Path, daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
    servers: tuple[Dovecot, Dovecot],
) -> None:
    own = start_dovecot()  # restarted by this test alone
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(trust(own, into=tmp_path / "ca.pem")))
        box, done = folder(), folder()
        own.append("alice", box, message(msgid=f"<{box}.0@x>", subject="before"))
        daemon_config(tmp_path, own, box, done)
        db = open_database(load_settings(daemon.config))  # migrated before the daemon starts
        r = Running(db)
        daemon.start()
        wait_for(lambda: r.count(EntryRow) == 1, 20, "mail before the restart")
        own.stop()
        own.deliver("alice", box, message(msgid=f"<{box}.1@x>", subject="while down"))
        own.start()
        wait_for(lambda: r.count(EntryRow) == 2, 15, "mail delivered while it was down")
        own.append("alice", box, message(msgid=f"<{box}.2@x>", subject="after"))
        wait_for(lambda: r.count(EntryRow) == 3, 5, "mail after the restart")
        assert daemon.stop() == 0
        log = daemon.log.read_text()
        assert "connection lost" in log and "reconnected" in log
        db.dispose()
    finally:
        remove(own)
