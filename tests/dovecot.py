"""Throwaway Dovecot IMAP servers on loopback, for tests/test_imap.py and bench/imap.py.

Each instance is started by tests/dovecot-test-server.sh (a copy of
shared/recipes/dovecot-test-server.sh) in a directory of its own, with users
alice/alicepw and bob/bobpw, a plain port (STARTTLS offered) and an implicit
TLS port with a self-signed certificate. Without dovecot the tests skip, and
FAIL in CI (CI=true), so a missing server never passes silently.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from imapclient import IMAPClient

SCRIPT = Path(__file__).with_name("dovecot-test-server.sh")
USERS = {"alice": "alicepw", "bob": "bobpw"}


def dovecot_missing() -> str | None:
    """Why no Dovecot can be started here, or None."""
    if shutil.which("dovecot") or Path("/usr/sbin/dovecot").exists():
        return None
    return "dovecot is not installed (apt-get install -y dovecot-imapd openssl)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Dovecot:
    dir: Path
    port: int = field(default_factory=free_port)
    imaps_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"

    @property
    def cert(self) -> Path:
        return self.dir / "ssl" / "cert.pem"

    @property
    def master_pid(self) -> int | None:
        path = self.dir / "instance.env"
        env = path.read_text() if path.exists() else ""
        base = next((line[9:] for line in env.splitlines() if line.startswith("BASE_DIR=")), "")
        try:
            return int(Path(base, "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        env = {**os.environ, "IMAPS_PORT": str(self.imaps_port),
               "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
        subprocess.run([str(SCRIPT), "start", str(self.dir), str(self.port)], env=env,
                       check=True, capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        """Stop the master and, like a host going down, every session it left running
        (Dovecot's own stop lets established IMAP sessions live on)."""
        children = self._children()
        subprocess.run([str(SCRIPT), "stop", str(self.dir)], check=True, capture_output=True,
                       timeout=60)
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _children(self) -> list[int]:
        """The master's child processes, read from /proc (no dependency on ps)."""
        master = self.master_pid
        if master is None:
            return []
        kids: list[int] = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # the process has just exited
            if len(fields) > 1 and fields[1] == str(master):
                kids.append(int(stat.parent.name))
        return kids

    def maildir(self, user: str) -> Path:
        """The user's Maildir (the script may have moved the mail out of DIR)."""
        root = self.dir / "mail-elsewhere"
        return (root if root.exists() else self.dir / "mail") / user / "Maildir"

    @contextmanager
    def client(self, user: str = "alice") -> Iterator[IMAPClient]:
        """A plain admin connection for the test itself (APPEND, inspect folders)."""
        c = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        try:
            c.login(user, USERS[user])
            yield c
        finally:
            try:
                c.logout()
            except Exception:
                c.shutdown()

    def append(self, user: str, folder: str, *messages: bytes, seen: bool = False) -> None:
        with self.client(user) as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            for raw in messages:
                c.append(folder, raw, flags=[b"\\Seen"] if seen else [])

    def deliver(self, user: str, folder: str, *messages: bytes) -> None:
        """Write messages straight into the Maildir, as a local delivery agent does; works
        while the server is down (and is the fast way to fill a folder for the bench)."""
        maildir = self.maildir(user)
        box = maildir if folder == "INBOX" else maildir / f".{folder}"
        owner = maildir.parent.parent.stat()  # the mail root, owned by the mail user
        for path in (maildir.parent, maildir, box, *(box / sub for sub in ("cur", "new", "tmp"))):
            if not path.exists():
                path.mkdir()
                os.chown(path, owner.st_uid, owner.st_gid)
        stamp = f"{time.time():.0f}.M{time.time_ns() % 10**9}P{os.getpid()}"
        for i, raw in enumerate(messages):
            tmp = box / "tmp" / f"{stamp}Q{i}.test"
            tmp.write_bytes(raw)
            os.chown(tmp, owner.st_uid, owner.st_gid)
            tmp.rename(box / "new" / tmp.name)

    def uids(self, user: str, folder: str, criteria: str = "ALL") -> list[int]:
        with self.client(user) as c:
            if not c.folder_exists(folder):
                return []
            c.select_folder(folder, readonly=True)
            return sorted(c.search(criteria))

    def recreate(self, user: str, folder: str) -> None:
        """Delete and create `folder`: the server gives it a new UIDVALIDITY."""
        with self.client(user) as c:
            if c.folder_exists(folder):
                c.delete_folder(folder)
            c.create_folder(folder)


def start_dovecot(prefix: str = "dovecot-test-") -> Dovecot:
    """A running instance in a fresh short directory (socket paths must stay short)."""
    d = Dovecot(Path(tempfile.mkdtemp(prefix=prefix)))
    d.start()
    return d


def remove(d: Dovecot) -> None:
    d.stop()
    shutil.rmtree(d.dir, ignore_errors=True)


def require_dovecot() -> None:
    """In a test: skip it without dovecot, or FAIL it in CI (CI=true)."""
    import pytest  # here, not at the top: bench/imap.py imports this module too

    why = dovecot_missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def serving(prefix: str = "dovecot-test-") -> Iterator[Dovecot]:
    """For a fixture (`yield from serving()`): a running instance, removed afterwards."""
    require_dovecot()
    server = start_dovecot(prefix)
    try:
        yield server
    finally:
        remove(server)


def trust(*servers: Dovecot, into: Path) -> Path:
    """One CA bundle with the servers' self-signed certificates, for SSL_CERT_FILE."""
    into.write_text("".join(s.cert.read_text() for s in servers))
    return into


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             step: float = 0.05) -> float:
    """Poll `predicate()` until it is true; returns the seconds it took. No fixed sleeps."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started
