"""Configuration: loading, every problem listed by key path, defaults, paths and secrets."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import typing
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from maildesk.config import (
    ConfigError,
    Settings,
    config_path_from,
    load_settings,
    parse_business_hours,
    parse_duration,
)
from maildesk.domain import Priority

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.toml"
DESK = """
[desk]
address = "support@example.com"
secret = "test-secret"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAILDESK_SECRET", "MAILDESK_DATABASE_URL", "MAILDESK_SMTP_PASSWORD",
                 "MAILDESK_CONFIG", "MAILDESK_MAILBOX_HOSTED_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "maildesk.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, text)
    return exc.value.problems


# ---------------------------------------------------------------- the example


def test_example_config_loads_with_laptop_defaults() -> None:
    s = load_settings(EXAMPLE)
    assert s.desk.address == "support@example.com"
    assert s.config_dir == REPO
    assert s.database.url == f"sqlite:///{REPO}/var/maildesk.db"
    assert s.database.sqlite_path == REPO / "var" / "maildesk.db"
    assert (s.smtp.host, s.smtp.port) == ("127.0.0.1", 2525)
    assert s.outbound.transport == "maildir"
    assert s.outbound.maildir == REPO / "var" / "outbox"
    assert s.mailboxes == [] and s.metrics.listen is None
    assert s.desk.templates.resolve() == REPO / "templates"  # through maildesk/templates


def _keys(model: type[BaseModel]) -> set[tuple[str, type[BaseModel]]]:
    out: set[tuple[str, type[BaseModel]]] = set()
    hints = typing.get_type_hints(model, include_extras=True)
    for name, field in model.model_fields.items():
        if name == "config_dir":
            continue
        out.add((field.alias or name, model))
        stack = [hints[name]]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                out |= _keys(t)
            stack.extend(typing.get_args(t))
    return out


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = sorted(f"{m.__name__}.{key}" for key, m in _keys(Settings)
                     if f"{key} =" not in text and not re.search(rf"\[\[?([a-z]+\.)?{key}\]", text))
    assert missing == []


# ---------------------------------------------------------------- problems by key path


def test_unknown_keys_are_rejected_with_their_path(tmp_path: Path) -> None:
    found = problems(tmp_path, DESK + """
        adress = "x"
        [mailbox]
        host = "x"
        [[rules]]
        name = "r"
        when.subjekt = { contains = "x" }
        when.subject = { contain = "x" }
        then.queue = "general"
    """)
    assert "desk.adress: unknown key" in found
    assert "mailbox: unknown key" in found
    assert "rules[0].when.subjekt: unknown key" in found
    assert "rules[0].when.subject.contain: unknown key" in found


def test_config_dir_is_not_a_toml_key(tmp_path: Path) -> None:
    assert problems(tmp_path, 'config_dir = "/tmp"\n' + DESK) == ["config_dir: unknown key"]


