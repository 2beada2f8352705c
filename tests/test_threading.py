"""Threading (SPEC §2.2) through the real pipeline, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk import addresses
from maildesk.domain import EntryKind, InboxState, Status, ThreadRule
from maildesk.pipeline import Change
from maildesk.store import tickets as ticket_store
from maildesk.store.tables import TicketRow
from tests.helpers import SECRET, Desk, message, thread_index, write_config


@pytest.fixture
def desk(config_path: Path) -> Iterator[Desk]:
    d = Desk.open(config_path)
    yield d
    d.db.dispose()


def set_status(desk: Desk, ticket_id: int, status: Status) -> None:
    with desk.db.write() as s:
        row = s.get(TicketRow, ticket_id)
        assert row is not None
        row.status = status.value
        s.add(row)


def test_references_chain_stays_on_one_ticket(desk: Desk) -> None:
    first = desk.ingest(message(msgid="<a1@customer.example>"))
    second = desk.ingest(message(
        subject="Re: Printer on fire",
        msgid="<a2@customer.example>", in_reply_to="<a1@customer.example>",
        references=["<a1@customer.example>"], body="Still burning.\n\n> the printer is on fire.",
    ))
    third = desk.ingest(message(
        subject="RE: Printer on fire", msgid="<a3@customer.example>",
        in_reply_to="<a2@customer.example>",
        references=["<a1@customer.example>", "<a2@customer.example>"],
    ))
    assert first.ticket_id is not None
    assert second.ticket_id == third.ticket_id == first.ticket_id
    entries = desk.entries(first.ticket_id)
    assert [e.thread_rule for e in entries] == [
        ThreadRule.NEW_TICKET, ThreadRule.REFERENCES, ThreadRule.REFERENCES]
    assert "> the printer" not in entries[1].body and "Still burning." in entries[1].body
    assert desk.ticket(first.ticket_id).status is Status.OPEN


def test_outlook_reply_with_only_thread_index_and_re_subject(desk: Desk) -> None:
    root = bytes(range(22))
    first = desk.ingest(message(
        frm="Dana <dana@corp.example>", subject="VPN broken",
        headers={"Thread-Index": thread_index(root), "Thread-Topic": "VPN broken"},
    ))
    # A colleague answers from Outlook: no In-Reply-To, no References, another sender.
    reply = desk.ingest(message(
        frm="Eve <eve@corp.example>", subject="RE: VPN broken",
        headers={"Thread-Index": thread_index(root, children=1), "Thread-Topic": "VPN broken"},
    ))
    assert reply.ticket_id == first.ticket_id
    assert desk.entries(first.ticket_id or 0)[-1].thread_rule == ThreadRule.THREAD_INDEX


def test_subject_tag_joins_for_participant_but_not_for_stranger(desk: Desk) -> None:
    first = desk.ingest(message())
    tid = first.ticket_id
    assert tid is not None
    tag = addresses.subject_tag("MD", tid)
    mine = desk.ingest(message(subject=f"Re: {tag} Printer on fire", body="Any news?"))
    assert mine.ticket_id == tid
    assert desk.entries(tid)[-1].thread_rule == ThreadRule.SUBJECT_TAG
    stranger = desk.ingest(message(
        frm="Mallory <mallory@evil.example>", subject=f"{tag} give me the data"))
    assert stranger.ticket_id not in (None, tid)
    assert len(desk.entries(tid)) == 2
    assert desk.ticket(stranger.ticket_id or 0).requester == "mallory@evil.example"


def test_agent_with_tag_joins_but_unverified_agent_mail_is_a_note(desk: Desk) -> None:
    tid = desk.ingest(message()).ticket_id
    assert tid is not None
    forged = desk.ingest(message(
        frm="Alice <alice@agents.example.com>", subject=f"Re: [MD#{tid}] Printer on fire",
        body="#status closed\nDone.",
    ))
    assert forged.ticket_id == tid
    entry = desk.entries(tid)[-1]
    assert entry.kind is EntryKind.NOTE and entry.verified is False
    assert desk.ticket(tid).status is Status.NEW  # a note changes nothing


def test_agent_reply_to_their_own_reply_address_is_verified_and_sets_pending(
    desk: Desk,
) -> None:
    tid = desk.ingest(message()).ticket_id
    assert tid is not None
    own = addresses.agent_reply_address("support@example.com", SECRET, tid,
                                        "alice@agents.example.com")
    out = desk.ingest(
        message(frm="alice@agents.example.com", to=own, subject="Re: Printer on fire",
                body="Unplug it."),
        envelope_to=(own,),
    )
    assert out.ticket_id == tid
    entry = desk.entries(tid)[1]
    assert (entry.kind, entry.verified, entry.thread_rule) == (
        EntryKind.AGENT_REPLY, True, ThreadRule.TOKEN_ADDRESS)
    assert desk.ticket(tid).status is Status.PENDING


def test_agent_from_to_the_customers_reply_address_threads_but_is_a_note(desk: Desk) -> None:
    """The customer's reply address is in every ack: it proves nothing about who writes."""
    tid = desk.ingest(message()).ticket_id
    assert tid is not None
    reply_to = addresses.reply_address("support@example.com", SECRET, tid)
    out = desk.ingest(
        message(frm="alice@agents.example.com", to=reply_to, subject="Re: Printer on fire",
                body="Unplug it."),
        envelope_to=(reply_to,),
    )
    assert out.ticket_id == tid
    entry = desk.entries(tid)[-1]
    assert (entry.kind, entry.verified, entry.thread_rule) == (
        EntryKind.NOTE, False, ThreadRule.TOKEN_ADDRESS)
    assert desk.ticket(tid).status is Status.NEW


