"""The `maildesk` command line (SPEC §3), one module per command group:

| module | commands |
|---|---|
| `admin` | `serve`, `check-config`, `db upgrade` |
| `ingest` | `ingest [--queue]` (the MTA pipe) |
| `tickets` | `tickets list`, `tickets show` |
| `sla` | `sla show` (due times and how they were computed) |
| `inbox`, `outbox` | `inbox list/retry`, `outbox list/retry` |
| `explain`, `report` | `explain FILE`, `report` |

`parser` builds the argument parser and imports only the module of the command being
run; `common` holds what they share. Imports inside the modules are deferred into the
commands: `maildesk ingest --queue` runs once per message from an MTA pipe and must not
pay for the daemon's imports.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from maildesk.cli.common import EX_FAIL, EX_TEMPFAIL, CliError, Exit
from maildesk.cli.parser import build_parser

__all__ = ["main", "run"]


def run() -> None:
    """The `maildesk` command: main(), then exit. An MTA starts `ingest --queue` once per
    message, and the interpreter's teardown (freeing every imported module) is ~7 ms of
    its ~50: with the message committed and the answer flushed there is nothing left to
    clean up, so that path leaves at once.

    A command other than `serve` runs without the cyclic garbage collector: a process
    that imports pydantic and the pipeline and leaves frees its memory by exiting, and
    the collections during those imports cost `ingest` 6% of its CPU time (430 -> 406 ms,
    medians of 12 paired runs, load 16)."""
    if sys.argv[1:2] != ["serve"]:
        gc.disable()
    code = main()
    if Exit.skip_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except CliError as exc:
        print(f"maildesk: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"maildesk: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if args.command == "ingest" else EX_FAIL
    except Exception as exc:
        # imported here, not above: `ingest --queue` runs once per message
        from maildesk.store.direct import StoreUnavailable

        if not isinstance(exc, StoreUnavailable):
            raise
        print(f"maildesk: database unavailable, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
