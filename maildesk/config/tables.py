"""The single tables of the configuration: [desk], [database], [smtp], [outbound],
[[mailboxes]], [[agents]], [[queues]], [threading], [loop], [security], [metrics],
[scheduler], [workers] and [log]."""

from __future__ import annotations

import os
import re
from datetime import time, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictBool, StrictInt, ValidationInfo, field_validator

from maildesk.config.values import (
    _EMAIL,
    ConfigError,
    ConfigPath,
    DeskEmail,
    Duration,
    Email,
    ExistingFile,
    HostPort,
    Name,
    Port,
    PositiveDuration,
    Text,
    TimeZone,
    _config_dir,
    _fail,
    _Model,
    _one_or_many,
    _size,
    _zone,
    split_host_port,
)

# The top-level templates/ folder; maildesk/templates links to it, so a regular install
# (`pip install .`) carries a copy in the package and finds it at the same place.
DEFAULT_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


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
    # when all max_connections are taken, a new client closes the session idle longest
    # (no message sent; in a DATA, no bytes received), once that is longer than this
    # (Postfix's timeout under stress)
    busy_idle_timeout: PositiveDuration = timedelta(seconds=10)

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
        return v  # a missing one is `missing_password`: only what connects needs it

    @field_validator("processed_folder")
    @classmethod
    def _processed(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and (not v.strip() or v == info.data.get("folder")):
            raise ValueError("must be a folder other than `folder` (omit it to mark \\Seen)")
        return v

    @property
    def password_env(self) -> str:
        return mailbox_password_env(self.name)

    def missing_password(self) -> str | None:
        """Why this mailbox has no password to log in with (None: it has one, readable).
        Asked by what connects (`serve`) and by `check-config`, never when the config is
        loaded: `tickets list` and the other read-only commands need no mailbox secret."""
        try:
            self.resolved_password()
        except ConfigError as exc:
            if self.password_file is not None:
                return "; ".join(exc.problems)
            return f"required: set password, password_file or {self.password_env}"
        return None

    def resolved_password(self) -> str:
        """The env variable, else password_file (read now, so rotation works), else password."""
        env = os.environ.get(self.password_env)
        if env:
            return env
        if self.password_file is not None:
            return _read_secret(self.password_file, f"mailbox {self.name!r} password_file")
        if self.password is None:
            raise ConfigError([f"mailbox {self.name!r}: no password (set password, "
                               f"password_file or {self.password_env})"])
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


# ---------------------------------------------------------------- small tables


# Subjects that never join a ticket by subject alone (SPEC §2.2 rule 4), compared after
# Re:/Fwd: prefixes, the ticket tag and the punctuation around them are stripped, case
# ignored. English, German, Spanish, French, Italian, Portuguese, Dutch, Swedish,
# Polish, Turkish and Russian.
GENERIC_SUBJECTS = (
    "(no subject)", "no subject", "your mail", "your email", "your e-mail", "your message",
    "help", "question", "hello", "hi", "test", "urgent", "info", "information", "request",
    "(kein betreff)", "kein betreff", "ohne betreff", "ihre nachricht", "ihre e-mail",
    "ihre mail", "deine nachricht", "deine mail", "hilfe", "frage", "hallo", "dringend",
    "(sin asunto)", "sin asunto", "su correo", "tu correo", "su mensaje", "tu mensaje",
    "ayuda", "pregunta", "consulta", "hola", "prueba", "urgente",
    "(sans objet)", "sans objet", "votre message", "votre mail", "votre courriel",
    "ton message", "aide", "bonjour", "salut", "urgent",
    "(nessun oggetto)", "senza oggetto", "la tua mail", "la sua mail", "il tuo messaggio",
    "il suo messaggio", "aiuto", "domanda", "ciao", "salve", "prova",
    "(sem assunto)", "sem assunto", "seu email", "seu e-mail", "sua mensagem", "ajuda",
    "pergunta", "dúvida", "olá", "ola", "oi", "teste",
    "(geen onderwerp)", "geen onderwerp", "uw bericht", "je bericht", "uw e-mail", "uw mail",
    "hulp", "vraag",
    "(inget ämne)", "inget ämne", "ditt meddelande", "ditt mejl", "hjälp", "fråga", "hej",
    "brådskande",
    "(brak tematu)", "brak tematu", "twoja wiadomość", "pomoc", "pytanie", "cześć", "pilne",
    "(konu yok)", "konu yok", "mesajınız", "yardım", "soru", "merhaba", "acil",
    "(без темы)", "без темы", "ваше письмо", "помощь", "вопрос", "привет", "здравствуйте",
    "тест", "срочно",
)


class Threading(_Model):
    subject_window: Duration = timedelta(days=7)  # 0 turns the subject fallback off
    generic_subjects: list[str] = list(GENERIC_SUBJECTS)  # [] lets every subject join


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


class Scheduler(_Model):
    """The periodic jobs of the daemon (SLA reminders and breaches, auto-close, digest)."""

    interval: PositiveDuration = timedelta(seconds=30)
    digest_at: str = "08:00"  # local time in desk.timezone; "" turns the digest off

    @field_validator("digest_at")
    @classmethod
    def _digest_at(cls, v: str) -> str:
        if v.strip():
            _clock_time(v)
        return v.strip()

    @property
    def digest_time(self) -> time | None:
        return _clock_time(self.digest_at) if self.digest_at else None


def _parse_processes() -> int:
    return min(2, os.cpu_count() or 1)


class Workers(_Model):
    """Worker processes of the daemon's own, for CPU-bound steps (SPEC §2)."""

    # Processes that read messages whole (MIME tree, charsets, quotes, attachments) beside
    # the daemon's one core of Python; 0 reads them in the daemon itself. The default,
    # min(2, CPUs), is measured (bench/ingest.py --parse-processes 2 vs 0, paired, 2 CPUs):
    # fully processed 1.19x / 1.20x faster with 1 / 4 connections; more processes than
    # cores would only take turns with the daemon's own (ARCHITECTURE.md, "Speed").
    parse_processes: Annotated[StrictInt, Field(ge=0, le=64)] = Field(
        default_factory=_parse_processes)


def _clock_time(v: str) -> time:
    m = re.fullmatch(r"\s*([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?\s*", v)
    if not m:
        raise ValueError(f'expected a local time "HH:MM" (or "HH:MM:SS"), or "" for off; got {v!r}')
    return time(int(m[1]), int(m[2]), int(m[3] or 0))


def _log_level(v: object) -> object:
    env = os.environ.get("MAILDESK_LOG_LEVEL", "").strip()
    value = env or v
    return value.strip().lower() if isinstance(value, str) else value


class Log(_Model):
    """[log]: the daemon's log, one event per line on stderr (journald under systemd)."""

    format: Literal["text", "json"] = "text"
    # MAILDESK_LOG_LEVEL, when set, wins (as for a one-off debugging run)
    level: Annotated[Literal["debug", "info", "warning", "error"],
                     BeforeValidator(_log_level)] = Field(default="info", validate_default=True)