def test_wrong_token_does_not_thread(desk: Desk) -> None:
    tid = desk.ingest(message()).ticket_id
    assert tid is not None
    bad = f"support+{tid}-aaaaaaaa@example.com"
    out = desk.ingest(message(frm="zed@other.example", to=bad, subject="hello"),
                      envelope_to=(bad,))
    assert out.ticket_id != tid


def test_reply_to_closed_ticket_opens_new_linked_ticket(desk: Desk) -> None:
    first = desk.ingest(message(msgid="<c1@customer.example>"))
    tid = first.ticket_id
    assert tid is not None
    set_status(desk, tid, Status.CLOSED)
    again = desk.ingest(message(subject="Re: Printer on fire", in_reply_to="<c1@customer.example>",
                                references=["<c1@customer.example>"]))
    assert again.ticket_id not in (None, tid)
    new = desk.ticket(again.ticket_id or 0)
    assert new.linked == [tid] and desk.ticket(tid).linked == [new.id]
    assert desk.entries(new.id)[0].thread_rule == ThreadRule.REOPEN_CLOSED


def test_reply_to_solved_ticket_reopens_it(desk: Desk) -> None:
    tid = desk.ingest(message(msgid="<s1@customer.example>")).ticket_id
    assert tid is not None
    set_status(desk, tid, Status.SOLVED)
    out = desk.ingest(message(subject="Re: Printer on fire", in_reply_to="<s1@customer.example>"))
    assert out.ticket_id == tid and desk.ticket(tid).status is Status.OPEN


def test_same_message_twice_gives_one_entry(desk: Desk) -> None:
    raw = message(msgid="<dup@customer.example>")
    first = desk.ingest(raw)
    # The same message again, delivered by another route (extra trace headers).
    second = desk.ingest(b"Received: from relay2.example by mx.example; Sun, 1 Nov 2026\r\n" + raw)
    assert second.state is InboxState.DUPLICATE and second.ticket_id == first.ticket_id
    assert len(desk.entries(first.ticket_id or 0)) == 1


def test_message_without_message_id_is_deduplicated_by_content(desk: Desk) -> None:
    raw = message(msgid="")
    first, second = desk.ingest(raw), desk.ingest(raw)
    assert first.state is InboxState.PROCESSED and second.state is InboxState.DUPLICATE
    assert len(desk.tickets()) == 1


