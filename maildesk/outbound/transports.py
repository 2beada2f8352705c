"""Where outgoing mail goes: a Maildir folder (the default) or an SMTP smarthost.

A transport either returns (delivered; for an idempotent one, once `sync()` has returned)
or raises DeliveryError saying whether a later try may succeed. The Maildir transport
names each file after the outbox row and its Message-ID and links it into `new/` only if
no such file exists yet, so delivering the same row twice (a crash between delivery and
`mark_sent`) leaves one file. A mail client
may have moved that file to `cur/` meanwhile: that folder is searched too, but only for a
row whose earlier lease ran out (`maybe_sent`), not on every delivery, since it only grows.
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
from collections.abc import Sequence
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
             raw: bytes, *, maybe_sent: bool = False) -> str | None:
        """Deliver one message; returns a note (e.g. partly refused) or None.
        `maybe_sent`: an earlier attempt may have delivered it (its sender died)."""
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
             raw: bytes, *, maybe_sent: bool = False) -> str | None:
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
             raw: bytes, *, maybe_sent: bool = False) -> str | None:
        # A smarthost cannot be asked whether it already has a message: maybe_sent is moot.
        try:
            if self.conn is None:
                self.conn = self._connect()
            refused = self.conn.sendmail(envelope_from, list(recipients), raw)
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

    def sync(self) -> None:
        pass  # the smarthost's 250 already means it has the message

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


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
        else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(text.split())}"


def _refused(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{addr}: {code} {msg.decode('utf-8', 'replace')}"
                     for addr, (code, msg) in recipients.items())
