"""Where outgoing mail goes: a Maildir folder (the default) or an SMTP smarthost.

A transport either returns (delivered; for an idempotent one, once `sync()` has returned)
or raises DeliveryError saying whether a later try may succeed. The Maildir transport
names each file after the outbox row and its Message-ID and links it into `new/` only if
no such file exists yet, so delivering the same row twice (a crash between delivery and
`mark_sent`) leaves one file. A mail client
may have moved that file to `cur/` meanwhile: that folder is searched too, but only for a
row whose earlier lease ran out (`maybe_sent`), not on every delivery, since it only grows.

A smarthost cannot be asked whether it already has a message, so the SMTP transport
calls `before_end` right before the final dot of DATA, the point of no return: the
sender records the row as `sending` there, and a row found in that state after a crash
counts as sent (outbound.sender). A crash can then double nothing, and lose only what
the smarthost refuses after the dot or what dies in the microseconds between that
record and the dot's `send()`; this is as close as SMTP lets a client come (RFC 1047).
"""

from __future__ import annotations

import hashlib
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from maildesk.config import Outbound


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    idempotent: bool  # delivering the same row twice leaves one copy

    def send(self, outbox_id: int, envelope_from: str, recipients: Sequence[str],
             raw: bytes, *, maybe_sent: bool = False,
             before_end: Callable[[], None] | None = None) -> str | None:
        """Deliver one message; returns a note (e.g. partly refused) or None.
        `maybe_sent`: an earlier attempt may have delivered it (its sender died).
        `before_end`: called right before the step after which the message may have
        been delivered (a transport that is not idempotent calls it; if it raises,
        nothing is delivered)."""
        ...

    def sync(self) -> None:
        """Make what send() delivered durable; the sender records it as sent after this."""
        ...

    def close(self) -> None: ...


def make_transport(cfg: Outbound) -> Transport:
    if cfg.transport == "smtp":
        return SmtpTransport(cfg)
    return MaildirTransport(cfg.maildir)


class MaildirTransport:
    """Each message is written to `tmp/` by `send()`; `sync()` then flushes the batch's
    files to disk together, links each into `new/` and flushes `new/` once. A file enters
    `new/` only with its bytes on disk, so a crash never leaves a half-written message
    there for a later try to take as delivered.

    The flushes run on FSYNC_THREADS threads at once: the file system commits concurrent
    fsyncs in one journal transaction, where one after the other each waits for its own.
    On the development VM (ext4, 2 cores) 50 files of 6 KB went to disk at 480 files/s one
    after the other, 1,190/s on 4 threads, 2,270/s on 8, 1,560-2,640/s on 16-32 (medians
    of 5): one fsync per outgoing mail, in turn, was the wall of fully processed mail."""

    idempotent = True

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._staged: dict[str, Path] = {}  # name in new/ -> its file in tmp/, not yet synced
        self._linked = False  # a file entered new/ since the last sync()
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def send(self, outbox_id: int, envelope_from: str, recipients: Sequence[str],
             raw: bytes, *, maybe_sent: bool = False,
             before_end: Callable[[], None] | None = None) -> str | None:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        name = f"{outbox_id}.{digest}.maildesk"
        new = self.folder / "new" / name
        if name in self._staged or new.exists() or (
                maybe_sent and any((self.folder / "cur").glob(f"{name}*"))):
            return "already in the Maildir"
        body = raw.replace(b"\r\n", b"\n")
        data = f"Return-Path: <{envelope_from}>\n".encode() + body
        tmp = self.folder / "tmp" / f"{name}.{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DeliveryError(f"Maildir {self.folder}: {exc}", permanent=False) from exc
        self._staged[name] = tmp
        return None

    def sync(self) -> None:
        """Flush the files written since the last sync, move them into `new/` and flush
        that folder: what send() wrote is delivered when this returns."""
        staged, self._staged = self._staged, {}
        try:
            if staged:
                _fsync_all(list(staged.values()))
            for name, tmp in staged.items():
                try:
                    os.link(tmp, self.folder / "new" / name)  # never two files
                    self._linked = True
                except FileExistsError:  # a copy got there first
                    pass
            if self._linked:
                _fsync(self.folder / "new")
                self._linked = False
        except OSError as exc:
            raise DeliveryError(f"Maildir {self.folder}: {exc}", permanent=False) from exc
        finally:
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)

    def close(self) -> None:
        for tmp in self._staged.values():  # written, never synced: not delivered
            tmp.unlink(missing_ok=True)
        self._staged = {}


FSYNC_THREADS = 8


