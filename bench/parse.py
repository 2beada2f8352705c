"""Parse benchmark: median time per message of `parse.parse_message` and `parse_headers`.

    python bench/parse.py [-n 500] [--repeat 5]
    python bench/parse.py --against DIR [--runs 5]

It parses every file of the shared corpus (../shared/corpus, or MAILDESK_CORPUS) and N
messages of the ingest benchmark's workload (bench/ingest.py `generate`: conversations
with replies, UTF-8 and ISO-8859-1 subjects, ~10% with a 50-200 KB attachment). Each
message is parsed `--repeat` times and its fastest time kept (the machine is shared and
noisy); the figure is the median of those over the messages, per set.

`--against DIR` compares with another checkout of maildesk (e.g. `git worktree add` or
`git archive` of the base commit): it runs this script on DIR's code and on this one's,
alternately, `--runs` times each, and prints each pair and the median of their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("MAILDESK_CORPUS") or REPO.parent / "shared" / "corpus")


def corpus_messages() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.rglob("*"))
            if p.is_file() and p.suffix != ".md" and not p.name.startswith(".")]


def workload(n: int) -> list[bytes]:
    sys.path.insert(0, str(REPO / "bench"))
    from ingest import generate  # type: ignore[import-not-found]

    messages: list[bytes] = generate(n)
    return messages


def median_ms(parse: object, messages: list[bytes], repeat: int) -> float:
    times = []
    for raw in messages:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            parse(raw)  # type: ignore[operator]
            best = min(best, time.perf_counter() - started)
        times.append(best)
    return statistics.median(times) * 1000


def measure(code: Path, n: int, repeat: int) -> dict[str, float]:
    sys.path.insert(0, str(code))
    import logging

    logging.disable(logging.CRITICAL)
    from maildesk.parse import parse_headers, parse_message

    sets = {"corpus": corpus_messages(), "workload": workload(n)}
    for raw in sets["workload"][:50]:  # warm caches and imports
        parse_message(raw)
    figures = {}
    for name, messages in sets.items():
        figures[f"{name}_message_ms"] = median_ms(parse_message, messages, repeat)
        figures[f"{name}_headers_ms"] = median_ms(parse_headers, messages, repeat)
    return figures


def compare(other: Path, runs: int, n: int, repeat: int) -> None:
    def run(code: Path) -> dict[str, float]:
        out = subprocess.run([sys.executable, __file__, "--code", str(code), "-n", str(n),
                              "--repeat", str(repeat), "--json"], check=True,
                             capture_output=True, text=True, cwd=REPO).stdout
        figures: dict[str, float] = json.loads(out)
        return figures

    pairs = []
    for i in range(runs):
        base, this = run(other), run(REPO)
        pairs.append((base, this))
        print(f"run {i + 1}: " + ", ".join(
            f"{k} {base[k]:.3f} -> {this[k]:.3f}" for k in base), flush=True)
    print("median of paired ratios (this / other):")
    for key in pairs[0][0]:
        ratios = [this[key] / base[key] for base, this in pairs]
        print(f"  {key:<22} {statistics.median(p[0][key] for p in pairs):8.3f} ms -> "
              f"{statistics.median(p[1][key] for p in pairs):8.3f} ms  "
              f"ratio {statistics.median(ratios):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500, help="workload messages")
    ap.add_argument("--repeat", type=int, default=5, help="parses per message (fastest kept)")
    ap.add_argument("--code", type=Path, default=REPO, help="the maildesk checkout to time")
    ap.add_argument("--against", type=Path, help="another checkout to compare with")
    ap.add_argument("--runs", type=int, default=5, help="paired runs with --against")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.against:
        compare(args.against.resolve(), args.runs, args.n, args.repeat)
        return
    figures = measure(args.code.resolve(), args.n, args.repeat)
    if args.json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:<22} {value:8.3f} ms (median per message)")


if __name__ == "__main__":
    main()
