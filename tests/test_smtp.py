"""SMTP intake (SPEC §2.1, §2.8) on a real aiosmtpd listener and a real database, driven
by smtplib: the RCPT policy, SIZE, limits, 250-after-commit and 451 when the database
cannot take the message, on SQLite (file made immutable) and PostgreSQL (connection
refused through a proxy that the test stops and restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from maildesk.app import open_database
from maildesk.config import Settings, load_settings
from maildesk.intake.smtp import SmtpIntake
from maildesk.store import Database, inbox
from maildesk.store.tables import InboxRow
from tests.helpers import message as lf_message
from tests.helpers import write_config


def message(**kwargs: object) -> bytes:
    """A test message with CRLF line ends, as it travels over SMTP."""
    return lf_message(**kwargs).replace(b"\n", b"\r\n")  # type: ignore[arg-type]


class Listener:
    """SmtpIntake on its own event loop thread, as the daemon runs it."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.committed: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.intake = SmtpIntake(settings, db, self.committed.extend, "mx.test")
        self.port = self._call(self.intake.start())[1]

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def client(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        smtp.ehlo("client.example")
        return smtp

    def close(self) -> None:
        self._call(self.intake.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def stored(db: Database) -> list[InboxRow]:
    with db.read() as s:
        return list(s.exec(select(InboxRow).order_by(col(InboxRow.id))).all())


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return load_settings(write_config(tmp_path, db_url, extra="""
[[queues]]
name = "sales"
address = "sales@example.com"
"""))


@pytest.fixture
def listener(settings: Settings) -> Iterator[tuple[Listener, Database]]:
    db = open_database(settings)
    running = Listener(settings, db)
    yield running, db
    running.close()
    db.dispose()


def test_rcpt_policy_never_relays(listener: tuple[Listener, Database]) -> None:
    running, db = listener
    with running.client() as smtp:
        smtp.mail("carol@customer.example")
        for ok in ("support@example.com", "Support+42-abcdefgh@EXAMPLE.com", "billing@example.com",
                   "sales@example.com", "bounces+7-abcdefgh@example.com"):
            assert smtp.rcpt(ok)[0] == 250, ok
        for bad in ("support@example.org", "someone@example.com", "victim@gmail.example",
                    "support@example.com@evil.example", "bounces@evil.example"):
            code, text = smtp.rcpt(bad)
            assert code == 550 and text.startswith(b"5.1.1") or code == 553, bad
        code, _ = smtp.data(message())
        assert code == 250
    [row] = stored(db)
    assert row.envelope_from == "carol@customer.example"
    assert row.envelope_to.split(",") == ["support@example.com", "support+42-abcdefgh@example.com",
                                          "billing@example.com", "sales@example.com",
                                          "bounces+7-abcdefgh@example.com"]
    assert running.committed == [row.id] and row.source == "smtp" and row.state == "queued"


def test_250_only_once_committed_and_the_null_sender_is_kept(
    listener: tuple[Listener, Database]
) -> None:
    running, db = listener
    raw = message(msgid="<n1@customer.example>")
    with running.client() as smtp:
        smtp.mail("<>")
        smtp.rcpt("support@example.com")
        code, reply = smtp.data(raw)
    assert code == 250
    [row] = stored(db)  # visible to another connection as soon as 250 arrived
    assert reply.endswith(str(row.id).encode())
    assert row.envelope_from == "" and row.message_id == "n1@customer.example"
    assert inbox.load_raw(db, [row.id]) == {row.id: raw} and row.size == len(raw)


def test_size_is_announced_and_enforced(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db")
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"',
                                           'listen = "127.0.0.1:0"\nmax_message_size = 20000'))
    settings = load_settings(cfg)
    db = open_database(settings)
    running = Listener(settings, db)
    try:
        with running.client() as smtp:
            assert smtp.has_extn("size") and smtp.esmtp_features["size"] == "20000"
            code, text = smtp.docmd("MAIL FROM:<carol@customer.example> SIZE=50000")
            assert code == 552 and text.startswith(b"5.3.4 ")  # RFC 3463: message too big
            smtp.rset()
            smtp.mail("carol@customer.example")
            smtp.rcpt("support@example.com")
            code, text = smtp.data(message(body="x" * 60 + "\n" * 1 + ("y" * 70 + "\n") * 400))
            assert code == 552 and text.startswith(b"5.3.4 ")
            smtp.mail("carol@customer.example")
            smtp.rcpt("support@example.com")
            assert smtp.data(message())[0] == 250  # the session goes on
        assert len(stored(db)) == 1
    finally:
        running.close()
        db.dispose()


def test_limits_on_recipients_and_connections(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/m.db")
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\n'
                                           'max_recipients = 2\nmax_connections = 2'))
    settings = load_settings(cfg)
    db = open_database(settings)
    running = Listener(settings, db)
    try:
        first, second = running.client(), running.client()
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", running.port, timeout=10)
        assert refused.value.smtp_code == 421
        first.mail("carol@customer.example")
        assert [first.rcpt(f"support+{n}-aaaaaaaa@example.com")[0] for n in range(3)] == [
            250, 250, 452]
        first.quit()
        second.quit()
    finally:
        running.close()
        db.dispose()


