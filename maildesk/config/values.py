"""Scalar parsers and the annotated types the configuration tables are built from.

Durations, sizes, host:port pairs, email addresses, names, time zones and paths (resolved
against the directory of the config file), plus `ConfigError` and `_fail`, the error that
carries several "key.path: message" problems out of one validator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration is unusable; `problems` holds one "key.path: message" per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ---------------------------------------------------------------- scalar parsers


_DURATION_PART = re.compile(r"(\d+)([wdhms])")
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(s: str) -> timedelta:
    """Parse "90s", "15m", "4h", "3d", "2w" or a combination such as "1h30m"; "0" is zero."""
    text = re.sub(r"\s+", "", s).lower()
    if text in ("0", "0s"):
        return timedelta(0)
    hint = 'use a number and a unit s, m, h, d or w, e.g. "90s", "15m", "4h", "3d" or "1h30m"'
    if not re.fullmatch(r"(?:\d+[wdhms])+", text):
        raise ValueError(f"invalid duration {s!r}: {hint}")
    parts = _DURATION_PART.findall(text)
    units = [_UNIT_SECONDS[unit] for _, unit in parts]
    if units != sorted(set(units), reverse=True):
        raise ValueError(f"invalid duration {s!r}: give each unit once, largest first ({hint})")
    try:
        return timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))
    except OverflowError:
        raise ValueError(f"invalid duration {s!r}: too large") from None


def split_host_port(value: str) -> tuple[str, int]:
    """"127.0.0.1:2525" -> ("127.0.0.1", 2525); "[::1]:25" -> ("::1", 25)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", value.strip())
    if not m:
        raise ValueError(f"expected HOST:PORT or [IPV6]:PORT, got {value!r}")
    port = int(m[2] or m[4])  # 0: any free port (tests)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return (m[1] or m[3]), port


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2,
               "mb": 1000**2, "g": 1024**3, "gib": 1024**3, "gb": 1000**3}


def _size(v: object) -> object:
    if isinstance(v, str):
        m = re.fullmatch(r"(\d+)\s*([a-z]*)", v.strip().lower())
        if not m or m[2] not in _SIZE_UNITS:
            raise ValueError(f'expected a size such as 26214400, "25MiB" or "10MB", got {v!r}')
        return int(m[1]) * _SIZE_UNITS[m[2]]
    return v


def _duration(v: object) -> object:
    if isinstance(v, str):
        return parse_duration(v)
    if type(v) is int and v == 0:
        return timedelta(0)
    if isinstance(v, timedelta):
        return v
    raise ValueError(f'expected a duration string such as "90s", "15m", "4h" or "3d", got {v!r}')


def _positive(v: timedelta) -> timedelta:
    if v <= timedelta(0):
        raise ValueError("must be longer than 0")
    return v


_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)


def _email(v: object) -> object:
    if not isinstance(v, str):
        raise ValueError(f"expected an email address, got {v!r}")
    addr = v.strip().lower()
    if not _EMAIL.fullmatch(addr):
        raise ValueError(f"not an email address: {v!r} (write the bare address, no name)")
    return addr


def _desk_email(v: str) -> str:
    if "+" in v.partition("@")[0]:
        raise ValueError(f"{v!r}: '+' is reserved for reply addresses")
    return v


def _one_or_many(v: object) -> object:
    return [v] if isinstance(v, str) else v


def _name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
        raise ValueError(f"{v!r}: use letters, digits, '_', '.' or '-' (no spaces)")
    return v


def _nonempty(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


def _timezone(v: str) -> str:
    if v != "UTC":
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            hint = "use an IANA name like 'Europe/Madrid'"
            raise ValueError(f"unknown time zone {v!r} ({hint})") from None
    return v


def _host_port(v: str) -> str:
    split_host_port(v)
    return v.strip()


def _config_dir(info: ValidationInfo) -> Path:
    ctx = info.context
    if isinstance(ctx, Mapping) and ctx.get("config_dir") is not None:
        return Path(ctx["config_dir"])
    return Path.cwd()


def _resolve(p: Path, info: ValidationInfo) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else _config_dir(info) / p


def _is_file(p: Path) -> Path:
    if not p.is_file():
        raise ValueError(f"file not found: {p}")
    return p


def _fail(problems: list[tuple[Loc, str]], up: int = 0) -> PydanticCustomError:
    """An error carrying several problems; each loc is relative to the failing loc minus `up`."""
    summary = "; ".join(msg for _, msg in problems)
    return PydanticCustomError("maildesk", "{summary}", {"problems": problems, "up": up,
                                                        "summary": summary})


Email = Annotated[str, BeforeValidator(_email)]
DeskEmail = Annotated[str, BeforeValidator(_email), AfterValidator(_desk_email)]
Name = Annotated[str, AfterValidator(_name)]
Text = Annotated[str, AfterValidator(_nonempty)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_positive)]
ConfigPath = Annotated[Path, AfterValidator(_resolve)]
ExistingFile = Annotated[Path, AfterValidator(_resolve), AfterValidator(_is_file)]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
HostPort = Annotated[str, AfterValidator(_host_port)]
TimeZone = Annotated[str, AfterValidator(_timezone)]
StrList = Annotated[list[str], BeforeValidator(_one_or_many)]


def _zone(name: str) -> tzinfo:
    return ZoneInfo(name)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
