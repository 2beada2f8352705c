"""Policy tables: [[rules]] (when / then) and [[sla]] policies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta, tzinfo
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    field_validator,
    model_validator,
)

from maildesk.config.hours import BusinessHours, _business_hours, _holidays, parse_business_hours
from maildesk.config.values import (
    Duration,
    Email,
    Loc,
    Name,
    PositiveDuration,
    StrList,
    Text,
    TimeZone,
    _email,
    _fail,
    _Model,
    _one_or_many,
    _zone,
)
from maildesk.domain import Priority, Status

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