def test_reply_arriving_before_its_original_ends_on_one_ticket(desk: Desk) -> None:
    reply = desk.ingest(message(subject="Re: Refund", msgid="<r2@customer.example>",
                                in_reply_to="<r1@customer.example>",
                                references=["<r1@customer.example>"]))
    original = desk.ingest(message(subject="Refund", msgid="<r1@customer.example>"))
    assert original.ticket_id == reply.ticket_id
    assert len(desk.tickets()) == 1


def test_two_replies_to_an_unseen_message_belong_together(desk: Desk) -> None:
    one = desk.ingest(message(frm="x@customer.example", subject="Re: outage",
                              in_reply_to="<never-seen@lists.example>"))
    two = desk.ingest(message(frm="y@customer.example", subject="Re: outage",
                              in_reply_to="<never-seen@lists.example>"))
    assert one.ticket_id == two.ticket_id


def test_message_linking_two_untouched_tickets_merges_them(desk: Desk) -> None:
    # B replies to A, C replies to B; C arrives first, then A, then B links both.
    # C comes from a colleague, so the subject fallback cannot join A to it.
    c = desk.ingest(message(frm="dave@customer.example", subject="Re: Re: Laptop",
                            msgid="<m3@customer.example>",
                            in_reply_to="<m2@customer.example>"))
    a = desk.ingest(message(subject="Laptop", msgid="<m1@customer.example>"))
    assert a.ticket_id != c.ticket_id
    b = desk.ingest(message(subject="Re: Laptop", msgid="<m2@customer.example>",
                            in_reply_to="<m1@customer.example>"))
    assert b.ticket_id == c.ticket_id  # the older ticket survives
    assert [t.id for t in desk.tickets()] == [c.ticket_id]
    assert len(desk.entries(c.ticket_id or 0)) == 3


def test_ids_without_at_sign_are_ignored(desk: Desk) -> None:
    one = desk.ingest(message(frm="x@customer.example", subject="a", in_reply_to="<12345>"))
    two = desk.ingest(message(frm="y@customer.example", subject="b", in_reply_to="<12345>"))
    assert one.ticket_id != two.ticket_id


def test_subject_window_joins_same_sender_and_subject(desk: Desk) -> None:
    one = desk.ingest(message(subject="Printer jammed again"))
    two = desk.ingest(message(subject="AW: Printer jammed again"))
    other = desk.ingest(message(frm="someone@else.example", subject="Printer jammed again"))
    assert two.ticket_id == one.ticket_id and other.ticket_id != one.ticket_id
    assert desk.entries(one.ticket_id or 0)[-1].thread_rule == ThreadRule.SUBJECT_WINDOW


def test_subject_window_zero_turns_fallback_off(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/w.db",
                       '\n[threading]\nsubject_window = "0s"\n')
    desk = Desk.open(cfg)
    one = desk.ingest(message(subject="Printer jammed again"))
    two = desk.ingest(message(subject="Re: Printer jammed again"))
    assert one.ticket_id != two.ticket_id


def test_automatic_mail_without_thread_is_ignored_with_thread_joins(desk: Desk) -> None:
    tid = desk.ingest(message(msgid="<q1@customer.example>")).ticket_id
    lonely = desk.ingest(message(frm="robot@customer.example", subject="Out of office",
                                 headers={"Auto-Submitted": "auto-replied"}))
    assert lonely.state is InboxState.IGNORED and lonely.ticket_id is None
    assert "Auto-Submitted" in (lonely.reason or "")
    threaded = desk.ingest(message(subject="Out of office", in_reply_to="<q1@customer.example>",
                                   headers={"Auto-Submitted": "auto-replied"}))
    assert threaded.ticket_id == tid
    assert desk.entries(tid or 0)[-1].kind is EntryKind.SYSTEM
    assert desk.ticket(tid or 0).status is Status.NEW


