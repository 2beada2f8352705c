"""`maildesk serve`, `maildesk check-config` and `maildesk db upgrade`."""

from __future__ import annotations

import argparse
from typing import Any

from maildesk.cli.common import EX_OK, CliError, database, settings
from maildesk.cli.parser import Adder, group


def cmd_serve(args: argparse.Namespace) -> int:
    from maildesk.config import config_path_from
    from maildesk.service import run

    loaded = settings(args)
    problems = loaded.secret_problems()  # loading does not ask: read-only commands need none
    if problems:
        raise CliError("\n".join(problems))
    return run(loaded, config_path_from(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    """The config as `serve` would load it: every key, the secrets that connecting needs,
    and every template it would load (the shipped ones and the rules' reply templates)."""
    from maildesk.outbound.render import Templates
    from maildesk.service import SHIPPED_TEMPLATES

    loaded = settings(args)
    names = [*SHIPPED_TEMPLATES, *(r.then.reply_template for r in loaded.rules
                                   if r.then.reply_template)]
    problems = loaded.secret_problems()
    problems += [f"desk.templates: {line}" for line in
                 Templates(loaded.desk.templates).check(list(dict.fromkeys(names)))]
    if problems:
        raise CliError("\n".join(problems))
    print(f"ok: {args.config or 'MAILDESK_CONFIG'} ({loaded.desk.address})")
    return EX_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    database(settings(args), migrate=False).upgrade()
    print("database is up to date")
    return EX_OK


def register_serve(sub: Any, add: Adder) -> None:
    add(sub, "serve", cmd_serve, "run the daemon")


def register_check_config(sub: Any, add: Adder) -> None:
    add(sub, "check-config", cmd_check_config, "validate the config file")


def register_db(sub: Any, add: Adder) -> None:
    db = group(sub, "db", "database", dest="db_command")
    add(db, "upgrade", cmd_db_upgrade, "apply schema migrations")
