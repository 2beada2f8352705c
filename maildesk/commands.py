"""Agent mail text -> typed commands (SPEC §2.4): pure, table-tested.

Commands are the lines at the top of an agent's reply, before any other text; blank
lines may stand between them. A command line is `#word value` (or `#word: value`),
case-insensitive; any line there that starts with `#` and a letter is taken as one, so
a mistyped command is an error and never text for the customer:

    #status open|pending|solved|closed    #priority low|normal|high|urgent
    #assignee <email|me>                  #queue <name>
    #tags a b c  (adds; `-a` removes)     #note | #public
    #merge <ticket id>                    #requester <email>  (opens a ticket)

`parse` returns every command it understood, every line it did not (a CommandError
naming the line and why), and the text that follows the command block. The caller
runs the commands only when there are no errors: one bad line, and nothing of the
mail is applied or relayed. Values that need the database (does the merge target
exist, is it open?) are checked by the caller (`agent_mail.plan`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from maildesk.domain import Priority, Status


@dataclass(frozen=True)
class SetStatus:
    status: Status


@dataclass(frozen=True)
class Assign:
    address: str


@dataclass(frozen=True)
class SetPriority:
    priority: Priority


@dataclass(frozen=True)
class SetTags:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetQueue:
    queue: str


@dataclass(frozen=True)
class Note:
    """The whole reply is internal: nothing of it reaches the customer."""


@dataclass(frozen=True)
class Public:
    """The reply goes to the customer (the default, said out loud)."""


@dataclass(frozen=True)
class Merge:
    ticket_id: int  # merge this ticket into that one


@dataclass(frozen=True)
class Requester:
    address: str  # open the ticket on this customer's behalf


Command = SetStatus | Assign | SetPriority | SetTags | SetQueue | Note | Public | Merge | Requester


@dataclass(frozen=True)
class CommandError:
    line: str  # as the agent wrote it
    why: str


@dataclass(frozen=True)
class Context:
    """What the values are checked against."""

    me: str  # the sender: `#assignee me`
    agents: frozenset[str]
    queues: Mapping[str, str]  # casefolded name -> configured name


@dataclass(frozen=True)
class Parsed:
    commands: tuple[tuple[str, Command], ...] = ()  # (line as written, command)
    errors: tuple[CommandError, ...] = ()
    text: str = ""  # what follows the command block

    def first(self, kind: type[Command]) -> Command | None:
        return next((c for _, c in self.commands if isinstance(c, kind)), None)

    def all(self, kind: type[Command]) -> list[Command]:
        return [c for _, c in self.commands if isinstance(c, kind)]


# `#` and a letter starts a command (a typo is an error, never text for the customer);
# `# Heading` and `#1` are text. The value may follow a space or a colon.
_LINE = re.compile(r"#([A-Za-z][A-Za-z_-]*)\s*:?\s*(.*)")
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_TAG = re.compile(r"-?[\w.:+-]{1,64}")
_SINGLE = (SetStatus, Assign, SetPriority, SetQueue, Merge, Requester)
ParseValue = Callable[[str, Context], "Command | str"]


def is_command_line(line: str) -> bool:
    return _LINE.fullmatch(line.strip()) is not None


def parse(text: str, ctx: Context) -> Parsed:
    """The command block at the top of `text`, checked, and the text after it."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[tuple[str, Command]] = []
    errors: list[CommandError] = []
    end = len(lines)
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            end = i
            break
        found = _command(m[1].lower(), (m[2] or "").strip(), ctx)
        if isinstance(found, str):
            errors.append(CommandError(line, found))
        else:
            commands.append((line, found))
    errors += _conflicts(commands)
    rest = "\n".join(lines[end:]).strip("\n")
    return Parsed(tuple(commands), tuple(errors), rest)


