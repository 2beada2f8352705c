"""What agents do to tickets by mail, beyond one reply (SPEC §2.4): `#merge`, `#requester`,
the first response and `report`, `explain` of agent mail, and reprocessing; on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk import addresses
from maildesk.cli import main
from maildesk.domain import EntryKind, Status
from maildesk.store.tables import TicketRow
from tests.agent_helpers import (
    ALICE,
    BOB,
    DKIM_PASS,
    answer,
    notification,
    open_desk,
    parsed,
    reply_mail,
    rows,
    text_of,
)
from tests.helpers import SECRET, Desk, message


@pytest.fixture
def desk(tmp_path: Path, db_url: str) -> Iterator[Desk]:
    d = open_desk(tmp_path, db_url)
    yield d
    d.db.dispose()


def ticket_of(desk: Desk, **kwargs: object) -> int:
    out = desk.ingest(message(**kwargs))  # type: ignore[arg-type]
    assert out.ticket_id is not None
    return out.ticket_id


def first_response(desk: Desk, tid: int) -> object:
    with desk.db.read() as s:
        row = s.get(TicketRow, tid)
        assert row is not None
        return row.first_response_at


def test_merge_moves_the_ticket_into_the_target_and_later_mail_follows(desk: Desk) -> None:
    target = ticket_of(desk, frm="carol@customer.example", subject="Printer",
                       msgid="<t1@customer.example>")
    source = ticket_of(desk, frm="carol.work@corp.example", subject="Printer again",
                       msgid="<s1@corp.example>", cc="erin@corp.example")
    note = notification(desk)  # the source's
    answer(desk, note, f"#merge {target}\n#priority high\nMerged with your first request.")
    with desk.db.read() as s:
        src = s.get(TicketRow, source)
        assert src is not None and src.merged_into == target and src.status == "closed"
    assert desk.ticket(source).id == target  # the source shows as its target
    tgt = desk.ticket(target)
    assert tgt.linked == [source] and tgt.priority.value == "high"  # later commands: target
    assert {"carol.work@corp.example", "erin@corp.example"} <= set(tgt.cc)
    bodies = [e.body for e in desk.entries(target)]
    assert "Hello,\nthe printer is on fire." in bodies and desk.entries(source) == []
    # the relay goes to everyone on the merged ticket
    [relay] = rows(desk, template="agent_reply")
    assert relay.ticket_id == target
    assert set(relay.recipients.split(",")) == {"carol@customer.example",
                                                "carol.work@corp.example", "erin@corp.example"}
    # the customer of the source answers the source's ack: it lands on the target
    [ack] = [r for r in rows(desk, template="ack") if r.recipients == "carol.work@corp.example"]
    reply_to = parsed(ack)["Reply-To"]
    out = desk.ingest(message(frm="carol.work@corp.example", to=reply_to, subject="Re: x",
                              body="Thanks!"), envelope_to=(reply_to,))
    assert out.ticket_id == target
    # and so does mail that only references a message of the source
    out = desk.ingest(message(frm="erin@corp.example", subject="Re: Printer again",
                              in_reply_to="<s1@corp.example>", body="Me too."))
    assert out.ticket_id == target


@pytest.mark.parametrize("into", ["closed", "unknown", "itself"])
def test_merge_into_a_closed_or_unknown_ticket_is_a_command_error(
    desk: Desk, into: str
) -> None:
    closed = ticket_of(desk, subject="Old", msgid="<o1@customer.example>")
    with desk.db.write() as s:
        row = s.get(TicketRow, closed)
        assert row is not None
        row.status = Status.CLOSED.value
        s.add(row)
    tid = ticket_of(desk, frm="dora@customer.example", subject="New",
                    msgid="<n1@customer.example>")
    target = {"closed": closed, "unknown": 999, "itself": tid}[into]
    answer(desk, notification(desk), f"#merge {target}\n#status solved\nMerged.")
    assert desk.ticket(tid).merged_into is None and desk.ticket(tid).status is Status.NEW
    [error] = rows(desk, template="command_error")
    why = {"closed": f"ticket #{closed} is closed", "unknown": "there is no ticket #999",
           "itself": "cannot merge into itself"}[into]
    assert f"#merge {target}" in text_of(parsed(error)) and why in text_of(parsed(error))
    assert rows(desk, template="agent_reply") == []


def test_an_agent_opens_a_ticket_for_a_customer_with_requester(desk: Desk) -> None:
    raw = message(frm=f"Alice <{ALICE}>", subject="Your replacement printer",
                  msgid="<req1@agents.example.com>",
                  headers={"Authentication-Results": DKIM_PASS},
                  body="#requester Carol <carol@customer.example>\n#priority high\n"
                       "Hi Carol,\n\nthe new printer ships today.\n")
    out = desk.ingest(raw)
    # `Carol <...>` is not a bare address: refused, nothing opened for anyone
    [error] = rows(desk, template="command_error")
    assert "#requester takes the customer's email address" in text_of(parsed(error))
    assert rows(desk, template="agent_reply") == []
    assert out.ticket_id is not None and desk.ticket(out.ticket_id).requester == ALICE

    internal = out.ticket_id
    out = desk.ingest(raw.replace(b"Carol <carol@customer.example>", b"carol@customer.example")
                      .replace(b"req1@", b"req2@")
                      .replace(b"To: support@example.com",
                               b"To: support@example.com\nCc: frank@customer.example, "
                               + BOB.encode()))
    assert out.ticket_id is not None and out.ticket_id != internal  # never joins by subject
    ticket = desk.ticket(out.ticket_id)
    assert (ticket.requester, ticket.priority.value, ticket.status) == (
        "carol@customer.example", "high", Status.PENDING)
    assert ticket.cc == ["frank@customer.example"]  # the agent's CCs, agents aside
    [relay] = rows(desk, template="agent_reply")
    msg = parsed(relay)
    assert msg["To"] == "carol@customer.example" and msg["Cc"] == "frank@customer.example"
    assert text_of(msg).startswith("Hi Carol,\n\nthe new printer ships today.\n")
    assert ALICE not in relay.raw.decode() and rows(desk, template="ack") == []
    # her answer to it lands on that ticket
    again = desk.ingest(message(subject="Re: " + msg["Subject"], in_reply_to=msg["Message-ID"],
                                body="Great, thanks."))
    assert again.ticket_id == out.ticket_id


def test_requester_needs_a_verified_agent(desk: Desk) -> None:
    out = desk.ingest(message(frm=ALICE, subject="For Carol",
                              body="#requester carol@customer.example\nHi Carol"))
    assert out.ticket_id is not None
    assert desk.ticket(out.ticket_id).requester == ALICE  # no DKIM: the agent's own note
    assert desk.entries(out.ticket_id)[0].kind is EntryKind.NOTE
    assert rows(desk, template="agent_reply") == []


def test_first_response_is_the_first_relay_only(
    desk: Desk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tid = ticket_of(desk, msgid="<fr1@customer.example>")
    customer_address = addresses.reply_address("support@example.com", SECRET, tid)
    desk.ingest(message(frm=ALICE, to=customer_address, subject="Re: x", body="forged"),
                envelope_to=(customer_address,))
    answer(desk, notification(desk), "#note\nLooking into it.")
    answer(desk, notification(desk), "#priority high")  # commands only: nothing to relay
    assert first_response(desk, tid) is None
    config = str(tmp_path / "maildesk.toml")

    def report() -> dict[str, object]:
        assert main(["report", "--config", config, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert isinstance(result, dict)
        total = result["total"]
        assert isinstance(total, dict)
        return total

    assert report()["first_response_seconds"] == {"count": 0, "median": None, "p90": None}
    answer(desk, notification(desk), "Unplug it.")
    stamped = first_response(desk, tid)
    assert stamped is not None
    answer(desk, notification(desk), "And plug it back in.")
    assert first_response(desk, tid) == stamped
    assert report()["first_response_seconds"]["count"] == 1  # type: ignore[index]


def test_explain_shows_what_agent_mail_would_do(
    desk: Desk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tid = ticket_of(desk)
    note = notification(desk)
    good = tmp_path / "good.eml"
    good.write_bytes(reply_mail(note, "#status solved\n#tags hw\nUnplug it.\n\n"
                                      "> the printer is on fire\n"))
    config = str(tmp_path / "maildesk.toml")
    assert main(["explain", "--config", config, "--json", str(good)]) == 0
    shown = json.loads(capsys.readouterr().out)
    agent = shown["agent"]
    assert agent["verified"] is True and "own reply address" in agent["why"]
    assert agent["handling"] == "reply"
    assert agent["commands"] == [{"line": "#status solved", "does": "status -> solved"},
                                 {"line": "#tags hw", "does": "tags +hw"}]
    assert agent["text"] == "Unplug it."
    assert any(a.startswith(f"queued agent_reply for ticket #{tid} to carol@customer.example")
               for a in shown["actions"])
    assert any("quoted history" in w for w in agent["withheld"])
    assert desk.ticket(tid).status is Status.NEW and rows(desk, template="agent_reply") == []

    forged = tmp_path / "forged.eml"
    forged.write_bytes(reply_mail(note, "#status solved\nBye.",
                                  to_address=addresses.reply_address("support@example.com",
                                                                     SECRET, tid)))
    assert main(["explain", "--config", config, str(forged)]) == 0
    out = capsys.readouterr().out
    assert "NOT verified" in out and "customer's reply address" in out
    assert "withheld from the customer: unverified" in out


def test_a_processed_agent_reply_is_not_processed_again_by_retry(
    desk: Desk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ticket_of(desk)
    out = answer(desk, notification(desk), "Unplug it.")
    config = str(tmp_path / "maildesk.toml")
    assert main(["inbox", "retry", str(out.inbox_id), "--config", config]) == 0
    assert "already processed" in capsys.readouterr().out
    assert len(rows(desk, template="agent_reply")) == 1
