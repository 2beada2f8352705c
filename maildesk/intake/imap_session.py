"""One logged-in IMAP connection for one mailbox: the only importer of imapclient.

It knows IMAP and nothing of the database: select the folder, list UIDs,
fetch raw bytes with BODY.PEEK[] (so nothing is flagged \\Seen before the
commit), move or flag what was committed, and wait in IDLE. Every failure
leaves as an `ImapError` whose `kind` (connect, tls, login, folder, protocol,
lost) names what an operator has to look at.

TLS certificates are verified against the system trust store; a private CA
is trusted through the standard `SSL_CERT_FILE` / `SSL_CERT_DIR` variables.
"""

from __future__ import annotations

import imaplib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import CapabilityError, LoginError

from maildesk.config import ConfigError, Mailbox

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 120.0  # one fetch of a whole batch must fit in it
IDLE_SLICE = 1.0  # longest wait inside IDLE before looking at the stop flag
SIZE_QUERY = 1000  # UIDs per RFC822.SIZE query when planning batches


class ImapError(Exception):
    """The session is unusable; `kind` is counted in metrics and names the log state."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Selected:
    uidvalidity: int
    uidnext: int | None


@dataclass(frozen=True)
class Fetched:
    """One chunk: raw bytes per UID, and the UIDs the server would not give."""

    raw: dict[int, bytes]
    failed: dict[int, str]


@contextmanager
def _translated(what: str, io_kind: str = "lost") -> Iterator[None]:
    """imapclient, imaplib and socket errors → ImapError with a kind and one clear line.

    `io_kind` names a network failure: "connect" while connecting, else "lost"."""
    try:
        yield
    except ImapError:
        raise
    except LoginError as exc:  # imapclient wraps the server's text as str(bytes): unwrap it
        raise ImapError("login", f"login refused: {_text(exc.__context__ or exc)}") from exc
    except imaplib.IMAP4.abort as exc:
        raise ImapError(io_kind, f"{what}: connection lost: {_text(exc)}") from exc
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
        raise ImapError(io_kind, f"{what}: connection closed: {_text(exc)}") from exc
    except ssl.SSLError as exc:  # certificate, protocol version, handshake
        raise ImapError("tls", f"{what}: TLS error: {_text(exc)}") from exc
    except (OSError, EOFError) as exc:  # refused, unreachable, DNS, timeouts
        raise ImapError(io_kind, f"{what}: {type(exc).__name__}: {_text(exc)}") from exc
    except imaplib.IMAP4.error as exc:
        raise ImapError("protocol", f"{what}: {_text(exc)}") from exc


def _text(exc: BaseException) -> str:
    return _one_line(exc.args[0] if exc.args else type(exc).__name__)


def _one_line(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())[:300]


def _ssl_context() -> ssl.SSLContext:
    return ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH)


def _keepalive(sock: Any) -> None:
    """Notice a silently dead peer (NAT timeout, pulled cable) within about two minutes,
    even in the middle of a long IDLE."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 20), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        log.debug("could not enable TCP keepalive", exc_info=True)


