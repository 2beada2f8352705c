"""Reading messages whole in worker processes of the daemon's own (SPEC §2).

Parsing is pure (bytes in, ParsedMail out, `parse.parse_message`) and the costliest step
of a message: ~7 ms of Python for a typical one, where storing it from its headers takes
under 1. The daemon's threads share one core (the GIL), so `maildesk serve` hands whole
reads to `[workers] parse_processes` processes started from a forkserver (a clean
interpreter with maildesk.parse imported, forked once per worker; never a fork of the
threaded daemon), and reads ahead: the follow-ups after the batch in hand are parsed
while it is stored. Workers exit with the daemon: on shutdown, and on their own when
the daemon dies (they watch its sentinel).

Never lose or block mail: a worker that dies takes every message in flight with it, and
each of those is read again, alone, in a process of its own. One that kills that
process twice is the message's fault: it comes back as a `ParseFailure` with the reason,
and the caller parks it as `failed` (reading it in the daemon might kill the daemon).

`InProcessParser` (parse_processes = 0, the CLI, tests) reads in the caller's thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

from maildesk.domain import ParsedMail
from maildesk.parse import parse_message

log = logging.getLogger(__name__)
# Messages read ahead of the follow-up batch in hand, at most: two batches keep the
# workers busy while one is stored; each holds a parsed message (and its attachments).
READ_AHEAD = 128
SOLO_TRIES = 2  # a suspect that kills its own process this many times is the poison


@dataclass(frozen=True)
class ParseFailure:
    reason: str  # one line, for the inbox row


Loader = Callable[[Sequence[int]], Mapping[int, bytes]]


class WholeParser(Protocol):
    def parse_whole(self, ids: Sequence[int], load: Loader) -> dict[int, ParsedMail | ParseFailure]:
        """Each message of `ids` read whole; `load` gives raw bytes of those not in hand.
        Ids that `load` does not return (gone meanwhile) are left out."""
        ...

    def read_ahead(self, ids: Sequence[int], load: Loader) -> None:
        """Start reading these, for a later `parse_whole` (a hint; may do nothing)."""
        ...

    def start(self) -> None: ...
    def close(self) -> None: ...


class InProcessParser:
    def parse_whole(self, ids: Sequence[int], load: Loader) -> dict[int, ParsedMail | ParseFailure]:
        return {i: parse_message(raw) for i, raw in load(list(ids)).items()}

    def read_ahead(self, ids: Sequence[int], load: Loader) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _Ahead:
    raw: bytes
    future: Future[ParsedMail]
    pool: ProcessPoolExecutor  # the pool it went to: replaced once a worker of it died


class ProcessParser:
    """parse_message in `processes` worker processes; see the module docstring."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["maildesk.parse_pool"])
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._solo: ProcessPoolExecutor | None = None
        self._ahead: OrderedDict[int, _Ahead] = OrderedDict()
        self.restarts = 0  # pools replaced after a worker died (tests, logs)

    def start(self) -> None:
        """Start the workers now (at serve time), not on the first message."""
        with self._lock:
            pool = self._live_pool()
        # The pool starts a process for a task that finds none idle: all of them, here.
        for started in [pool.submit(os.getpid) for _ in range(self.processes)]:
            started.result()

    def _live_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = self._new(self.processes)
        return self._pool

    def _new(self, processes: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(processes, mp_context=self._ctx, initializer=_worker_init)

    def read_ahead(self, ids: Sequence[int], load: Loader) -> None:
        with self._lock:
            room = READ_AHEAD - len(self._ahead)
            new = [i for i in ids if i not in self._ahead][:max(0, room)]
        if not new:
            return
        raws = load(new)
        with self._lock:
            for i in new:
                if i in raws and i not in self._ahead:
                    self._ahead[i] = self._submit(raws[i])

    def _submit(self, raw: bytes) -> _Ahead:
        pool = self._live_pool()
        try:
            return _Ahead(raw, pool.submit(parse_message, raw), pool)
        except BrokenProcessPool:  # a worker died since the last look: a new pool
            self._replace_pool(pool)
            pool = self._live_pool()
            return _Ahead(raw, pool.submit(parse_message, raw), pool)

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        if self._pool is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self.restarts += 1

    def parse_whole(self, ids: Sequence[int], load: Loader) -> dict[int, ParsedMail | ParseFailure]:
        with self._lock:
            taken = {i: self._ahead.pop(i) for i in ids if i in self._ahead}
            # Follow-ups go oldest first: one older than these was done elsewhere (another
            # node, `maildesk ingest`), and its reading is of no use any more.
            for stale in [i for i in self._ahead if ids and i < min(ids)]:
                self._ahead.pop(stale).future.cancel()
        missing = [i for i in ids if i not in taken]
        if missing:
            raws = load(missing)
            with self._lock:
                for i in missing:
                    if i in raws:
                        taken[i] = self._submit(raws[i])
        out: dict[int, ParsedMail | ParseFailure] = {}
        suspects = _collect({i: taken[i] for i in ids if i in taken}, out)
        if suspects:  # a worker died: these were in its pool, one of them may have done it
            log.warning("a parsing process died; reading its %d message(s) again",
                        len(suspects))
            with self._lock:
                for i in suspects:
                    self._replace_pool(taken[i].pool)
                again = {i: self._submit(taken[i].raw) for i in suspects}
            suspects = _collect(again, out)  # died again: one at a time, alone
            with self._lock:
                for i in suspects:
                    self._replace_pool(again[i].pool)
            for i in suspects:
                out[i] = self._alone(i, taken[i].raw)
            if self._solo is not None:
                self._solo.shutdown()
                self._solo = None
        return out

    def _alone(self, inbox_id: int, raw: bytes) -> ParsedMail | ParseFailure:
        """Read one message in a process that reads nothing else."""
        for _ in range(SOLO_TRIES):
            if self._solo is None:
                self._solo = self._new(1)
            try:
                return self._solo.submit(parse_message, raw).result()
            except BrokenProcessPool:
                self._solo.shutdown(wait=False)
                self._solo = None
            except Exception as exc:
                return ParseFailure(f"parse: {type(exc).__name__}: {exc}")
        log.error("inbox %s: the parsing process died reading it, %d times alone",
                  inbox_id, SOLO_TRIES)
        return ParseFailure(f"parse: the parsing process died reading it ({SOLO_TRIES} times,"
                            " alone); it was not read in the daemon, which it might kill too")

    def close(self) -> None:
        with self._lock:
            for pool in (self._pool, self._solo):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
            self._pool = self._solo = None
            self._ahead.clear()


def _collect(work: Mapping[int, _Ahead], out: dict[int, ParsedMail | ParseFailure]) -> list[int]:
    """Wait for each result into `out`; returns the ids whose process died."""
    died = []
    for i, item in work.items():
        try:
            out[i] = item.future.result()
        except BrokenProcessPool:
            died.append(i)
        except Exception as exc:  # parse_message never raises; its result may not pickle
            out[i] = ParseFailure(f"parse: {type(exc).__name__}: {exc}")
    return died


def make_parser(processes: int) -> WholeParser:
    return ProcessParser(processes) if processes > 0 else InProcessParser()


# --- in the worker process -------------------------------------------------------------


def _worker_init() -> None:
    """Live and die with the daemon. SIGINT and SIGTERM are the daemon's to handle (a
    Ctrl-C reaches the whole process group): it drains, then shuts the workers down. A
    worker blocked on its queue would outlive a SIGKILLed daemon, so a thread waits for
    the daemon's sentinel and exits the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    threading.Thread(target=_exit_with, args=(parent,), daemon=True,
                     name="daemon-watch").start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    from multiprocessing.connection import wait

    wait([parent.sentinel])
    os._exit(0)
