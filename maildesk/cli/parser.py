"""The argument parser. Each command group lives in a module of its own, which registers
its arguments and holds its functions; only the module of the command being run is
imported (an MTA starts `ingest --queue` once per message)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

Adder = Callable[[Any, str, Callable[[argparse.Namespace], int], str], Any]

# command -> "module:register function" (modules of maildesk.cli)
COMMANDS: dict[str, str] = {
    "serve": "admin:register_serve",
    "check-config": "admin:register_check_config",
    "db": "admin:register_db",
    "ingest": "ingest:register",
    "tickets": "tickets:register",
    "sla": "sla:register",
    "inbox": "inbox:register",
    "outbox": "outbox:register",
    "explain": "explain:register",
    "report": "report:register",
}


def group(sub: Any, name: str, hlp: str, dest: str = "sub") -> Any:
    """A command made of subcommands (`maildesk tickets list`)."""
    return sub.add_parser(name, help=hlp, formatter_class=_Formatter).add_subparsers(
        dest=dest, required=True)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with a one-line error: `maildesk tickets list: error: ...`, exit 2
    (argparse prints the whole usage first, which buries the one line that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Formatter(argparse.HelpFormatter):
    """argparse's help at the terminal's width, found the way shutil.get_terminal_size
    finds it, without importing shutil (and bz2, lzma) into every `ingest --queue`."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def _register(spec: str) -> Callable[[Any, Adder], None]:
    module, _, function = spec.partition(":")
    register: Callable[[Any, Adder], None] = getattr(
        importlib.import_module(f"maildesk.cli.{module}"), function)
    return register


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with `only`, just that command's branch (argparse takes a few
    milliseconds per subcommand, and an MTA pipe starts one process per message)."""
    common = _Parser(add_help=False, formatter_class=_Formatter)
    common.add_argument("--config", help="config file (default: $MAILDESK_CONFIG)")
    common.add_argument("--json", action="store_true", help="print JSON")
    p = _Parser(prog="maildesk", description="Email-driven help desk.",
                                formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(parent: Any, name: str, func: Callable[[argparse.Namespace], int], hlp: str) -> Any:
        sp = parent.add_parser(name, parents=[common], help=hlp, formatter_class=_Formatter)
        sp.set_defaults(func=func)
        return sp

    for name, spec in COMMANDS.items():
        if only is None or only not in COMMANDS or name == only:
            _register(spec)(sub, add)
    return p