class ImapSession:
    """A connected, logged-in client for `mailbox`; use `open()` and `close()`."""

    def __init__(self, mailbox: Mailbox, client: IMAPClient) -> None:
        self.mailbox = mailbox
        self.client = client

    @classmethod
    def open(cls, mailbox: Mailbox) -> ImapSession:
        where = f"{mailbox.host}:{mailbox.port}"
        try:
            password = mailbox.resolved_password()
        except (ConfigError, OSError) as exc:
            raise ImapError("credentials", f"cannot read the password: {exc}") from exc
        with _translated(f"connect to {where}", io_kind="connect"):
            client = IMAPClient(
                mailbox.host, port=mailbox.port, ssl=mailbox.tls == "implicit",
                ssl_context=_ssl_context() if mailbox.tls == "implicit" else None,
                timeout=SocketTimeout(CONNECT_TIMEOUT, READ_TIMEOUT),
            )
        session = cls(mailbox, client)
        try:
            with _translated(f"log in to {where}", io_kind="connect"):
                if mailbox.tls == "starttls":
                    session._starttls()
                _keepalive(client.socket())
                client.login(mailbox.username, password)
        except BaseException:
            session.close(polite=False)
            raise
        return session

    def _starttls(self) -> None:
        """Upgrade or give up: never fall back to a plaintext login."""
        try:
            self.client.starttls(_ssl_context())
        except CapabilityError as exc:
            raise ImapError("tls", "the server does not offer STARTTLS") from exc

    def close(self, *, polite: bool = True) -> None:
        """LOGOUT after a clean stop; after a failure just drop the socket, since a
        LOGOUT on a half-dead connection would wait for the read timeout."""
        try:
            if polite:
                self.client.logout()
                return
        except Exception:
            log.debug("mailbox %s: LOGOUT failed", self.mailbox.name, exc_info=True)
        try:
            self.client.shutdown()
        except Exception:
            log.debug("mailbox %s: shutdown failed", self.mailbox.name, exc_info=True)

    @property
    def can_idle(self) -> bool:
        with _translated("CAPABILITY"):
            return bool(self.client.has_capability("IDLE"))

    # --- folders and UIDs -----------------------------------------------------------------

    def select(self) -> Selected:
        folder = self.mailbox.folder
        try:
            with _translated("SELECT"):
                info = self.client.select_folder(folder)
        except ImapError as exc:
            if exc.kind == "protocol":
                raise ImapError("folder", f"cannot open folder {folder!r}: {exc}") from exc
            raise
        uidnext = info.get(b"UIDNEXT")
        return Selected(int(info[b"UIDVALIDITY"]), int(uidnext) if uidnext else None)

    def ensure_folder(self, folder: str) -> None:
        with _translated(f"create {folder}"):
            if not self.client.folder_exists(folder):
                self.client.create_folder(folder)
                log.info("mailbox %s: created folder %s", self.mailbox.name, folder)

    def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above the checkpoint ("n:*" also names the highest UID below n: drop it)."""
        with _translated("UID SEARCH"):
            found = self.client.search(["UID", f"{last_uid + 1}:*"])
        return sorted(u for u in found if u > last_uid)

    def uids_upto(self, last_uid: int, *, unseen_only: bool) -> list[int]:
        """UIDs at or below the checkpoint still waiting in the folder."""
        if last_uid < 1:
            return []
        criteria = ["UID", f"1:{last_uid}"] + (["UNSEEN"] if unseen_only else [])
        with _translated("UID SEARCH"):
            return sorted(self.client.search(criteria))

    def noop(self) -> None:
        with _translated("NOOP"):
            self.client.noop()

    # --- fetching -------------------------------------------------------------------------

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE per UID, so that batches can be cut by bytes as well as by count."""
        out: dict[int, int] = {}
        for i in range(0, len(uids), SIZE_QUERY):
            part = uids[i:i + SIZE_QUERY]
            try:
                with _translated("FETCH RFC822.SIZE"):
                    data = self.client.fetch(part, ["RFC822.SIZE"])
            except ImapError as exc:
                if exc.kind != "protocol":
                    raise
                continue  # sizes only shape the batches: count limits still hold
            out.update({uid: int(item.get(b"RFC822.SIZE", 0)) for uid, item in data.items()})
        return out

    def fetch(self, uids: Sequence[int]) -> Fetched:
        """Raw bytes of `uids` without setting \\Seen. When the server refuses the chunk
        (NO/BAD), each UID is asked for alone, so one broken message costs only itself.
        A lost connection raises: which UID caused it is for the caller to find out."""
        try:
            with _translated("FETCH BODY.PEEK[]"):
                data = self.client.fetch(uids, ["BODY.PEEK[]"])
        except ImapError as exc:
            if exc.kind != "protocol":
                raise
            if len(uids) == 1:
                return Fetched({}, {uids[0]: str(exc)})
            return self._fetch_one_by_one(uids)
        raw: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        for uid in uids:
            body = data.get(uid, {}).get(b"BODY[]")
            if isinstance(body, bytes):
                raw[uid] = body
            else:
                failed[uid] = "no BODY[] in the FETCH response (message gone or unreadable)"
        return Fetched(raw, failed)

    def _fetch_one_by_one(self, uids: Sequence[int]) -> Fetched:
        raw: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        for uid in uids:
            got = self.fetch([uid])
            raw.update(got.raw)
            failed.update(got.failed)
        return Fetched(raw, failed)

    # --- after the commit -----------------------------------------------------------------

    def mark_done(self, uids: Sequence[int]) -> None:
        """MOVE committed messages to processed_folder, or flag them \\Seen."""
        if not uids:
            return
        target = self.mailbox.processed_folder
        with _translated(f"MOVE to {target}" if target else "STORE \\Seen"):
            if target is None:
                self.client.add_flags(uids, [b"\\Seen"], silent=True)
            elif self.client.has_capability("MOVE"):
                self.client.move(uids, target)
            else:  # RFC 6851 fallback: COPY, then delete exactly these UIDs
                self.client.copy(uids, target)
                self.client.add_flags(uids, [b"\\Deleted"], silent=True)
                if self.client.has_capability("UIDPLUS"):
                    self.client.uid_expunge(uids)
                else:
                    self.client.expunge()

    # --- waiting --------------------------------------------------------------------------

    def idle(self, seconds: float, stop: threading.Event) -> bool:
        """Wait in IDLE up to `seconds` (keep it under the 29-minute limit of RFC 2177).

        Returns True as soon as the server announces new mail, False on timeout
        or stop. The wait is sliced so that `stop` is seen within a second."""
        with _translated("IDLE"):
            self.client.idle()
        news = self._idle_wait(time.monotonic() + seconds, stop)  # raises: connection is gone
        with _translated("IDLE DONE"):
            self.client.idle_done()
        return news

    def _idle_wait(self, deadline: float, stop: threading.Event) -> bool:
        early_empty = 0
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            window = min(IDLE_SLICE, remaining)
            started = time.monotonic()
            with _translated("IDLE"):
                responses = self.client.idle_check(timeout=window)
            for resp in responses:
                if len(resp) > 1 and resp[0] == b"BYE":
                    raise ImapError("lost", f"server closed the connection: {_one_line(resp[1])}")
                if len(resp) > 1 and resp[1] in (b"EXISTS", b"RECENT"):
                    return True
            # imapclient reports end of file as "readable, but no responses": twice in a
            # row well before the window ends means the peer has gone.
            early = not responses and time.monotonic() - started < window * 0.9
            early_empty = early_empty + 1 if early else 0
            if early_empty >= 2:
                raise ImapError("lost", "IDLE: connection closed by the server")
        return False