def test_concurrent_sessions_commit_every_message_once(listener: tuple[Listener, Database]) -> None:
    running, db = listener
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            with running.client() as smtp:
                for n in range(10):
                    smtp.sendmail("c@customer.example", ["support@example.com"],
                                  message(msgid=f"<g{k}-{n}@customer.example>"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    rows = stored(db)
    assert len(rows) == 60 and len({r.message_id for r in rows}) == 60
    assert sorted(running.committed) == [r.id for r in rows]


# --- the database goes away ------------------------------------------------------------


def send_one(running: Listener, raw: bytes) -> tuple[int, bytes]:
    with running.client() as smtp:
        smtp.mail("carol@customer.example")
        smtp.rcpt("support@example.com")
        return smtp.data(raw)


def immutable(paths: list[Path], on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True,
                   capture_output=True)


def test_sqlite_unavailable_gets_451_and_the_retry_is_stored_once(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make the database file unwritable")
    settings = load_settings(write_config(tmp_path, f"sqlite:///{tmp_path}/m.db"))
    db = open_database(settings)
    running = Listener(settings, db)
    raw = message(msgid="<down1@customer.example>")
    files = [tmp_path / "m.db", tmp_path / "m.db-wal"]
    try:
        assert send_one(running, message(msgid="<before@customer.example>"))[0] == 250
        try:
            immutable(files, True)
        except subprocess.CalledProcessError:
            pytest.skip("this filesystem has no immutable flag")
        try:
            code, text = send_one(running, raw)
            assert code == 451 and text.startswith(b"4.3.0")
        finally:
            immutable(files, False)
        assert [r.message_id for r in stored(db)] == ["before@customer.example"]
        assert send_one(running, raw)[0] == 250  # the sending MTA's retry
        assert [r.message_id for r in stored(db)] == ["before@customer.example",
                                                      "down1@customer.example"]
    finally:
        running.close()
        db.dispose()


class Proxy:
    """A TCP proxy to PostgreSQL that the test stops (connection refused) and restarts."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.conns: list[socket.socket] = []
        self.server: socket.socket | None = None

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        self.port = server.getsockname()[1]
        server.listen(16)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(OSError):  # shutdown unblocks accept(): nothing listens
                self.server.shutdown(socket.SHUT_RDWR)
            self.server.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self.conns = []


@pytest.mark.postgres
def test_postgresql_refusing_connections_gets_451_and_the_retry_is_stored_once(
    tmp_path: Path, pg_url: str
) -> None:
    proxy = Proxy(("127.0.0.1", 5432))
    proxy.start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = load_settings(write_config(tmp_path, url))
    db = open_database(settings)
    running = Listener(settings, db)
    raw = message(msgid="<pgdown@customer.example>")
    try:
        assert send_one(running, message(msgid="<pgbefore@customer.example>"))[0] == 250
        proxy.stop()
        code, text = send_one(running, raw)
        assert code == 451 and text.startswith(b"4.3.0")
        proxy.start()
        assert send_one(running, raw)[0] == 250
        assert [r.message_id for r in stored(db)] == ["pgbefore@customer.example",
                                                      "pgdown@customer.example"]
    finally:
        running.close()
        db.dispose()
        proxy.stop()


def test_one_bad_row_never_fails_its_group_commit(tmp_path: Path) -> None:
    from maildesk.domain import Source
    from maildesk.intake.smtp import GroupCommitter
    from maildesk.store import inbox

    db = open_database(load_settings(write_config(tmp_path, f"sqlite:///{tmp_path}/g.db")))
    rows = [inbox.new_row(message(msgid=f"<b{n}@x.example>"), source=Source.SMTP,
                          message_id=f"b{n}@x.example", content_hash=f"{n}" * 64)
            for n in range(3)]
    rows[1] = dataclasses.replace(rows[1], content_hash=None)  # type: ignore[arg-type]  # NOT NULL
    results = GroupCommitter(db)._write(rows)
    assert isinstance(results[1], Exception) and [results[0], results[2]] == [1, 2]
    assert [r.message_id for r in stored(db)] == ["b0@x.example", "b2@x.example"]
    db.dispose()


def test_starttls_required_and_auth_offered_after_it(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    (tmp_path / "users").write_text("# submission users\nagent:s3cret\n")
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/t.db")
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:0"', (
        f'listen = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'require_tls = true\nauth_users_file = "{tmp_path / "users"}"')))
    settings = load_settings(cfg)
    db = open_database(settings)
    running = Listener(settings, db)
    try:
        with running.client() as smtp:
            assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
            assert smtp.docmd("MAIL FROM:<carol@customer.example>")[0] == 530
            smtp.starttls(context=ssl._create_unverified_context())
            smtp.ehlo("client.example")
            assert smtp.has_extn("auth")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("agent", "wrong")
            smtp.login("agent", "s3cret")
            assert smtp.sendmail("agent@agents.example.com", ["support@example.com"],
                                 message()) == {}
        assert len(stored(db)) == 1
    finally:
        running.close()
        db.dispose()


def test_a_lone_message_never_stalls_the_listener_on_another_process_lock(
        tmp_path: Path) -> None:
    """A message alone is committed on the event loop (GroupCommitter): while another
    process holds the SQLite write lock, that must not make the listener wait."""
    import sqlite3

    settings = load_settings(write_config(tmp_path, f"sqlite:///{tmp_path}/l.db"))
    db = open_database(settings)
    running = Listener(settings, db)
    other = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    try:
        assert send_one(running, message(msgid="<l0@customer.example>"))[0] == 250
        other.execute("BEGIN IMMEDIATE")  # another process writing (an `ingest --queue`)
        result: list[tuple[int, bytes]] = []
        sender = threading.Thread(
            target=lambda: result.append(send_one(running, message(msgid="<l1@customer.example>"))))
        sender.start()
        deadline = time.monotonic() + 10
        while running.intake.handler.in_flight == 0:  # its DATA is waiting for the commit
            assert time.monotonic() < deadline, "the message never reached its commit"
            time.sleep(0.005)
        # the listener answers another client meanwhile (a stalled loop: a timeout here)
        with smtplib.SMTP("127.0.0.1", running.port, timeout=5) as smtp:
            assert smtp.noop()[0] == 250
        assert not result  # the message waits for the lock, off the event loop
        other.execute("COMMIT")
        sender.join(30)
        assert result and result[0][0] == 250
        assert [r.message_id for r in stored(db)] == ["l0@customer.example",
                                                      "l1@customer.example"]
    finally:
        other.close()
        running.close()
        db.dispose()
