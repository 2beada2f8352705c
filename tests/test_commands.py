"""Agent commands (SPEC §2.4) as pure functions, table by table: commands.parse, the agent
reply addresses, identify's verdict, and the new words of a reply (agent_text)."""

from __future__ import annotations

import pytest

from maildesk import addresses
from maildesk.agent_text import MARKER, new_text
from maildesk.commands import (
    Assign,
    CommandError,
    Context,
    Merge,
    Note,
    Public,
    Requester,
    SetPriority,
    SetQueue,
    SetStatus,
    SetTags,
    parse,
    strip_commands,
)
from maildesk.domain import ParsedMail, Priority, Status
from maildesk.identify import identify
from maildesk.parse import parse_message

ALICE, BOB = "alice@agents.example.com", "bob@agents.example.com"
CTX = Context(me=ALICE, agents=frozenset({ALICE, BOB}),
              queues={"general": "general", "billing": "billing"})
DESK = "support@example.com"
DESKS = frozenset({DESK, "billing@example.com"})
SECRET = "s3cret-s3cret"


@pytest.mark.parametrize("text, commands, rest", [
    ("#status solved\nDone.", [SetStatus(Status.SOLVED)], "Done."),
    ("#STATUS Pending\n#Priority URGENT\n\nText", [SetStatus(Status.PENDING),
                                                   SetPriority(Priority.URGENT)], "Text"),
    ("\n\n  #assignee me  \nhi", [Assign(ALICE)], "hi"),
    ("#assignee <Bob@Agents.Example.com>\n", [Assign(BOB)], ""),
    ("#tags Billing vip -old\n\n#queue Billing\nx", [SetTags(("billing", "vip"), ("old",)),
                                                   SetQueue("billing")], "x"),
    ("#note\nInternal only.\n#status closed", [Note()], "Internal only.\n#status closed"),
    ("#public\n\nHello", [Public()], "Hello"),
    ("#merge 12\n", [Merge(12)], ""),
    ("#status: solved\n#priority:high", [SetStatus(Status.SOLVED), SetPriority(Priority.HIGH)],
     ""),
    ("#merge #12", [Merge(12)], ""),
    ("#merge MD#7", [Merge(7)], ""),
    ("#requester Carol <carol@customer.example>", [], ""),  # not an address alone: error
    ("#requester carol@customer.example\nHi Carol", [Requester("carol@customer.example")],
     "Hi Carol"),
    ("Hello\n#status solved", [], "Hello\n#status solved"),  # after text: just text
    ("# Heading\n#status solved", [], "# Heading\n#status solved"),
    ("#1 priority\n", [], "#1 priority"),
    ("", [], ""),
])
def test_parse_reads_the_command_block_at_the_top(
    text: str, commands: list[object], rest: str
) -> None:
    parsed = parse(text, CTX)
    assert [c for _, c in parsed.commands] == commands
    assert parsed.text == rest


@pytest.mark.parametrize("text, line, why", [
    ("#frobnicate now\n#status solved\nText", "#frobnicate now", "unknown command #frobnicate"),
    ("#status=solved\nText", "#status=solved", "not '=solved'"),  # an error, not text
    ("#statussolved", "#statussolved", "unknown command #statussolved"),
    ("#status done", "#status done", "#status takes one of open|pending|solved|closed"),
    ("#status", "#status", "#status takes one of"),
    ("#status new", "#status new", "not 'new'"),
    ("#priority meh", "#priority meh", "#priority takes one of low|normal|high|urgent"),
    ("#assignee carol@customer.example", "#assignee carol@customer.example",
     "is not an agent"),
    ("#assignee someone", "#assignee someone", "an agent's address or me"),
    ("#tags", "#tags", "at least one tag"),
    ("#tags a;b", "#tags a;b", "not a tag: a;b"),
    ("#queue sales", "#queue sales", "unknown queue 'sales'; the queues are billing, general"),
    ("#note please", "#note please", "takes no value"),
    ("#merge twelve", "#merge twelve", "the number of the ticket"),
    ("#requester nobody", "#requester nobody", "the customer's email address"),
    ("#requester bob@agents.example.com", "#requester bob@agents.example.com", "is an agent"),
    ("#status open\n#status solved", "#status solved", "contradicts an earlier line"),
    ("#note\n#public", "#public", "#note and #public contradict each other"),
])
def test_parse_names_each_bad_line_and_why(text: str, line: str, why: str) -> None:
    parsed = parse(text, CTX)
    assert [e.line for e in parsed.errors] == [line]
    assert why in parsed.errors[0].why


def test_a_bad_line_does_not_hide_the_good_ones_from_the_caller() -> None:
    """The caller refuses the whole mail: it sees both the error and what would have run."""
    parsed = parse("#status solved\n#frobnicate\n#priority high\nText", CTX)
    assert parsed.errors == (CommandError("#frobnicate", parsed.errors[0].why),)
    assert [c for _, c in parsed.commands] == [SetStatus(Status.SOLVED),
                                               SetPriority(Priority.HIGH)]
    assert parsed.text == "Text"


def test_repeating_a_command_with_the_same_value_is_fine() -> None:
    assert parse("#status solved\n#status SOLVED", CTX).errors == ()


def test_strip_commands_removes_only_the_top_block() -> None:
    assert strip_commands("#status solved\n\n#tags a\nHi\n#note") == "Hi\n#note"
    assert strip_commands("Hi") == "Hi"


# --- reply addresses -----------------------------------------------------------------


