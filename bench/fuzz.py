"""Fuzz benchmark: broken mail through the whole pipeline and the outbound path.

    python bench/fuzz.py [--seeds 1] [--examples 1000] [--no-extremes] [--timeout 30]

Feeds, one by one, into the real pipeline on a SQLite database (two desks taking turns:
one without rules, which stores mail from its headers and reads the body in the
follow-up, and one whose rules read the body, which reads it whole at once) and drains
the real sender into a Maildir after each input (tests/fuzz_harness.py `Harness`):

1. every message of the shared corpus as it is;
2. every corpus message under every mutation of `fuzz_mail.MUTATIONS`, `--seeds` times;
3. `--examples` inputs that hypothesis draws: a corpus message and one to four
   mutations in a row;
4. the extreme cases (`fuzz_mail.EXTREMES`): 10,000 parts, 200 KB header lines and
   subjects, 1,000-deep message/rfc822, a 20 MB single-line body, ...

It prints the count, how many were ticketed / ignored / duplicate / failed (with their
reasons), the crashes and broken promises (see `Harness.run`), the slowest inputs and
their times, and the process's max RSS. An input that takes longer than `--timeout`
seconds is stopped and counted as a hang. Exit 1 when anything crashed, hung or broke
a promise.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzz_harness import Harness, Result  # noqa: E402
from tests.fuzz_mail import EXTREMES, MUTATIONS, corpus_messages, mutate  # noqa: E402


class Hang(BaseException):  # not an Exception: no `except Exception` in maildesk stops it
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


@dataclass
class Tally:
    count: int = 0
    states: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    broken: list[tuple[str, str]] = field(default_factory=list)  # (input, what)
    times: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    rss_jumps: list[tuple[int, str]] = field(default_factory=list)

    def add(self, name: str, r: Result | None, seconds: float, rss_before: int) -> None:
        self.count += 1
        if r is None:
            self.broken.append((name, f"hang: stopped after {seconds:.1f} s"))
            self.states["hang"] += 1
            return
        self.states[r.state or "crash"] += 1
        if r.state == "failed":
            self.reasons[(r.reason or "")[:120]] += 1
        if r.crash:
            self.broken.append((name, r.crash))
        self.broken += [(name, p) for p in r.problems]
        self.times.append((r.seconds, r.process_s, r.send_s, r.cpu_s, name))
        self.rss_jumps.append((_rss_kib() - rss_before, name))


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Runner:
    def __init__(self, folder: Path, timeout: int) -> None:
        self.desks = [Harness(folder / "plain"), Harness(folder / "rules", rules=True)]
        self.turn = 0
        self.timeout = timeout
        self.tally = Tally()

    def feed(self, name: str, raw: bytes) -> None:
        desk = self.desks[self.turn % 2]
        self.turn += 1
        rss = _rss_kib()
        started = time.perf_counter()
        signal.alarm(self.timeout)
        try:
            result: Result | None = desk.run(raw)
        except Hang:
            result = None
        finally:
            signal.alarm(0)
        broken = len(self.tally.broken)
        self.tally.add(name, result, time.perf_counter() - started, rss)
        for what in self.tally.broken[broken:]:
            print(f"broken: {what[0]}: {what[1]}", file=sys.stderr, flush=True)
        if self.tally.count % 500 == 0:
            print(f"... {self.tally.count} inputs, {len(self.tally.broken)} broken",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        for desk in self.desks:
            desk.close()


def sweep(corpus: dict[str, bytes], seeds: int) -> Iterator[tuple[str, bytes]]:
    for name, raw in corpus.items():
        yield name, raw
    for seed in range(seeds):
        for mutation in MUTATIONS:
            for i, (name, raw) in enumerate(corpus.items()):
                rnd = random.Random(f"{seed}:{mutation}:{i}")
                yield f"{name} + {mutation} (seed {seed})", mutate(raw, [mutation], rnd)


def drawn(runner: Runner, corpus: dict[str, bytes], examples: int) -> None:
    names = sorted(corpus)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(names),
           mutations=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=4),
           rnd=st.randoms(use_true_random=False))
    def one(name: str, mutations: list[str], rnd: random.Random) -> None:
        seed = rnd.getrandbits(32)
        raw = mutate(corpus[name], mutations, random.Random(seed))
        runner.feed(f"{name} + {' + '.join(mutations)} (hypothesis, seed {seed})", raw)

    one()


def report(t: Tally, elapsed: float) -> None:
    print(f"inputs: {t.count} in {elapsed:.0f} s")
    print("states: " + ", ".join(f"{k} {v}" for k, v in t.states.most_common()))
    failed = sum(t.reasons.values())
    print(f"failed with a one-line reason: {failed}")
    for reason, n in t.reasons.most_common(10):
        print(f"  {n:5d}  {reason}")
    crashes = [b for b in t.broken if b[1].startswith(("processing raised", "sending raised",
                                                        "hang"))]
    print(f"crashes (an exception out of processing or sending, or a hang): {len(crashes)}")
    print(f"broken promises: {len(t.broken)}")
    for name, what in t.broken[:30]:
        print(f"  {name}: {what}")
    print("slowest inputs (wall = process + send; CPU):")
    for total, process, send, cpu, name in sorted(t.times, reverse=True)[:8]:
        print(f"  {total * 1000:8.1f} ms = {process * 1000:8.1f} + {send * 1000:6.1f}"
              f"  CPU {cpu * 1000:7.1f} ms  {name}")
    cpu, name = max((x[3], x[4]) for x in t.times) if t.times else (0.0, "-")
    print(f"most CPU: {cpu * 1000:.1f} ms  {name}")
    for label, column in (("wall", 0), ("CPU", 3)):
        times = sorted(x[column] for x in t.times)
        if times:
            print(f"{label}: median {times[len(times) // 2] * 1000:.1f} ms, "
                  f"p99 {times[int(len(times) * 0.99)] * 1000:.1f} ms, "
                  f"max {times[-1] * 1000:.1f} ms per input")
    jumps = sorted(t.rss_jumps, reverse=True)[:3]
    print(f"max RSS: {_rss_kib() / 1024:.0f} MiB; grown most by: "
          + "; ".join(f"{name} (+{kib / 1024:.0f} MiB)" for kib, name in jumps if kib > 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="sweeps of corpus x mutations")
    ap.add_argument("--examples", type=int, default=1000, help="hypothesis-drawn inputs")
    ap.add_argument("--no-extremes", action="store_true")
    ap.add_argument("--timeout", type=int, default=30, help="seconds before an input hangs")
    ap.add_argument("--only", help="run only the inputs whose name contains this")
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the harness collects errors itself
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped: report what ran
    corpus = corpus_messages()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maildesk-fuzz-") as tmp:
        runner = Runner(Path(tmp), args.timeout)
        try:
            for name, raw in sweep(corpus, args.seeds):
                if not args.only or args.only in name:
                    runner.feed(name, raw)
            if args.examples and not args.only:
                drawn(runner, corpus, args.examples)
            if not args.no_extremes:
                for name, build in EXTREMES.items():
                    if not args.only or args.only in name:
                        runner.feed(name, build())
        except KeyboardInterrupt:
            print("stopped early: the figures below are of the inputs that ran")
        finally:
            runner.close()
    report(runner.tally, time.perf_counter() - started)
    return 1 if runner.tally.broken else 0


if __name__ == "__main__":
    sys.exit(main())