def _fsync_all(paths: list[Path]) -> None:
    """fsync every file, on up to FSYNC_THREADS threads at once."""
    if len(paths) == 1:
        _fsync(paths[0])
        return
    with ThreadPoolExecutor(min(FSYNC_THREADS, len(paths)),
                            thread_name_prefix="maildir-fsync") as pool:
        for _ in pool.map(_fsync, paths):  # re-raises the first OSError
            pass


def _fsync(path: Path) -> None:  # a file or a folder
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SmtpTransport:
    """One connection to the smarthost, opened on first use and reused until close()."""

    idempotent = False

    def __init__(self, cfg: Outbound) -> None:
        self.cfg = cfg
        self.conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        cfg, timeout = self.cfg, self.cfg.timeout.total_seconds()
        context = ssl.create_default_context()
        conn: smtplib.SMTP
        if cfg.tls == "implicit":
            conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=timeout, context=context)
        else:
            conn = smtplib.SMTP(cfg.host, cfg.port, timeout=timeout)
        try:
            # DATA ends with a send() of its own (see _transact): without this, Nagle's
            # algorithm holds that small last segment back until the body is acknowledged
            if conn.sock is not None:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.ehlo_or_helo_if_needed()
            if cfg.tls == "starttls":
                conn.starttls(context=context)
                conn.ehlo()
            if cfg.username:
                conn.login(cfg.username, cfg.resolved_password() or "")
        except BaseException:
            conn.close()
            raise
        return conn

    def send(self, outbox_id: int, envelope_from: str, recipients: Sequence[str],
             raw: bytes, *, maybe_sent: bool = False,
             before_end: Callable[[], None] | None = None) -> str | None:
        # A smarthost cannot be asked whether it already has a message: maybe_sent is moot.
        try:
            if self.conn is None:
                self.conn = self._connect()
            refused = self._transact(self.conn, envelope_from, list(recipients), raw,
                                     before_end)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(_refused(exc.recipients),
                                permanent=all(c >= 500 for c in codes)) from exc
        except smtplib.SMTPAuthenticationError as exc:  # our configuration: retry when fixed
            self.close()
            raise DeliveryError(f"smarthost login failed: {_reply(exc)}", permanent=False) from exc
        except smtplib.SMTPResponseException as exc:
            self._reset()
            raise DeliveryError(f"smarthost said {_reply(exc)}",
                                permanent=500 <= exc.smtp_code < 600) from exc
        except (TimeoutError, smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            self.close()
            raise DeliveryError(f"smarthost {self.cfg.host}:{self.cfg.port}: {exc}",
                                permanent=False) from exc
        return f"refused by the smarthost: {_refused(refused)}" if refused else None

    def _transact(self, conn: smtplib.SMTP, envelope_from: str, recipients: list[str],
                  raw: bytes, before_end: Callable[[], None] | None,
                  ) -> dict[str, tuple[int, bytes]]:
        """smtplib's sendmail(), with `before_end` between the message and its final dot."""
        options = [f"SIZE={len(raw)}"] if conn.does_esmtp and conn.has_extn("size") else []
        code, resp = conn.mail(envelope_from, options)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, resp, envelope_from)
        refused: dict[str, tuple[int, bytes]] = {}
        for rcpt in recipients:
            code, resp = conn.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, resp)
        if len(refused) == len(recipients):
            self._reset()
            raise smtplib.SMTPRecipientsRefused(refused)
        code, resp = conn.docmd("DATA")
        if code != 354:
            raise smtplib.SMTPDataError(code, resp)
        body = _DOT_AT_LINE_START.sub(b"..", raw)
        conn.send(body if body.endswith(b"\r\n") else body + b"\r\n")
        if before_end is not None:
            try:
                before_end()
            except BaseException:
                self._drop()  # no dot: the smarthost discards the message
                raise
        conn.send(b".\r\n")  # the point of no return
        code, resp = conn.getreply()
        if code != 250:
            raise smtplib.SMTPDataError(code, resp)
        return refused

    def sync(self) -> None:
        pass  # the smarthost's 250 already means it has the message

    def _drop(self) -> None:
        """Close the connection without QUIT (mid-DATA it would be read as text)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def _reset(self) -> None:
        """After a refused transaction the connection may be reused: RSET, or drop it."""
        if self.conn is None:
            return
        try:
            self.conn.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()


_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
        else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(text.split())}"


def _refused(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{addr}: {code} {msg.decode('utf-8', 'replace')}"
                     for addr, (code, msg) in recipients.items())