def test_each_agent_has_an_address_of_their_own_per_ticket() -> None:
    customer = addresses.reply_address(DESK, SECRET, 42)
    alice = addresses.agent_reply_address(DESK, SECRET, 42, ALICE)
    bob = addresses.agent_reply_address(DESK, SECRET, 42, BOB)
    alice_43 = addresses.agent_reply_address(DESK, SECRET, 43, ALICE)
    assert len({customer, alice, bob, alice_43}) == 4
    assert alice.startswith("support+42-") and alice.endswith("@example.com")
    assert addresses.agent_reply_address(DESK, SECRET, 42, "Alice@Agents.Example.com") == alice
    assert ALICE not in alice and "alice" not in alice


@pytest.mark.parametrize("address, target", [
    ("customer", addresses.ReplyTarget(42)),
    ("alice", addresses.ReplyTarget(42, ALICE)),
    ("bob", addresses.ReplyTarget(42, BOB)),
    ("alice-token-on-43", None),  # a token of another ticket
    ("other-secret", None),
    ("other-domain", None),
    ("plain", None),
])
def test_reply_target_tells_customer_and_agent_addresses_apart(
    address: str, target: addresses.ReplyTarget | None
) -> None:
    alice_token = addresses.agent_token(SECRET, 42, ALICE)
    made = {
        "customer": addresses.reply_address(DESK, SECRET, 42),
        "alice": addresses.agent_reply_address(DESK, SECRET, 42, ALICE).upper(),
        "bob": addresses.agent_reply_address(DESK, SECRET, 42, BOB),
        "alice-token-on-43": f"support+43-{alice_token}@example.com",
        "other-secret": addresses.agent_reply_address(DESK, "another", 42, ALICE),
        "other-domain": addresses.agent_reply_address("support@other.example", SECRET, 42,
                                                      ALICE),
        "plain": DESK,
    }[address]
    assert addresses.reply_target(made, DESKS, SECRET, [ALICE, BOB]) == target
    for likely in (ALICE, BOB):  # trying the sender's token first changes no answer
        assert addresses.reply_target(made, DESKS, SECRET, [ALICE, BOB], likely=likely) == target
    # the customer's address still threads as before; an agent's is not a customer's
    assert (addresses.ticket_from_reply_address(made, DESKS, SECRET) == 42) == (
        address == "customer")


# --- identify: verified only by the agent's own address or trusted DKIM ---------------


def mail(frm: str, auth: str | None = None) -> ParsedMail:
    return ParsedMail(
        message_id="m@x", in_reply_to=(), references=(), thread_index=None, subject="Re: x",
        from_addr=frm, from_name="", reply_to=(), to=(), cc=(), date=None,
        headers={"authentication-results": auth} if auth else {}, text="", html=None,
        display_body="")


@pytest.mark.parametrize("frm, to, auth, verified, why", [
    (ALICE, "alice-42", None, True, "their own reply address of ticket #42"),
    (ALICE, "customer-42", None, False, "customer's reply address of ticket #42"),
    (ALICE, "bob-42", None, False, "another agent's reply address"),
    (BOB, "alice-42", None, False, "another agent's reply address"),
    (ALICE, "desk", None, False, "not sent to their own reply address"),
    (ALICE, "desk", "mx.example.com; dkim=pass header.d=agents.example.com", True, "DKIM pass"),
    (ALICE, "desk", "evil.example; dkim=pass header.d=agents.example.com", False, "no trusted"),
    ("carol@customer.example", "alice-42", None, False, "not an agent address"),
])
def test_identify_verifies_only_the_agents_own_address_or_trusted_dkim(
    frm: str, to: str, auth: str | None, verified: bool, why: str
) -> None:
    recipient = {
        "alice-42": addresses.agent_reply_address(DESK, SECRET, 42, ALICE),
        "bob-42": addresses.agent_reply_address(DESK, SECRET, 42, BOB),
        "customer-42": addresses.reply_address(DESK, SECRET, 42),
        "desk": DESK,
    }[to]
    sender = identify(mail(frm, auth), agents=frozenset({ALICE, BOB}), recipients=[recipient],
                      desk_addresses=DESKS, secret=SECRET,
                      trusted_authserv_ids=["mx.example.com"],
                      auth_results=[auth] if auth else [])
    assert sender.verified is verified
    assert why in sender.why


# --- the new words of a reply -------------------------------------------------------


QUOTED_NOTIFICATION = (f"> {MARKER}\n> \n> New ticket [MD#1] from Carol <carol@customer.example>"
                       "\n> the printer is on fire.\n")


@pytest.mark.parametrize("text, expected", [
    # the sign-off stays, the quoted notification below it goes
    ("#status solved\n\nUnplug it.\n\nBest regards,\nAlice\n\nOn Mon, Test Desk "
     f"<support@example.com> wrote:\n{QUOTED_NOTIFICATION}", "Unplug it.\n\nBest regards,\nAlice"),
    # a "-- " signature block stays out, the sign-off above it stays in
    ("Unplug it.\n\nThanks,\nAlice\n-- \nAlice Agent\nalice@agents.example.com\n",
     "Unplug it.\n\nThanks,\nAlice"),
    # a parser that missed the quote: cut at the notification's marker and its attribution
    (f"Unplug it.\n\nFrom: Test Desk <support@example.com>\nSent: Monday\n\n{MARKER}\nNew",
     "Unplug it."),
    # a line naming the agent's address is a quote header: cut there
    ("Unplug it.\n\nAlice <alice@agents.example.com> schrieb am Montag:\nHallo", "Unplug it."),
    ("Sent from my phone", "Sent from my phone"),
])
def test_new_text_keeps_the_sign_off_and_drops_quotes_notification_and_address(
    text: str, expected: str
) -> None:
    mail = parse_message(f"From: {ALICE}\nTo: support@example.com\nSubject: Re: x\n\n{text}"
                         .encode())
    assert new_text(mail.display_body, private=[ALICE]) == expected
