"""maildesk.sla, pure: which policy, the three clocks, pauses, reminders and breaches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from maildesk.config import SlaPolicy
from maildesk.sla import Facts, Kind, Target, due, events, policy_for, state
from tests.sla_desk import at


def policy(**kw: Any) -> SlaPolicy:
    base = {"name": "p", "first_response": "1h", "next_response": "2h", "resolution": "1d",
            "business_hours": "Mon-Fri 09:00-18:00", "timezone": "Europe/Madrid",
            "remind_before": "15m"}
    return SlaPolicy.model_validate({**base, **kw})


def facts(**kw: Any) -> Facts:
    base: dict[str, Any] = {"status": "open", "created_at": at("2026-11-30 10:00"),
                            "first_response_at": None, "next_response_from": None,
                            "next_response_at": None, "solved_at": None, "paused_since": None}
    return Facts(**{**base, **kw})


def test_the_first_matching_policy_applies() -> None:
    urgent = policy(name="urgent", match={"priority": ["urgent", "high"]})
    billing = policy(name="billing", match={"queue": ["billing"]})
    anything = policy(name="any")
    ps = [urgent, billing, anything]
    assert policy_for(ps, "billing", "urgent") is urgent
    assert policy_for(ps, "billing", "normal") is billing
    assert policy_for(ps, "general", "low") is anything
    assert policy_for([urgent, billing], "general", "low") is None


def test_an_open_ticket_has_its_due_times_and_reminders() -> None:
    d = due(facts(), policy())
    fr, res = d[Target.FIRST_RESPONSE], d[Target.RESOLUTION]
    assert (fr.due, fr.remind_at) == (at("2026-11-30 11:00"), at("2026-11-30 10:45"))
    assert res.due == at("2026-12-02 16:00")  # 24 business hours: 8 + 9 + 7
    assert d[Target.NEXT_RESPONSE].start is None and d[Target.NEXT_RESPONSE].due is None
    assert [(e.target, e.kind, e.at) for e in events(d, "open")] == [
        (Target.FIRST_RESPONSE, Kind.REMINDER, at("2026-11-30 10:45")),
        (Target.FIRST_RESPONSE, Kind.BREACH, at("2026-11-30 11:00")),
        (Target.RESOLUTION, Kind.REMINDER, at("2026-12-02 15:45")),
        (Target.RESOLUTION, Kind.BREACH, at("2026-12-02 16:00")),
    ]
    assert events(d, "solved") == [] and events(d, "closed") == []


def test_waiting_stops_the_unmet_clocks_and_a_met_one_keeps_its_due_time() -> None:
    answered = facts(status="pending", first_response_at=at("2026-11-30 10:20"),
                     paused_since=at("2026-11-30 10:20"))
    d = due(answered, policy())
    assert d[Target.FIRST_RESPONSE].due == at("2026-11-30 11:00")  # met at 10:20
    assert d[Target.RESOLUTION].due is None and d[Target.RESOLUTION].paused
    assert events(d, "pending") == []
    # answered while it waited (a rule set pending on arrival): still met, due unmoved
    early = facts(status="pending", paused_since=at("2026-11-30 10:00"),
                  first_response_at=at("2026-11-30 16:00"))
    assert due(early, policy())[Target.FIRST_RESPONSE].due == at("2026-11-30 17:00")


def test_the_next_response_clock_runs_from_the_customer_message() -> None:
    d = due(facts(first_response_at=at("2026-11-30 10:20"),
                  next_response_from=at("2026-11-30 17:00")), policy())
    nr = d[Target.NEXT_RESPONSE]
    assert (nr.start, nr.due, nr.remind_at) == (
        at("2026-11-30 17:00"), at("2026-12-01 10:00"), at("2026-12-01 09:45"))


def test_no_reminder_when_remind_before_is_not_shorter_than_the_target() -> None:
    d = due(facts(), policy(first_response="15m", remind_before="15m"))
    assert d[Target.FIRST_RESPONSE].remind_at is None
    assert due(facts(), policy(remind_before="0"))[Target.RESOLUTION].remind_at is None


def test_a_solved_ticket_that_reopens_resumes_with_the_time_it_had_left() -> None:
    reopened = facts(status="open", first_response_at=at("2026-11-30 10:30"),
                     pauses=((at("2026-11-30 10:30"), at("2026-12-01 10:30")),))
    # 30 minutes ran before the wait; 23h30 are left from Tuesday 10:30: 7h30 that day,
    # 9h on Wednesday, 7h on Thursday
    assert due(reopened, policy())[Target.RESOLUTION].due == at("2026-12-03 16:00")


def test_states() -> None:
    t = at("2026-11-30 11:00")
    assert state(t, t - timedelta(minutes=1), t) == "met"
    assert state(t, t + timedelta(minutes=1), t) == "breached"
    assert state(t, None, t) == "open" and state(t, None, t + timedelta(seconds=1)) == "breached"
    assert state(None, None, t) is None