def test_wrong_types_name_the_key_and_the_value(tmp_path: Path) -> None:
    found = problems(tmp_path, DESK + """
        [smtp]
        max_connections = true
        enabled = "yes"
        [loop]
        max_auto_replies_per_hour = "5"
        [[mailboxes]]
        name = "hosted"
        host = "imap.example.com"
        port = "abc"
        username = "u"
        password = "p"
        tls = "ssl"
        [[rules]]
        name = "r"
        then.tags = "billing"
        then.priority = "hihg"
    """)
    assert "smtp.max_connections: expected an integer, got True" in found
    assert "smtp.enabled: expected true or false, got 'yes'" in found
    assert "loop.max_auto_replies_per_hour: expected an integer, got '5'" in found
    assert "mailboxes[0].port: expected an integer, got 'abc'" in found
    assert ("mailboxes[0].tls: must be one of 'implicit', 'starttls' or 'none', got 'ssl'"
            in found)
    assert "rules[0].then.tags: expected an array, got 'billing'" in found
    assert any(p.startswith("rules[0].then.priority: must be one of 'low'") for p in found)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        [desk]
        address = "Support <support@example.com>"
        ticket_prefix = "M-D"
        timezone = "Mars/Olympus"
        [database]
        url = "mysql://localhost/x"
        [smtp]
        listen = "localhost"
        [threading]
        subject_window = "a week"
        [metrics]
        listen = "9120"
    """)
    assert found == [
        "desk.address: not an email address: 'Support <support@example.com>' "
        "(write the bare address, no name)",
        "desk.secret: required: set secret, secret_file or MAILDESK_SECRET",
        "desk.ticket_prefix: 'M-D': letters and digits only",
        "desk.timezone: unknown time zone 'Mars/Olympus' (use an IANA name like 'Europe/Madrid')",
        "database.url: 'mysql://localhost/x': must start with sqlite:/// or postgresql+psycopg://",
        "smtp.listen: expected HOST:PORT or [IPV6]:PORT, got 'localhost'",
        "threading.subject_window: invalid duration 'a week': use a number and a unit s, m, h, "
        'd or w, e.g. "90s", "15m", "4h", "3d" or "1h30m"',
        "metrics.listen: expected HOST:PORT or [IPV6]:PORT, got '9120'",
    ]


def test_missing_desk_and_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path, "") == ["desk: required"]
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path / "nope.toml")
    missing = tmp_path / "nope.toml"
    assert exc.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "[desk\naddress = 1\n")
    assert found.startswith(f"{tmp_path / 'maildesk.toml'}: invalid TOML: ")
    assert "line 1" in found


def test_invalid_regex_in_a_rule(tmp_path: Path) -> None:
    found = problems(tmp_path, DESK + """
        [[rules]]
        name = "ok"
        then.tags = ["a"]
        [[rules]]
        name = "bad"
        when.body = { regex = ["fine", "(unclosed"] }
        when.header = { "X-Mailer" = { regex = "[z-a]" } }
        then.stop = true
    """)
    assert found[0].startswith(
        "rules[1].when.body.regex[1]: invalid regular expression '(unclosed': missing )"
    )
    assert found[1].startswith("rules[1].when.header.X-Mailer.regex[0]: invalid regular expr")
    assert len(found) == 2


def test_empty_match_and_bad_assignee(tmp_path: Path) -> None:
    found = problems(tmp_path, DESK + """
        [[rules]]
        name = "r"
        when.subject = {}
        when.to = { equals = [] }
        then.assignee = "somebody"
        then.tags = ["two words"]
    """)
    assert found == [
        "rules[0].when.to.equals: empty list: give at least one value or omit the key",
        "rules[0].when.subject: give at least one of contains, equals, regex",
        "rules[0].then.assignee: not an email address: 'somebody' "
        "(write the bare address, no name)",
        "rules[0].then.tags[0]: 'two words': no spaces",
    ]


def test_queue_agents_must_be_agents(tmp_path: Path) -> None:
    found = problems(tmp_path, DESK + """
        [[agents]]
        email = "alice@agents.example.com"
        [[agents]]
        email = "ALICE@agents.example.com"
        [[queues]]
        name = "billing"
        agents = ["alice@agents.example.com", "bob@agents.example.com"]
    """)
    assert found == ["agents[1].email: duplicate agent 'alice@agents.example.com'"]
    found = problems(tmp_path, DESK + """
        [[agents]]
        email = "alice@agents.example.com"
        [[queues]]
        name = "billing"
        agents = ["alice@agents.example.com", "bob@agents.example.com"]
        [[queues]]
        name = "billing"
        address = "support@example.com"
    """)
    assert found == [
        "queues[1].name: duplicate queue 'billing'",
        "queues[0].agents[1]: bob@agents.example.com is not listed in [[agents]]",
        "queues[1].address: is desk.address",
    ]


def test_references_from_rules_and_sla(tmp_path: Path) -> None:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "ack.txt").write_text("x")
    found = problems(tmp_path, """
        [desk]
        address = "support@example.com"
        secret = "s"
        templates = "tpl"
        [[agents]]
        email = "alice@agents.example.com"
        [[queues]]
        name = "billing"
        [[rules]]
        name = "ok"
        then = { queue = "general", reply_template = "ack", assignee = "least_open" }
        [[rules]]
        name = "bad"
        then = { queue = "sales", reply_template = "welcome", assignee = "bob@x.example" }
        [[sla]]
        name = "a"
        match = { queue = ["billing", "sales"], priority = "high" }
        [[sla]]
        name = "a"
    """)
    assert found == [
        "rules[1].then.queue: unknown queue 'sales'",
        "rules[1].then.assignee: bob@x.example is not listed in [[agents]]",
        f"rules[1].then.reply_template: no template 'welcome' in {tmp_path / 'tpl'}",
        "sla[1].name: duplicate SLA policy 'a'",
        "sla[0].match.queue[1]: unknown queue 'sales'",
    ]


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("3d", timedelta(days=3)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d 2h", timedelta(days=1, hours=2)),
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "15", "15 minutes", "1.5h", "-5m", "30m1h", "1h1h", "5ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_durations_in_toml(tmp_path: Path) -> None:
    s = load(tmp_path, DESK + 'alert_after = "1h30m"\n[threading]\nsubject_window = "0"\n')
    assert s.desk.alert_after == timedelta(minutes=90)
    assert s.threading.subject_window == timedelta(0)
    assert load(tmp_path, DESK + "[threading]\nsubject_window = 0\n").threading.subject_window \
        == timedelta(0)
    found = problems(tmp_path, DESK + """
        [outbound]
        timeout = 30
        max_retry = "0s"
    """)
    assert found == [
        'outbound.timeout: expected a duration string such as "90s", "15m", "4h" or "3d", got 30',
        "outbound.max_retry: must be longer than 0",
    ]


# ---------------------------------------------------------------- paths, secrets, env


def test_relative_paths_follow_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "maildesk"
    conf.mkdir(parents=True)
    (conf / "secret").write_text("  from-a-file\n")
    monkeypatch.chdir(tmp_path)
    s = load_settings(write(conf, """
        [desk]
        address = "support@example.com"
        secret_file = "secret"
        [outbound]
        maildir = "spool/out"
    """))
    assert s.config_dir == conf
    assert s.desk.secret == "from-a-file"
    assert s.database.url == f"sqlite:///{conf}/var/maildesk.db"
    assert s.outbound.maildir == conf / "spool" / "out"
    absolute = load(tmp_path, DESK + '[database]\nurl = "sqlite:////srv/md.db?timeout=5"\n')
    assert absolute.database.url == "sqlite:////srv/md.db?timeout=5"
    assert absolute.database.sqlite_path == Path("/srv/md.db")
    pg = load(tmp_path, DESK + '[database]\nurl = "postgresql://u:pw@db:5432/md"\n')
    assert pg.database.url == "postgresql+psycopg://u:pw@db:5432/md"
    assert pg.database.sqlite_path is None
    assert pg.database.redacted_url == "postgresql+psycopg://u:***@db:5432/md"


def test_secret_file_problems(tmp_path: Path) -> None:
    base = '[desk]\naddress = "support@example.com"\n'
    assert problems(tmp_path, base + 'secret_file = "missing"\n') == [
        f"desk.secret_file: cannot read {tmp_path / 'missing'}: "
        f"[Errno 2] No such file or directory: '{tmp_path / 'missing'}'"
    ]
    (tmp_path / "empty").write_text("\n")
    assert problems(tmp_path, base + 'secret_file = "empty"\n') == [
        f"desk.secret_file: {tmp_path / 'empty'} is empty"
    ]
    (tmp_path / "s").write_text("x")
    assert problems(tmp_path, base + 'secret = "a"\nsecret_file = "s"\n') == [
        "desk.secret: set secret or secret_file, not both"
    ]


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILDESK_SECRET", "from-env")
    monkeypatch.setenv("MAILDESK_DATABASE_URL", "postgresql://md@127.0.0.1/md")
    monkeypatch.setenv("MAILDESK_MAILBOX_HOSTED_PASSWORD", "imap-pw")
    monkeypatch.setenv("MAILDESK_SMTP_PASSWORD", "smtp-pw")
    s = load(tmp_path, """
        [desk]
        address = "support@example.com"
        secret = "in-toml"
        [outbound]
        transport = "smtp"
        host = "smtp.example.com"
        port = 587
        tls = "starttls"
        username = "desk"
        [[mailboxes]]
        name = "hosted"
        host = "imap.example.com"
        username = "support@example.com"
    """)
    assert s.desk.secret == "from-env"
    assert s.database.url == "postgresql+psycopg://md@127.0.0.1/md"
    assert s.mailboxes[0].password is None
    assert s.mailboxes[0].resolved_password() == "imap-pw"
    assert s.outbound.resolved_password() == "smtp-pw"
    assert "from-env" not in repr(s)


def test_passwords_come_from_somewhere(tmp_path: Path) -> None:
    (tmp_path / "imap").write_text("file-pw\n")
    s = load(tmp_path, DESK + """
        [[mailboxes]]
        name = "a"
        host = "imap.example.com"
        username = "u"
        password_file = "imap"
    """)
    assert s.mailboxes[0].resolved_password() == "file-pw"
    found = problems(tmp_path, DESK + """
        [outbound]
        transport = "smtp"
        host = "smtp.example.com"
        username = "desk"
        password = "pw"
        [[mailboxes]]
        name = "my-box"
        host = "imap.example.com"
        username = "u"
    """)
    assert found == [
        "outbound.tls: refusing to send credentials without TLS to a remote host: "
        "use starttls or implicit",
    ]
    # A mailbox password is asked for by what connects (serve, check-config), not at load.
    s = load(tmp_path, DESK + """
        [[mailboxes]]
        name = "my-box"
        host = "imap.example.com"
        username = "u"
        [[mailboxes]]
        name = "b"
        host = "imap.example.com"
        username = "u"
        password_file = "missing-file"
    """)
    assert s.secret_problems()[0] == (
        "mailboxes[0].password: required: set password, password_file or "
        "MAILDESK_MAILBOX_MY_BOX_PASSWORD")
    assert s.secret_problems()[1].startswith("mailboxes[1].password: mailbox 'b' "
                                             "password_file: cannot read ")


def test_config_path_from(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="MAILDESK_CONFIG"):
        config_path_from(None)
    monkeypatch.setenv("MAILDESK_CONFIG", "/etc/maildesk/maildesk.toml")
    assert config_path_from(None) == Path("/etc/maildesk/maildesk.toml")
    assert config_path_from("local.toml") == Path("local.toml")


# ---------------------------------------------------------------- values and helpers


def test_smtp_values(tmp_path: Path) -> None:
    s = load(tmp_path, DESK + '[smtp]\nlisten = "[::1]:25"\nmax_message_size = "10MiB"\n')
    assert (s.smtp.host, s.smtp.port, s.smtp.max_message_size) == ("::1", 25, 10 * 1024**2)
    assert s.smtp.auth_users() == {}
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "users").write_text("# comment\nalice:s3:cret\n\n")
    found = problems(tmp_path, DESK + """
        [smtp]
        tls_cert = "cert.pem"
        require_tls = true
        max_message_size = "lots"
    """)
    assert found == [
        'smtp.max_message_size: expected a size such as 26214400, "25MiB" or "10MB", '
        "got 'lots'",
        "smtp.tls_key: set both tls_cert and tls_key, or neither",
    ]
    s = load(tmp_path, DESK + """
        [smtp]
        tls_cert = "cert.pem"
        tls_key = "cert.pem"
        auth_users_file = "users"
    """)
    assert s.smtp.auth_users() == {"alice": "s3:cret"}
    assert problems(tmp_path, DESK + '[smtp]\nauth_users_file = "users"\n') == [
        "smtp.auth_users_file: needs tls_cert and tls_key (STARTTLS)"
    ]


def test_addresses_and_queues(tmp_path: Path) -> None:
    s = load(tmp_path, """
        [desk]
        address = "Support@Example.COM"
        secret = "s"
        [[agents]]
        email = "Alice@Agents.example.com"
        name = "Alice"
        [[agents]]
        email = "bob@agents.example.com"
        [[queues]]
        name = "billing"
        address = "Billing@example.com"
        agents = ["alice@agents.example.com"]
    """)
    assert s.desk.address == "support@example.com"
    assert s.desk.message_id_domain == "example.com"
    assert s.default_queue == "general"
    assert s.agent_addresses() == {"alice@agents.example.com", "bob@agents.example.com"}
    assert s.desk_addresses() == {"support@example.com", "billing@example.com"}
    assert s.queue_for_address("BILLING@example.com") == "billing"
    assert s.queue_for_address("billing+12-abc@example.com") == "billing"
    assert s.queue_for_address("support@example.com") is None
    assert s.is_desk_address("support+12-abc@example.com")
    assert not s.is_desk_address("alice@agents.example.com")
    assert s.queue_agents("billing") == ("alice@agents.example.com",)
    assert s.queue_agents("general") == ("alice@agents.example.com", "bob@agents.example.com")
    with pytest.raises(ValidationError):
        s.desk.address = "other@example.com"


def test_rule_match_semantics(tmp_path: Path) -> None:
    s = load(tmp_path, DESK + """
        [[rules]]
        name = "r"
        when.from = { contains = "@vip.example.com" }
        when.subject = { contains = ["invoice", "factura"], regex = '^\\s*urgent\\b' }
        when.header = { "X-Priority" = { equals = "1" } }
        then = { priority = "urgent", stop = true }
    """)
    when = s.rules[0].when
    assert when.from_ is not None and when.from_.matches("Boss@VIP.example.com")
    assert when.subject is not None
    assert when.subject.matches("Your FACTURA of May")
    assert when.subject.matches("URGENT: server down")
    assert not when.subject.matches("not urgent")
    assert when.subject.matches_any(["hello", "invoice 42"])
    assert when.header["x-priority"].matches(" 1 ")
    assert not when.header["x-priority"].matches("1 (Highest)")
    assert s.rules[0].then.priority is Priority.URGENT


def test_sla_policy(tmp_path: Path) -> None:
    s = load(tmp_path, DESK + """
        [[sla]]
        name = "high"
        match = { priority = ["high", "urgent"] }
        first_response = "1h"
        business_hours = "Mon-Thu 09:00-13:00,15:00-18:00; Fri 08:00-14:00"
        timezone = "Europe/Madrid"
        holidays = "es-md"
        [[sla]]
        name = "dates"
        holidays = [2025-12-25, "2026-01-01"]
    """)
    high, dates = s.sla
    assert high.first_response == timedelta(hours=1) and high.resolution is None
    assert high.holidays == "ES-MD"
    assert high.is_holiday(date(2025, 5, 2))  # Día de la Comunidad de Madrid
    assert not high.is_holiday(date(2025, 5, 5))
    assert high.hours.is_open(datetime(2025, 5, 2, 13, 59))  # a Friday
    assert not high.hours.is_open(datetime(2025, 5, 2, 14, 0))
    assert not high.hours.is_open(datetime(2025, 5, 3, 10, 0))
    assert dates.holidays == [date(2025, 12, 25), date(2026, 1, 1)]
    assert dates.is_holiday(date(2026, 1, 1))
    assert dates.hours.windows(0) == ((540, 1080),)
    assert dates.auto_close_after == timedelta(days=7)
    found = problems(tmp_path, DESK + """
        [[sla]]
        name = "x"
        holidays = "XX"
        business_hours = "Mon-Fri 18:00-09:00"
        [[sla]]
        name = "y"
        holidays = [2025-12-25, "soon"]
    """)
    assert found == [
        "sla[0].business_hours: invalid business hours 'Mon-Fri 18:00-09:00': "
        "18:00-09:00 ends early",
        "sla[0].holidays: unknown holiday country code 'XX'",
        "sla[1].holidays[1]: not a date (YYYY-MM-DD): 'soon'",
    ]


@pytest.mark.parametrize(
    ("spec", "monday", "sunday"),
    [
        ("24/7", ((0, 1440),), ((0, 1440),)),
        ("Sat-Mon 10:00-12:00", ((600, 720),), ((600, 720),)),
        ("mon,wed 9:00-12:00, 11:00-24:00", ((540, 1440),), ()),
    ],
)
def test_business_hours(
    spec: str, monday: tuple[tuple[int, int], ...], sunday: tuple[tuple[int, int], ...]
) -> None:
    hours = parse_business_hours(spec)
    assert hours.windows(0) == monday
    assert hours.windows(6) == sunday


@pytest.mark.parametrize("spec", ["", "Mon-Fri", "09:00-18:00", "Mon-Fri 9-18", "Mon 25:00-26:00"])
def test_business_hours_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid business hours"):
        parse_business_hours(spec)


def test_import_stays_light() -> None:
    code = (
        "import sys, maildesk.config\n"
        "heavy = {'holidays', 'sqlalchemy', 'sqlmodel', 'jinja2', 'aiosmtpd', 'imapclient'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"
