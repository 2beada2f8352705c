"""One frozen, typed Settings loaded from a TOML file (SPEC §4).

`load_settings(path)` returns `Settings` or raises `ConfigError` listing every problem as
"key.path: message". Unknown keys are rejected, durations are parsed once, relative paths are
resolved against the directory of the config file, and secrets may come from files or the
environment. Only pydantic and the standard library are imported here: `maildesk ingest --queue`
loads this module once per message. The `holidays` package is imported only when a policy names
a country.

Layout: `values` (scalar parsers, annotated types, ConfigError), `hours` (business hours and
holidays), `tables` (the single tables and [[mailboxes]], [[agents]], [[queues]]), `rules`
([[rules]] and [[sla]]), `settings` (Settings, error formatting, loading). Import from
`maildesk.config`; the submodules are an implementation detail.
"""

from __future__ import annotations

from maildesk.config.hours import BusinessHours, parse_business_hours
from maildesk.config.rules import Match, Rule, RuleThen, RuleWhen, SlaMatch, SlaPolicy
from maildesk.config.settings import (
    Settings,
    config_path_from,
    format_errors,
    load_settings,
    settings_from_dict,
)
from maildesk.config.tables import (
    DEFAULT_TEMPLATES,
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
    mailbox_password_env,
    read_auth_users,
)
from maildesk.config.values import (
    ConfigError,
    ConfigPath,
    DeskEmail,
    Duration,
    Email,
    ExistingFile,
    HostPort,
    Loc,
    Name,
    Port,
    PositiveDuration,
    StrList,
    Text,
    TimeZone,
    parse_duration,
    split_host_port,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "Agent",
    "BusinessHours",
    "ConfigError",
    "ConfigPath",
    "Database",
    "Desk",
    "DeskEmail",
    "Duration",
    "Email",
    "ExistingFile",
    "HostPort",
    "Loc",
    "Log",
    "Loop",
    "Mailbox",
    "Match",
    "Metrics",
    "Name",
    "Outbound",
    "Port",
    "PositiveDuration",
    "Queue",
    "Rule",
    "RuleThen",
    "RuleWhen",
    "Scheduler",
    "Security",
    "Settings",
    "SlaMatch",
    "SlaPolicy",
    "Smtp",
    "StrList",
    "Text",
    "Threading",
    "TimeZone",
    "config_path_from",
    "format_errors",
    "load_settings",
    "mailbox_password_env",
    "parse_business_hours",
    "parse_duration",
    "read_auth_users",
    "settings_from_dict",
    "split_host_port",
]
