"""One frozen, typed Settings loaded from a TOML file (SPEC §4).

`load_settings(path)` returns `Settings` or raises `ConfigError` listing every problem as
"key.path: message". Unknown keys are rejected, durations are parsed once, relative paths are
resolved against the directory of the config file, and secrets may come from files or the
environment. Only pydantic and the standard library are imported here: `maildesk ingest --queue`
loads this module once per message. The `holidays` package is imported only when a policy names
a country.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from maildesk.domain import Priority, Status

DEFAULT_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
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


# ---------------------------------------------------------------- business hours

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class BusinessHours:
    """Opening windows per weekday (Monday = 0) as (start, end) minutes since midnight."""

    week: tuple[tuple[tuple[int, int], ...], ...]

    def windows(self, weekday: int) -> tuple[tuple[int, int], ...]:
        return self.week[weekday]

    def is_open(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.week[local.weekday()])


def _day(token: str, spec: str) -> int:
    t = token.strip().lower()
    if t in _DAY_NAMES:
        return _DAY_NAMES.index(t)
    if t in _FULL_DAYS:
        return _FULL_DAYS.index(t)
    raise ValueError(f"invalid business hours {spec!r}: unknown day {token.strip()!r}")


def _minutes(hh: str, mm: str, spec: str, *, end: bool) -> int:
    h, m = int(hh), int(mm)
    if m > 59 or h > 24 or (h == 24 and (m or not end)):
        raise ValueError(f"invalid business hours {spec!r}: bad time {hh}:{mm}")
    return h * 60 + m


def parse_business_hours(spec: str) -> BusinessHours:
    """"Mon-Fri 09:00-18:00", "Mon,Wed 08:00-12:00,13:00-17:00; Sat 10:00-14:00" or "24/7"."""
    if spec.strip().lower() in ("24/7", "always"):
        return BusinessHours((((0, 1440),),) * 7)
    hint = f'invalid business hours {spec!r}: expected e.g. "Mon-Fri 09:00-18:00"'
    week: list[list[tuple[int, int]]] = [[] for _ in range(7)]
    for clause in spec.split(";"):
        m = re.fullmatch(r"\s*([A-Za-z][A-Za-z,\s-]*?)\s+(\d[\d:,\s-]*?)\s*", clause)
        if not m:
            raise ValueError(hint)
        days: list[int] = []
        for item in m[1].split(","):
            first, _, last = item.partition("-")
            a = _day(first, spec)
            b = _day(last, spec) if last else a
            days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
        for window in m[2].split(","):
            t = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", window)
            if not t:
                raise ValueError(hint)
            start = _minutes(t[1], t[2], spec, end=False)
            end = _minutes(t[3], t[4], spec, end=True)
            if start >= end:
                raise ValueError(f"invalid business hours {spec!r}: {window.strip()} ends early")
            for d in days:
                week[d].append((start, end))
    merged: list[tuple[tuple[int, int], ...]] = []
    for spans in week:
        out: list[tuple[int, int]] = []
        for start, end in sorted(spans):
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        merged.append(tuple(out))
    return BusinessHours(tuple(merged))


def _business_hours(v: str) -> str:
    parse_business_hours(v)
    return v


def _holidays(v: object) -> object:
    if isinstance(v, str):
        m = re.fullmatch(r"([A-Z]{2,3})(?:-([A-Z0-9]{1,5}))?", v.strip().upper())
        if not m:
            raise ValueError(f"expected a country code such as 'ES' or 'ES-MD', got {v!r}")
        import holidays  # lazy: only configs that name a country pay for it

        supported: dict[str, list[str]] = holidays.list_supported_countries()
        if m[1] not in supported:
            raise ValueError(f"unknown holiday country code {m[1]!r}")
        if m[2] and m[2] not in supported[m[1]]:
            raise ValueError(f"country {m[1]!r} has no subdivision {m[2]!r}")
        return m[0]
    if not isinstance(v, list):
        raise ValueError(f"expected a country code or a list of dates, got {v!r}")
    out: list[date] = []
    bad: list[tuple[Loc, str]] = []
    for i, item in enumerate(v):
        try:
            if isinstance(item, date) and not isinstance(item, datetime):
                out.append(item)
            elif isinstance(item, str):
                out.append(date.fromisoformat(item.strip()))
            else:
                raise ValueError
        except ValueError:
            bad.append(((i,), f"not a date (YYYY-MM-DD): {item!r}"))
    if bad:
        raise _fail(bad)
    return out


# ---------------------------------------------------------------- tables


class Desk(_Model):
    name: Text = "maildesk"
    address: DeskEmail
    secret_file: ConfigPath | None = None
    secret: str = Field(default="", repr=False, validate_default=True)
    ticket_prefix: str = "MD"
    operators: list[Email] = []
    alert_after: Duration = timedelta(minutes=15)
    templates: ConfigPath = Field(default=DEFAULT_TEMPLATES, validate_default=True)
    timezone: TimeZone = "UTC"
    default_queue: Name = "general"
    message_id_domain: str | None = Field(default=None, validate_default=True)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str, info: ValidationInfo) -> str:
        env = os.environ.get("MAILDESK_SECRET", "").strip()
        if env:
            return env
        if "secret_file" not in info.data:  # invalid secret_file: reported on its own
            return v
        path: Path | None = info.data["secret_file"]
        if path is None:
            if not v.strip():
                raise ValueError("required: set secret, secret_file or MAILDESK_SECRET")
            return v
        if v:
            raise ValueError("set secret or secret_file, not both")
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise _fail([(("secret_file",), f"cannot read {path}: {e}")], up=1) from None
        if not text:
            raise _fail([(("secret_file",), f"{path} is empty")], up=1)
        return text

    @field_validator("ticket_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9]{1,16}", v):
            raise ValueError(f"{v!r}: letters and digits only")
        return v

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: Path) -> Path:
        if not v.is_dir():
            raise ValueError(f"not a directory: {v}")
        return v

    @field_validator("message_id_domain")
    @classmethod
    def _mid_domain(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            address: str | None = info.data.get("address")
            return address.rpartition("@")[2] if address else None
        if not _EMAIL.fullmatch(f"x@{v.lower()}"):
            raise ValueError(f"not a domain name: {v!r}")
        return v.lower()

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def tzinfo(self) -> tzinfo:
        return _zone(self.timezone)


class Database(_Model):
    url: str = Field(default="sqlite:///var/maildesk.db", validate_default=True)
    pool_size: Annotated[StrictInt, Field(ge=1)] = 5

    @field_validator("url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        url = os.environ.get("MAILDESK_DATABASE_URL", "").strip() or v.strip()
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix):]
        if url.startswith("postgresql+psycopg://") or url in ("sqlite://", "sqlite:///:memory:"):
            return url
        if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            path, sep, query = url[len("sqlite:///"):].partition("?")
            p = Path(path).expanduser()
            p = p if p.is_absolute() else _config_dir(info) / p
            return f"sqlite:///{p}{sep}{query}"
        raise ValueError(f"{url!r}: must start with sqlite:/// or postgresql+psycopg://")

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:")

    @property
    def sqlite_path(self) -> Path | None:
        """The database file (absolute) for SQLite on disk; None otherwise."""
        if not self.url.startswith("sqlite:///") or self.url == "sqlite:///:memory:":
            return None
        return Path(self.url[len("sqlite:///"):].partition("?")[0])

    @property
    def redacted_url(self) -> str:
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", self.url)


class Smtp(_Model):
    enabled: StrictBool = True
    listen: HostPort = "127.0.0.1:2525"
    hostname: str | None = None
    max_message_size: Annotated[StrictInt, BeforeValidator(_size), Field(ge=1)] = 26214400
    max_connections: Annotated[StrictInt, Field(ge=1)] = 100
    max_recipients: Annotated[StrictInt, Field(ge=1)] = 100
    tls_cert: ExistingFile | None = None
    tls_key: ExistingFile | None = Field(default=None, validate_default=True)
    require_tls: StrictBool = False
    auth_users_file: ExistingFile | None = None
    connection_timeout: PositiveDuration = timedelta(minutes=5)

    @field_validator("tls_key")
    @classmethod
    def _pair(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert" in info.data and (v is None) != (info.data["tls_cert"] is None):
            raise ValueError("set both tls_cert and tls_key, or neither")
        return v

    @field_validator("require_tls", "auth_users_file")
    @classmethod
    def _needs_tls(cls, v: object, info: ValidationInfo) -> object:
        if v and "tls_cert" in info.data and info.data["tls_cert"] is None:
            raise ValueError("needs tls_cert and tls_key (STARTTLS)")
        return v

    @field_validator("auth_users_file")
    @classmethod
    def _users(cls, v: Path | None) -> Path | None:
        if v is not None:
            read_auth_users(v)
        return v

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    def auth_users(self) -> dict[str, str]:
        """user -> password from auth_users_file (re-read on each call); {} without AUTH."""
        return read_auth_users(self.auth_users_file) if self.auth_users_file else {}


def read_auth_users(path: Path) -> dict[str, str]:
    """Parse "user:password" lines; blank lines and lines starting with '#' are skipped."""
    users: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"{path} line {n}: expected user:password")
        users[user.strip()] = password
    return users


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{what}: cannot read {path}: {e}"]) from None


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


class Outbound(_Model):
    transport: Literal["maildir", "smtp"] = "maildir"
    maildir: ConfigPath = Field(default=Path("var/outbox"), validate_default=True)
    host: Text = "localhost"
    port: Port = 25
    tls: Literal["none", "starttls", "implicit"] = "none"
    username: str | None = None
    password_file: ConfigPath | None = None
    password: str | None = Field(default=None, repr=False, validate_default=True)
    timeout: PositiveDuration = timedelta(seconds=30)
    max_retry: PositiveDuration = timedelta(days=2)

    @field_validator("password")
    @classmethod
    def _password(cls, v: str | None, info: ValidationInfo) -> str | None:
        d = info.data
        if d.get("transport") != "smtp" or "password_file" not in d:
            return v
        has_env = bool(os.environ.get("MAILDESK_SMTP_PASSWORD"))
        if v is not None and d["password_file"] is not None:
            raise ValueError("set password or password_file, not both")
        if d.get("username") and v is None and d["password_file"] is None and not has_env:
            raise ValueError("required with username: password, password_file or "
                             "MAILDESK_SMTP_PASSWORD")
        if d.get("username") and d.get("tls") == "none" and d.get("host") not in _LOOPBACK:
            why = "refusing to send credentials without TLS to a remote host"
            raise _fail([(("tls",), f"{why}: use starttls or implicit")], up=1)
        return v

    def resolved_password(self) -> str | None:
        """MAILDESK_SMTP_PASSWORD, else password_file (read now), else password."""
        env = os.environ.get("MAILDESK_SMTP_PASSWORD")
        if env:
            return env
        if self.password_file is not None:
            return _read_secret(self.password_file, "outbound.password_file")
        return self.password


class Mailbox(_Model):
    name: Name
    host: Text
    port: Port = 993
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    username: Text
    password_file: ConfigPath | None = None
    password: str | None = Field(default=None, repr=False, validate_default=True)
    folder: Text = "INBOX"
    processed_folder: str | None = None
    poll_interval: PositiveDuration = timedelta(seconds=60)
    idle: StrictBool = True
    batch_size: Annotated[StrictInt, Field(ge=1)] = 100

    @field_validator("password")
    @classmethod
    def _password(cls, v: str | None, info: ValidationInfo) -> str | None:
        d = info.data
        if "name" not in d or "password_file" not in d:
            return v
        if v is not None and d["password_file"] is not None:
            raise ValueError("set password or password_file, not both")
        env = mailbox_password_env(d["name"])
        if v is None and d["password_file"] is None and not os.environ.get(env):
            raise ValueError(f"required: set password, password_file or {env}")
        return v

    @field_validator("processed_folder")
    @classmethod
    def _processed(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and (not v.strip() or v == info.data.get("folder")):
            raise ValueError("must be a folder other than `folder` (omit it to mark \\Seen)")
        return v

    @property
    def password_env(self) -> str:
        return mailbox_password_env(self.name)

    def resolved_password(self) -> str:
        """The env variable, else password_file (read now, so rotation works), else password."""
        env = os.environ.get(self.password_env)
        if env:
            return env
        if self.password_file is not None:
            return _read_secret(self.password_file, f"mailbox {self.name!r} password_file")
        if self.password is None:  # only when the environment changed since loading
            raise ConfigError([f"mailbox {self.name!r}: no password"])
        return self.password


def mailbox_password_env(name: str) -> str:
    return "MAILDESK_MAILBOX_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_PASSWORD"


class Agent(_Model):
    email: Email
    name: str = ""


class Queue(_Model):
    name: Name
    address: DeskEmail | None = None
    agents: list[Email] = []  # empty: every agent


# ---------------------------------------------------------------- rules


class Match(_Model):
    """Holds when ANY listed value of any kind matches, case-insensitively: `contains` is a
    substring, `equals` the whole (stripped) value, `regex` a search anywhere."""

    contains: StrList | None = None
    equals: StrList | None = None
    regex: StrList | None = None
    _patterns: tuple[re.Pattern[str], ...] = PrivateAttr(default=())

    @field_validator("contains", "equals", "regex")
    @classmethod
    def _not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("empty list: give at least one value or omit the key")
        return v

    @field_validator("regex")
    @classmethod
    def _compile(cls, v: list[str] | None) -> list[str] | None:
        bad: list[tuple[Loc, str]] = []
        for i, pattern in enumerate(v or []):
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as e:
                bad.append(((i,), f"invalid regular expression {pattern!r}: {e}"))
        if bad:
            raise _fail(bad)
        return v

    @model_validator(mode="after")
    def _some(self) -> Match:
        if self.contains is None and self.equals is None and self.regex is None:
            raise ValueError("give at least one of contains, equals, regex")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._patterns = tuple(re.compile(p, re.IGNORECASE) for p in self.regex or ())

    def matches(self, value: str) -> bool:
        folded = value.casefold()
        return (
            any(c.casefold() in folded for c in self.contains or ())
            or any(e.strip().casefold() == folded.strip() for e in self.equals or ())
            or any(p.search(value) for p in self._patterns)
        )

    def matches_any(self, values: Iterable[str]) -> bool:
        return any(self.matches(v) for v in values)


class RuleWhen(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Match | None = Field(default=None, alias="from")
    to: Match | None = None
    cc: Match | None = None
    subject: Match | None = None
    body: Match | None = None
    header: dict[str, Match] = {}  # keys lowercased at load
    is_new_ticket: StrictBool | None = None
    business_hours: StrictBool | None = None

    @field_validator("header")
    @classmethod
    def _lower(cls, v: dict[str, Match]) -> dict[str, Match]:
        return {k.strip().lower(): m for k, m in v.items()}


def _assignee(v: object) -> object:
    return v if v in ("round_robin", "least_open") else _email(v)


class RuleThen(_Model):
    queue: str | None = None
    priority: Priority | None = None
    assignee: Annotated[str, BeforeValidator(_assignee)] | None = None
    tags: list[str] = []
    status: Status | None = None
    reply_template: Name | None = None
    notify: list[Email] = []
    drop: StrictBool = False
    stop: StrictBool = False

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        bad: list[tuple[Loc, str]] = [
            ((i,), f"{t!r}: no spaces") for i, t in enumerate(v) if not t or t.split() != [t]
        ]
        if bad:
            raise _fail(bad)
        return v


class Rule(_Model):
    name: Text
    when: RuleWhen = RuleWhen()
    then: RuleThen


# ---------------------------------------------------------------- SLA


class SlaMatch(_Model):
    priority: Annotated[list[Priority], BeforeValidator(_one_or_many)] = []
    queue: StrList = []


class SlaPolicy(_Model):
    name: Text
    match: SlaMatch = SlaMatch()
    first_response: PositiveDuration | None = None
    next_response: PositiveDuration | None = None
    resolution: PositiveDuration | None = None
    business_hours: Annotated[str, AfterValidator(_business_hours)] = "Mon-Fri 09:00-18:00"
    timezone: TimeZone = "UTC"
    holidays: Annotated[str | list[date], BeforeValidator(_holidays)] = []
    remind_before: Duration = timedelta(minutes=15)
    escalate_to: list[Email] = []
    auto_close_after: Duration = timedelta(days=7)
    _hours: BusinessHours = PrivateAttr()
    _calendar: Any = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._hours = parse_business_hours(self.business_hours)

    @property
    def hours(self) -> BusinessHours:
        return self._hours

    @property
    def tzinfo(self) -> tzinfo:
        return _zone(self.timezone)

    def is_holiday(self, day: date) -> bool:
        if isinstance(self.holidays, list):
            return day in self.holidays
        if self._calendar is None:
            import holidays

            country, _, subdiv = self.holidays.partition("-")
            self._calendar = holidays.country_holidays(country, subdiv=subdiv or None)
        return day in self._calendar


# ---------------------------------------------------------------- small tables


class Threading(_Model):
    subject_window: Duration = timedelta(days=7)  # 0 turns the subject fallback off


class Loop(_Model):
    max_auto_replies_per_hour: Annotated[StrictInt, Field(ge=0)] = 5
    ticket_from_auto: StrictBool = False


class Security(_Model):
    trusted_authserv_id: Annotated[list[str], BeforeValidator(_one_or_many)] = []

    @field_validator("trusted_authserv_id")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [s.strip().lower() for s in v]


class Metrics(_Model):
    listen: HostPort | None = None

    @property
    def host(self) -> str | None:
        return split_host_port(self.listen)[0] if self.listen else None

    @property
    def port(self) -> int | None:
        return split_host_port(self.listen)[1] if self.listen else None


# ---------------------------------------------------------------- settings

_TABLES = ("database", "smtp", "outbound", "threading", "loop", "security", "metrics")


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
    config_dir: Path = Field(default_factory=Path.cwd)  # not a TOML key

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

    @property
    def default_queue(self) -> str:
        return self.desk.default_queue

    def agent_addresses(self) -> frozenset[str]:
        return frozenset(a.email for a in self.agents)

    def desk_addresses(self) -> frozenset[str]:
        """desk.address and every queue address, lowercased."""
        return frozenset([self.desk.address, *(q.address for q in self.queues if q.address)])

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
