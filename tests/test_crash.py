"""Crashes (issue 13): the outbox across a sender that dies, and the real daemon killed
with SIGKILL under SMTP and IMAP load (tests/crash_run.py, the short form of
bench/crash.py), with both outbound transports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from maildesk.cli import main
from maildesk.intake import doorbell
from maildesk.outbound.sender import Sender
from maildesk.outbound.transports import MaildirTransport, make_transport
from maildesk.store import StoreUnavailable, outbox
from tests import crash_run
from tests.dovecot import Dovecot, serving
from tests.helpers import Desk, message, write_config
from tests.test_outbound import Smarthost, running_smarthost


@pytest.fixture
def smarthost() -> Iterator[tuple[Smarthost, int]]:
    yield from running_smarthost()


def smtp_desk(tmp_path: Path, port: int) -> Desk:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/c.db")
    cfg.write_text(cfg.read_text().replace(
        'transport = "maildir"', f'transport = "smtp"\nhost = "127.0.0.1"\nport = {port}'))
    return Desk.open(cfg)


def sender(desk: Desk, *, sole: bool) -> Sender:
    return Sender(desk.db, lambda: make_transport(desk.settings.outbound),
                  max_retry=desk.settings.outbound.max_retry, sole=lambda: sole)


def received_ids(handler: Smarthost) -> list[str]:
    return sorted(raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode().strip("<>")
                  for _, _, raw in handler.received)


def test_mail_the_smarthost_took_before_a_crash_is_not_sent_again(
    tmp_path: Path, smarthost: tuple[Smarthost, int]
) -> None:
    handler, port = smarthost
    desk = smtp_desk(tmp_path, port)
    try:
        desk.ingest(message(msgid="<crash-1@customer.example>"))  # an ack, two notifications
        t0 = datetime.now(UTC)
        first, *_ = outbox.claim_due(desk.db, now=t0)
        # a sender delivers the first row and dies before it records the smarthost's 250
        transport = make_transport(desk.settings.outbound)
        transport.send(first.item.id, first.item.envelope_from, first.item.recipients,
                       first.raw, before_end=lambda: outbox.mark_sending(desk.db, first.item.id))
        transport.close()
        [(_, _, raw)] = handler.received
        # another node (no `sole`) leaves the dead sender's rows alone until the lease ends
        assert sender(desk, sole=False).drain(t0).sent == 0
        # the restarted daemon, alone on its database, sends the rest at once, that one never
        assert sender(desk, sole=True).drain(t0).sent == 2
        assert received_ids(handler) == sorted(i.message_id for i in outbox.list_items(desk.db))
        [row] = [i for i in outbox.list_items(desk.db) if i.id == first.item.id]
        assert row.state == "sent" and row.last_error == outbox.PRESUMED_SENT
        assert {i.state for i in outbox.list_items(desk.db)} == {"sent"}
        # the operator, told so by the log and `outbox list`, may send it again
        config = str(tmp_path / "maildesk.toml")
        assert main(["outbox", "retry", str(row.id), "--config", config]) == 0
        assert sender(desk, sole=True).drain().sent == 1
        assert len(handler.received) == 4
        assert main(["outbox", "retry", str(row.id), "--config", config]) == 1  # sent now
    finally:
        desk.db.dispose()


def test_after_the_lease_another_node_counts_a_sending_row_as_sent(
    tmp_path: Path, smarthost: tuple[Smarthost, int]
) -> None:
    handler, port = smarthost
    desk = smtp_desk(tmp_path, port)
    try:
        desk.ingest(message(msgid="<crash-2@customer.example>"))
        t0 = datetime.now(UTC)
        claimed = outbox.claim_due(desk.db, now=t0)
        outbox.mark_sending(desk.db, claimed[0].item.id)  # died after the end of DATA
        assert sender(desk, sole=False).drain(t0 + outbox.LEASE + timedelta(seconds=1)).sent == 2
        assert len(handler.received) == 2
        states = {i.id: (i.state, i.last_error) for i in outbox.list_items(desk.db)}
        assert states[claimed[0].item.id] == ("sent", outbox.PRESUMED_SENT)
    finally:
        desk.db.dispose()


def test_no_record_before_the_end_of_data_means_nothing_is_delivered(
    tmp_path: Path, smarthost: tuple[Smarthost, int]
) -> None:
    handler, port = smarthost
    desk = smtp_desk(tmp_path, port)
    try:
        desk.ingest(message(msgid="<crash-3@customer.example>"))
        [c, *_] = outbox.claim_due(desk.db)
        transport = make_transport(desk.settings.outbound)

        def database_gone() -> None:
            raise StoreUnavailable("disk I/O error")

        with pytest.raises(StoreUnavailable):
            transport.send(c.item.id, c.item.envelope_from, c.item.recipients, c.raw,
                           before_end=database_gone)
        transport.close()
        assert handler.received == []  # the connection dropped before the final dot
        assert [i.state for i in outbox.list_items(desk.db) if i.id == c.item.id] == ["pending"]
        assert sender(desk, sole=True).drain().sent == 3
        assert len(handler.received) == 3
    finally:
        desk.db.dispose()


def test_a_restarted_daemon_takes_back_its_predecessors_claims_at_once(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/m.db"))
    try:
        desk.ingest(message(msgid="<crash-4@customer.example>"))
        t0 = datetime.now(UTC)
        first, *_ = outbox.claim_due(desk.db, now=t0)
        MaildirTransport(tmp_path / "outbox").send(
            first.item.id, first.item.envelope_from, first.item.recipients, first.raw)
        # killed before recording it: another node waits for the 5-minute lease...
        assert sender(desk, sole=False).drain(t0).sent == 0
        # ...the restarted daemon, alone on its database, does not, and finds the copy
        assert sender(desk, sole=True).drain(t0).sent == 3
        assert sorted(i.state for i in outbox.list_items(desk.db)) == ["sent"] * 3
        assert len(list((tmp_path / "outbox" / "new").iterdir())) == 3
    finally:
        desk.db.dispose()


# --- the daemon, killed -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    yield from serving("dovecot-crash-")


@pytest.mark.dovecot
@pytest.mark.parametrize("transport", ["maildir", "smarthost"])
def test_sigkill_under_smtp_and_imap_load_loses_and_doubles_nothing(
    transport: str, dovecot: Dovecot, tmp_path: Path
) -> None:
    load = crash_run.Load(smtp=120, imap=40, agent_every=5, kill_every=0.5, clients=3,
                          kills_after_load=3, min_kills=3, max_kills=3, settle_timeout=120)
    result = crash_run.run(tmp_path, transport, load, dovecot)
    report = "\n".join(crash_run.lines(result))
    assert result.failures() == [], report
    assert result.kills == 3, report
    assert (result.smtp_sent, result.imap_sent, result.agent_replies) == (120, 40, 6), report
    assert result.tickets == 40 and result.outbox_rows == 40 + 160 + 6, report


def test_only_a_daemon_holding_a_sqlite_files_doorbell_is_the_sole_sender(tmp_path: Path
                                                                          ) -> None:
    """On PostgreSQL the doorbell is per host, and nodes on other hosts send the same
    outbox: holding it must not make a node take their claims back at once."""
    async def held(url: str) -> tuple[bool, bool]:
        bell = doorbell.Doorbell(url, lambda ids: None)
        bell.start()
        try:
            return bell.sock is not None, bell.sole_sender
        finally:
            bell.stop()

    assert asyncio.run(held(f"sqlite:///{tmp_path}/sole.db")) == (True, True)
    assert asyncio.run(held("postgresql+psycopg://postgres@127.0.0.1/sole")) == (True, False)
