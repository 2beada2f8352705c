"""The ways a database goes away, for tests/outage_load.py's `run_outage`.

- `ProxyOutage`: PostgreSQL behind tests/tcp_proxy.py's TcpProxy; stopping the proxy refuses
  new connections and closes the established ones, as a server that stops does.
- `BackendKill`: pg_terminate_backend on the daemon's sessions (a server restart that is over
  at once): every established connection dies mid-use, new ones work.
- `Partition`: PostgreSQL reached across a network namespace of its own (root), whose address
  is taken away: packets dropped without a reset, as when its host is cut off.
- `FileSizeLimit`: RLIMIT_FSIZE set on the running daemon (prlimit(2)): every write past the
  limit fails with EFBIG, as on a full disk (SQLite: "disk I/O error").
- `FullDisk`: the SQLite file on a small tmpfs, filled up by a filler file (needs root).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.outage_load import connect
from tests.tcp_proxy import TcpProxy


class ProxyOutage:
    """PostgreSQL stops: the proxy refuses connections and closes the established ones."""

    strict = lasting = True

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy

    def down(self) -> None:
        self.proxy.stop()

    def up(self) -> None:
        self.proxy.start()


class BackendKill:
    """PostgreSQL restarts in no time: every session of the daemon's database dies."""

    strict = lasting = False

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.killed = 0

    def down(self) -> None:
        conn = connect(self.db_url)
        try:
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            self.killed += cur.fetchone()[0]
        finally:
            conn.close()

    def up(self) -> None:
        pass


class FileSizeLimit:
    """A full disk for one process: RLIMIT_FSIZE on the running daemon (prlimit(2)). Every
    write at or past `limit` bytes into any regular file fails with EFBIG (Python ignores
    SIGXFSZ). The limit leaves small files (the Maildir's) writable, as a disk that still
    has a few blocks free: SQLite's file and log are past it."""

    lasting = True
    strict = False  # SQLite may commit a transaction whose log pages are all below the limit

    def __init__(self, pid: int, limit: int = 16 * 1024) -> None:
        self.pid = pid
        self.limit = limit

    def down(self) -> None:
        _, hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (self.limit, hard))

    def up(self) -> None:
        _, hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (hard, hard))


class FullDisk:
    """The filesystem of the SQLite file runs full: a filler file takes all that is left
    (a small tmpfs, see `tmpfs()`), and is removed at recovery."""

    strict, lasting = False, True

    def __init__(self, folder: Path) -> None:
        self.filler = folder / "filler"

    def down(self) -> None:
        with self.filler.open("wb", buffering=0) as f:
            for size in (1 << 20, 65536, 4096, 512):  # then the last few bytes
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)

    def up(self) -> None:
        self.filler.unlink()


class Partition:
    """PostgreSQL goes silent: its host is cut off without a reset (powered off, a network
    partition). The daemon reaches the machine's PostgreSQL across a network namespace of
    its own (root and `ip netns` needed): daemon -> SIDE:PORT (a forwarder inside the
    namespace) -> HOST:PORT (one outside, over a veth pair) -> 127.0.0.1:5432. `down()`
    takes the namespace side's address away, so every packet to it is dropped in silence;
    `up()` gives it back, and the established connections carry on. Nothing on the
    machine's own loopback changes."""

    strict = lasting = True
    PORT = 15432

    def __init__(self) -> None:
        tag = os.urandom(3).hex()
        self.ns, self.veth = f"mdo-{tag}", f"mdo{tag}"
        net = 16 + int(tag[:2], 16) % 200
        self.host, self.side = f"10.213.{net}.1", f"10.213.{net}.2"
        self.outside = TcpProxy(("127.0.0.1", 5432), host=self.host, port=self.PORT)
        self.inside: subprocess.Popen[bytes] | None = None

    def _ip(self, *args: str, inside: bool = False) -> None:
        pre = ["ip", "netns", "exec", self.ns] if inside else []
        subprocess.run([*pre, "ip", *args], check=True, capture_output=True, timeout=10)

    def start(self) -> str | None:
        """Set it up; why it cannot be, or None."""
        try:
            subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True,
                           timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"no network namespace here (root and iproute2 needed): {exc}"
        self._ip("link", "add", self.veth + "a", "type", "veth", "peer", "name", self.veth + "b")
        self._ip("link", "set", self.veth + "b", "netns", self.ns)
        self._ip("addr", "add", f"{self.host}/30", "dev", self.veth + "a")
        self._ip("link", "set", self.veth + "a", "up")
        self._ip("link", "set", "lo", "up", inside=True)
        self._ip("link", "set", self.veth + "b", "up", inside=True)
        self.up()
        self.outside.start()
        code = ("import sys, time; from tests.tcp_proxy import TcpProxy; "
                f"TcpProxy(('{self.host}', {self.PORT}), host='{self.side}', "
                f"port={self.PORT}).start(); print('ready', flush=True); time.sleep(1e9)")
        self.inside = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", code],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE)
        assert self.inside.stdout is not None and self.inside.stdout.readline() == b"ready\n"
        return None

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@{self.side}:{self.PORT}/{dbname}"

    def down(self) -> None:
        self._ip("addr", "del", f"{self.side}/30", "dev", self.veth + "b", inside=True)

    def up(self) -> None:
        self._ip("addr", "add", f"{self.side}/30", "dev", self.veth + "b", inside=True)

    def close(self) -> None:
        if self.inside is not None:
            self.inside.kill()
            self.inside.wait(10)
        self.outside.stop()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.veth + "a"], capture_output=True, check=False)


def tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of `size` on `folder`: True when it worked (root, mounts allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, check=False)
    return done.returncode == 0


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
