"""Real processes for tests and benches: a `maildesk serve` daemon that can be killed
(SIGKILL) and restarted, and an aiosmtpd capture server in a process of its own that
records every message it accepted (the smarthost of tests/crash_run.py).

    python -m tests.daemon_proc capture PORT FILE   # the capture server (see Capture)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float, alive: object = None) -> None:
    """Until 127.0.0.1:`port` accepts a connection; `alive()` False stops the wait."""
    deadline = time.monotonic() + timeout
    while True:
        if callable(alive) and not alive():
            raise RuntimeError(f"the process for port {port} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout}s") from None
            time.sleep(0.01)


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Serve:
    """One `maildesk serve --config CONFIG` process at a time, its output appended to LOG."""

    def __init__(self, config: Path, log: Path, port: int, repo: Path = REPO) -> None:
        self.config, self.log, self.port, self.repo = config, log, port, repo
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Start it and wait until its SMTP listener answers."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "maildesk.cli", "serve", "--config", str(self.config)],
                cwd=self.repo, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        wait_port(self.port, timeout, lambda: self.alive)

    def kill(self) -> int:
        """SIGKILL, as the OOM killer or a power switch would; returns its peak RSS (kB)."""
        assert self.proc is not None
        rss = peak_rss_kb(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        return rss

    def stop(self, timeout: float = 60) -> tuple[int | None, int]:
        """SIGTERM (a clean stop): (exit status, peak RSS in kB)."""
        if self.proc is None:
            return None, 0
        rss = peak_rss_kb(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, rss


class Capture:
    """An aiosmtpd smarthost in a process of its own (so the daemon's crashes, and this
    process's GIL, do not touch it). Each accepted message is one JSON line in FILE,
    written and flushed before the `250`: what it holds is what a real smarthost would
    have taken responsibility for."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.daemon_proc", "capture", str(self.port),
             str(self.file)], cwd=REPO, stdout=subprocess.DEVNULL)
        wait_port(self.port, 30, lambda: self.proc is not None and self.proc.poll() is None)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def received(self) -> Counter[str]:
        """How many times each Message-ID arrived."""
        if not self.file.exists():
            return Counter()
        return Counter(json.loads(line)["message_id"]
                       for line in self.file.read_text().splitlines() if line)


def _capture_main(port: int, file: Path) -> None:
    from email.parser import BytesHeaderParser

    from aiosmtpd.controller import Controller

    out = file.open("a")

    class Handler:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            raw: bytes = envelope.original_content or b""  # type: ignore[attr-defined]
            headers = BytesHeaderParser().parsebytes(raw)
            out.write(json.dumps({
                "message_id": (headers["Message-ID"] or "").strip(),
                "mail_from": envelope.mail_from,  # type: ignore[attr-defined]
                "rcpt_tos": list(envelope.rcpt_tos),  # type: ignore[attr-defined]
                "bytes": len(raw)}) + "\n")
            out.flush()
            return "250 2.0.0 OK: queued"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()
    out.close()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "capture":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        _capture_main(int(sys.argv[2]), Path(sys.argv[3]))
        os._exit(0)
    sys.exit("usage: python -m tests.daemon_proc capture PORT FILE")