def strip_commands(text: str) -> str:
    """`text` without the command block at its top (whatever the commands say)."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and (not lines[start].strip() or is_command_line(lines[start])):
        start += 1
    return "\n".join(lines[start:]).strip("\n")


def _command(word: str, value: str, ctx: Context) -> Command | str:
    handler = _HANDLERS.get(word)
    if handler is None:
        return f"unknown command #{word}; the commands are {_NAMES}"
    return handler(value, ctx)


def _choice_error(word: str, value: str, allowed: tuple[str, ...]) -> str:
    got = f", not {value!r}" if value else ""
    return f"#{word} takes one of {'|'.join(allowed)}{got}"


_STATUSES = tuple(s.value for s in Status if s is not Status.NEW)
_PRIORITIES = tuple(p.value for p in Priority)


def _status(value: str, ctx: Context) -> Command | str:
    v = value.lower()
    return SetStatus(Status(v)) if v in _STATUSES else _choice_error("status", value, _STATUSES)


def _priority(value: str, ctx: Context) -> Command | str:
    v = value.lower()
    if v in _PRIORITIES:
        return SetPriority(Priority(v))
    return _choice_error("priority", value, _PRIORITIES)


def _assignee(value: str, ctx: Context) -> Command | str:
    v = value.strip("<>").lower()
    if v == "me":
        return Assign(ctx.me)
    if not _ADDRESS.fullmatch(v):
        return "#assignee takes an agent's address or me"
    return Assign(v) if v in ctx.agents else f"{v} is not an agent ([[agents]] in the config)"


def _tags(value: str, ctx: Context) -> Command | str:
    words = value.lower().split()
    if not words:
        return "#tags needs at least one tag (-tag removes one)"
    bad = [w for w in words if not _TAG.fullmatch(w) or w == "-"]
    if bad:
        return f"not a tag: {' '.join(bad)} (letters, digits and . _ : + - only)"
    return SetTags(tuple(dict.fromkeys(w for w in words if not w.startswith("-"))),
                   tuple(dict.fromkeys(w[1:] for w in words if w.startswith("-"))))


def _queue(value: str, ctx: Context) -> Command | str:
    found = ctx.queues.get(value.casefold())
    if found:
        return SetQueue(found)
    return f"unknown queue {value!r}; the queues are {', '.join(sorted(ctx.queues.values()))}"


def _flag(command: Command, word: str) -> ParseValue:
    def parse_flag(value: str, ctx: Context) -> Command | str:
        return f"#{word} takes no value: write the text on the next lines" if value else command
    return parse_flag


def _merge(value: str, ctx: Context) -> Command | str:
    digits = value.rpartition("#")[2] if value.count("#") <= 1 else ""
    if not digits.isdigit() or len(digits) > 12:
        return "#merge takes the number of the ticket to merge into"
    return Merge(int(digits))


def _requester(value: str, ctx: Context) -> Command | str:
    v = value.strip("<>").lower()
    if not _ADDRESS.fullmatch(v):
        return "#requester takes the customer's email address"
    return f"{v} is an agent, not a customer" if v in ctx.agents else Requester(v)


_HANDLERS: dict[str, ParseValue] = {
    "status": _status, "assignee": _assignee, "priority": _priority, "tags": _tags,
    "queue": _queue, "note": _flag(Note(), "note"), "public": _flag(Public(), "public"),
    "merge": _merge, "requester": _requester,
}
_NAMES = ", ".join(f"#{w}" for w in _HANDLERS)


def _conflicts(commands: list[tuple[str, Command]]) -> list[CommandError]:
    """A single-valued command given twice with different values, or #note with #public."""
    errors: list[CommandError] = []
    seen: dict[type[Command], Command] = {}
    for line, command in commands:
        kind = type(command)
        if kind in _SINGLE and seen.setdefault(kind, command) != command:
            errors.append(CommandError(line, "contradicts an earlier line of the same command"))
    kinds = {type(c) for _, c in commands}
    if Note in kinds and Public in kinds:
        line = next(line for line, c in commands if isinstance(c, Public))
        errors.append(CommandError(line, "#note and #public contradict each other"))
    return errors