def test_mail_to_a_queue_address_lands_in_that_queue(desk: Desk) -> None:
    out = desk.ingest(message(to="billing@example.com", subject="Invoice 7"),
                      envelope_to=("billing@example.com",))
    assert desk.ticket(out.ticket_id or 0).queue == "billing"
    other = desk.ingest(message(subject="Something else"))
    assert desk.ticket(other.ticket_id or 0).queue == "general"


def test_requester_reply_to_and_cc_participants(desk: Desk) -> None:
    out = desk.ingest(message(cc="Boss <boss@customer.example>, support@example.com",
                              headers={"Reply-To": "Team <team@customer.example>"}))
    t = desk.ticket(out.ticket_id or 0)
    assert t.requester == "carol@customer.example"
    assert t.reply_to == "team@customer.example"
    assert t.cc == ["boss@customer.example"]


HOSTILE_ATTACHMENT = b"""From: c@customer.example
To: support@example.com
Subject: files
Message-ID: <att@customer.example>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

see attached
--b1
Content-Type: application/pdf
Content-Disposition: attachment; filename*=utf-8''..%2F..%2Fetc%2Fpasswd%0D%0A.pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQgZGF0YQ==
--b1--
"""


def test_attachments_are_stored_with_safe_names(desk: Desk) -> None:
    out = desk.ingest(HOSTILE_ATTACHMENT)
    [entry] = desk.entries(out.ticket_id or 0)
    [(name, ctype, size)] = entry.attachments
    assert "/" not in name and "\n" not in name and "\r" not in name
    assert not name.startswith(".") and name.endswith(".pdf")
    assert (ctype, size) == ("application/pdf", len(b"%PDF-1.4 data"))


def test_merged_ticket_is_followed_by_later_mail(desk: Desk) -> None:
    c = desk.ingest(message(frm="dave@c.example", subject="Re: X", msgid="<x3@c.example>",
                            in_reply_to="<x2@c.example>"))
    a = desk.ingest(message(subject="X", msgid="<x1@c.example>"))
    desk.ingest(message(subject="Re: X", msgid="<x2@c.example>", in_reply_to="<x1@c.example>"))
    # Mail that names a message of the merged-away ticket lands on the survivor.
    later = desk.ingest(message(subject="Re: X", in_reply_to="<x1@c.example>"))
    survivor = min(a.ticket_id or 0, c.ticket_id or 0)
    assert later.ticket_id == survivor
    with desk.db.read() as s:
        gone = ticket_store.get_row(s, max(a.ticket_id or 0, c.ticket_id or 0))
    assert gone is not None and gone.id == survivor


class ExplodingReactor:
    """A reactor with a bug that only one message triggers."""

    def react(self, session: object, change: Change) -> list[str]:
        if change.mail.message_id == "boom@customer.example":
            raise RuntimeError("template exploded")
        return []


def test_one_message_that_raises_fails_alone_and_the_batch_is_stored(desk: Desk) -> None:
    from maildesk.domain import Source
    from maildesk.identity import content_hash, header_message_id
    from maildesk.pipeline import Pipeline
    from maildesk.store import inbox

    raws = [message(frm=f"u{n}@customer.example", subject=f"case {n}",
                    msgid=f"<{'boom' if n == 1 else f'ok{n}'}@customer.example>")
            for n in range(3)]
    ids = [inbox.add(desk.db, inbox.new_row(r, source=Source.SMTP, message_id=header_message_id(r),
                                            content_hash=content_hash(r))) for r in raws]
    pipeline = Pipeline(desk.settings, desk.db, [ExplodingReactor()])
    pipeline.rules_read_body = True  # read whole and answered in one go, as with a body rule
    outcomes = pipeline.process_batch(ids)
    assert [o.state for o in outcomes] == [
        InboxState.PROCESSED, InboxState.FAILED, InboxState.PROCESSED]
    assert "RuntimeError: template exploded" in (outcomes[1].reason or "")
    assert len(desk.tickets()) == 2  # nothing of the failed message was stored
    failed = inbox.get(desk.db, ids[1])
    assert failed is not None and failed.state is InboxState.FAILED and failed.ticket_id is None
