"""`Settings` with its cross-table checks, error formatting and loading from TOML."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from maildesk.config.rules import Rule, SlaPolicy
from maildesk.config.tables import (
    Agent,
    Database,
    Desk,
    Log,
    Loop,
    Mailbox,
    Metrics,
    Outbound,
    Queue,
    Scheduler,
    Security,
    Smtp,
    Threading,
    Workers,
)
from maildesk.config.values import ConfigError, Loc, _config_dir, _fail, _Model

_TABLES = ("database", "smtp", "outbound", "threading", "loop", "security", "metrics",
           "scheduler", "workers", "log")


def _duplicates(values: list[str], field: str, what: str) -> list[tuple[Loc, str]]:
    seen: set[str] = set()
    out: list[tuple[Loc, str]] = []
    for i, value in enumerate(values):
        if value in seen:
            out.append(((i, field), f"duplicate {what} {value!r}"))
        seen.add(value)
    return out


class Settings(_Model):
    desk: Desk
    database: Database = Field(default_factory=Database)
    smtp: Smtp = Field(default_factory=Smtp)
    outbound: Outbound = Field(default_factory=Outbound)
    mailboxes: list[Mailbox] = []
    agents: list[Agent] = []
    queues: list[Queue] = []
    rules: list[Rule] = []
    sla: list[SlaPolicy] = []
    threading: Threading = Field(default_factory=Threading)
    loop: Loop = Field(default_factory=Loop)
    security: Security = Field(default_factory=Security)
    metrics: Metrics = Field(default_factory=Metrics)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    workers: Workers = Field(default_factory=Workers)
    log: Log = Field(default_factory=Log)
    config_dir: Path = Field(default_factory=Path.cwd)  # not a TOML key
    _agent_addresses: frozenset[str] = PrivateAttr(default=frozenset())
    _desk_addresses: frozenset[str] = PrivateAttr(default=frozenset())

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any, info: ValidationInfo) -> Any:
        # Absent tables are validated from {} so that relative paths and environment
        # overrides apply to defaults too.
        if isinstance(data, Mapping):
            data = {**{t: {} for t in _TABLES}, "config_dir": _config_dir(info), **data}
        return data

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, v: list[Mailbox]) -> list[Mailbox]:
        problems = _duplicates([m.name for m in v], "name", "mailbox name")
        envs: dict[str, str] = {}
        for i, m in enumerate(v):
            other = envs.setdefault(m.password_env, m.name)
            if other != m.name:
                problems.append(((i, "name"), f"{m.name!r} and {other!r} share {m.password_env}"))
        if problems:
            raise _fail(problems)
        return v

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: list[Agent], info: ValidationInfo) -> list[Agent]:
        problems = _duplicates([a.email for a in v], "email", "agent")
        desk: Desk | None = info.data.get("desk")
        if desk is not None:
            problems += [((i, "email"), "is the desk address")
                         for i, a in enumerate(v) if a.email == desk.address]
        if problems:
            raise _fail(problems)
        return v

    @field_validator("queues")
    @classmethod
    def _queues(cls, v: list[Queue], info: ValidationInfo) -> list[Queue]:
        problems = _duplicates([q.name for q in v], "name", "queue")
        addresses = [q.address or f"#{i}" for i, q in enumerate(v)]
        problems += _duplicates(addresses, "address", "queue address")
        desk: Desk | None = info.data.get("desk")
        agents: list[Agent] | None = info.data.get("agents")
        known = {a.email for a in agents or []}
        for i, q in enumerate(v):
            if desk is not None and q.address == desk.address:
                problems.append(((i, "address"), "is desk.address"))
            if q.address in known:
                problems.append(((i, "address"), "is an agent's address"))
            if agents is not None:
                problems += [((i, "agents", j), f"{a} is not listed in [[agents]]")
                             for j, a in enumerate(q.agents) if a not in known]
        if problems:
            raise _fail(problems)
        return v

    @field_validator("rules")
    @classmethod
    def _rules(cls, v: list[Rule], info: ValidationInfo) -> list[Rule]:
        desk: Desk | None = info.data.get("desk")
        queues: list[Queue] | None = info.data.get("queues")
        agents: list[Agent] | None = info.data.get("agents")
        problems: list[tuple[Loc, str]] = []
        for i, rule in enumerate(v):
            then = rule.then
            if then.queue is not None and desk is not None and queues is not None:
                names = {q.name for q in queues} | {desk.default_queue}
                if then.queue not in names:
                    problems.append(((i, "then", "queue"), f"unknown queue {then.queue!r}"))
            if (agents is not None and then.assignee and "@" in then.assignee
                    and then.assignee not in {a.email for a in agents}):
                problems.append(((i, "then", "assignee"),
                                 f"{then.assignee} is not listed in [[agents]]"))
            name = then.reply_template
            if name and desk is not None and not (
                (desk.templates / name).exists() or any(desk.templates.glob(f"{name}.*"))
            ):
                problems.append(((i, "then", "reply_template"),
                                 f"no template {name!r} in {desk.templates}"))
        if problems:
            raise _fail(problems)
        return v

    @field_validator("sla")
    @classmethod
    def _sla(cls, v: list[SlaPolicy], info: ValidationInfo) -> list[SlaPolicy]:
        problems = _duplicates([p.name for p in v], "name", "SLA policy")
        desk: Desk | None = info.data.get("desk")
        queues: list[Queue] | None = info.data.get("queues")
        if desk is not None and queues is not None:
            names = {q.name for q in queues} | {desk.default_queue}
            for i, policy in enumerate(v):
                problems += [((i, "match", "queue", j), f"unknown queue {q!r}")
                             for j, q in enumerate(policy.match.queue) if q not in names]
        if problems:
            raise _fail(problems)
        return v

    def secret_problems(self) -> list[str]:
        """Secrets that connecting needs and that are missing or unreadable, one
        "key.path: problem" line each (the mailboxes' passwords)."""
        return [f"mailboxes[{i}].password: {why}" for i, m in enumerate(self.mailboxes)
                if (why := m.missing_password())]

    @property
    def default_queue(self) -> str:
        return self.desk.default_queue

    def model_post_init(self, context: Any, /) -> None:
        # Frozen settings: the address sets every message and RCPT asks for, built once.
        self._agent_addresses = frozenset(a.email for a in self.agents)
        self._desk_addresses = frozenset(
            [self.desk.address, *(q.address for q in self.queues if q.address)])

    def agent_addresses(self) -> frozenset[str]:
        return self._agent_addresses

    def desk_addresses(self) -> frozenset[str]:
        """desk.address and every queue address, lowercased."""
        return self._desk_addresses

    def is_desk_address(self, addr: str) -> bool:
        """True for a desk address or one of its "+" reply addresses (local+tag@domain)."""
        return _base_address(addr) in self.desk_addresses()

    def queue_for_address(self, addr: str) -> str | None:
        """The queue whose `address` is addr (a "+tag" is ignored); None for anything else."""
        base = _base_address(addr)
        return next((q.name for q in self.queues if q.address == base), None)

    def queue_agents(self, queue: str) -> tuple[str, ...]:
        """The agents of a queue: its own list, or every agent when empty or not configured."""
        listed = next((q.agents for q in self.queues if q.name == queue), [])
        return tuple(listed or (a.email for a in self.agents))


def _base_address(addr: str) -> str:
    local, _, domain = addr.strip().lower().rpartition("@")
    return f"{local.partition('+')[0]}@{domain}"


# ---------------------------------------------------------------- loading


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_TYPE_MESSAGES = {
    "int_type": "expected an integer", "int_parsing": "expected an integer",
    "int_from_float": "expected an integer", "bool_type": "expected true or false",
    "string_type": "expected a string", "list_type": "expected an array",
    "dict_type": "expected a table", "model_type": "expected a table",
    "model_attributes_type": "expected a table", "date_type": "expected a date",
    "path_type": "expected a path string", "float_type": "expected a number",
}


def _message(err: Mapping[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    got = err.get("input")
    shown = f", got {got!r}" if isinstance(got, str | int | float | bool) else ""
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind] + shown
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')}{shown}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    msg = str(err["msg"])
    return msg[len("Input "):] + shown if msg.startswith("Input ") else msg


def format_errors(error: ValidationError) -> list[str]:
    """One "key.path: message" line per problem, in order, without repeats."""
    lines: list[str] = []
    for err in error.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        if err["type"] == "maildesk":
            base = loc[: len(loc) - err["ctx"]["up"]]
            lines += [f"{_path(base + sub)}: {msg}" for sub, msg in err["ctx"]["problems"]]
        else:
            lines.append(f"{_path(loc)}: {_message(err)}")
    return list(dict.fromkeys(lines))


def settings_from_dict(data: Mapping[str, Any], config_dir: Path) -> Settings:
    """Validate already-parsed TOML; relative paths are resolved against config_dir."""
    config_dir = config_dir.expanduser().absolute()
    problems = ["config_dir: unknown key"] if "config_dir" in data else []
    raw = {k: v for k, v in data.items() if k != "config_dir"}
    try:
        settings = Settings.model_validate(
            {**raw, "config_dir": config_dir}, context={"config_dir": config_dir}
        )
    except ValidationError as e:
        raise ConfigError(problems + format_errors(e)) from None
    if problems:
        raise ConfigError(problems)
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate one TOML file; raises ConfigError listing every problem."""
    file = Path(path).expanduser()
    try:
        with file.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{file}: cannot read: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{file}: invalid TOML: {e}"]) from None
    return settings_from_dict(data, file.absolute().parent)


def config_path_from(cli_value: str | None) -> Path:
    """--config wins, else MAILDESK_CONFIG; ConfigError when neither is given."""
    value = cli_value or os.environ.get("MAILDESK_CONFIG", "").strip()
    if not value:
        why = "no configuration file: pass --config PATH or set MAILDESK_CONFIG"
        raise ConfigError([f"config: {why}"])
    return Path(value).expanduser()
