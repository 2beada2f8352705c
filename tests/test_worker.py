"""The processing loop's scheduling (maildesk.worker): intake goes first, within bounds.

A real pipeline on a real SQLite database; `yield_to` stands in for the SMTP listener's
`busy()`, which tests/test_smtp.py and tests/test_serve.py exercise on a real socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk.domain import Source
from maildesk.identity import content_hash, header_message_id
from maildesk.pipeline import Outcome
from maildesk.store import inbox, outbox
from maildesk.worker import NEW_MAIL_QUIET, Worker
from tests.helpers import Desk, message, write_config


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    d = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/w.db"))
    yield d
    d.db.dispose()


def _queue(desk: Desk, n: int, worker: Worker) -> list[int]:
    """n committed messages, announced to the worker as intake does."""
    first = len(desk.tickets())
    raws = [message(msgid=f"<w{first + i}@customer.example>", subject=f"case {first + i}")
            for i in range(n)]
    ids = inbox.add_many(desk.db, [inbox.new_row(
        r, source=Source.SMTP, message_id=header_message_id(r), content_hash=content_hash(r))
        for r in raws])
    worker.wake(ids)
    return ids


def _run_once(worker: Worker) -> tuple[list[int], float]:
    """The inbox ids of one batch, and how long it took to come."""
    started = time.monotonic()
    outcomes: list[Outcome] = worker.run_once()
    assert all(o.state.value == "processed" for o in outcomes)
    return [o.inbox_id for o in outcomes], time.monotonic() - started


def test_idle_intake_means_a_normal_batch_at_once(desk: Desk) -> None:
    worker = Worker(desk.db, desk.pipeline, batch=2, catch_up=50, yield_to=lambda quiet: False)
    ids = _queue(desk, 5, worker)
    done, waited = _run_once(worker)
    assert done == ids[:2] and waited < 0.5  # `batch`, not `catch_up`, and no wait


def test_a_backlog_goes_in_big_batches_once_intake_is_quiet(desk: Desk) -> None:
    """After a burst, the queued messages are taken `backlog` at a time (fewer commits),
    and a single message after that in a normal batch again."""
    worker = Worker(desk.db, desk.pipeline, batch=2, backlog=4, yield_to=lambda quiet: False)
    ids = _queue(desk, 7, worker)
    assert _run_once(worker)[0] == ids[:2]  # nothing said there was a backlog yet
    assert _run_once(worker)[0] == ids[2:6]  # the last batch was full: a backlog
    assert _run_once(worker)[0] == ids[6:]
    assert _run_once(worker)[0] == []
    later = _queue(desk, 3, worker)
    assert _run_once(worker)[0] == later[:2]


def test_busy_intake_holds_batches_short_then_long_in_a_burst(desk: Desk) -> None:
    worker = Worker(desk.db, desk.pipeline, batch=2, catch_up=50, yield_to=lambda quiet: True,
                    short_defer=0.2, max_defer=0.8)
    ids = _queue(desk, 5, worker)
    done, waited = _run_once(worker)
    assert done == ids  # the wait ran out: a catch-up batch takes all of them
    assert 0.15 <= waited < 0.7  # held while intake was busy, for short_defer
    assert {t.id for t in desk.tickets()} == {1, 2, 3, 4, 5}
    # intake still busy without a pause: a burst, so the next batch waits max_defer
    more = _queue(desk, 2, worker)
    done, waited = _run_once(worker)
    assert done == more and 0.7 <= waited < 3


def test_a_batch_goes_as_soon_as_intake_falls_quiet(desk: Desk) -> None:
    busy = threading.Event()
    busy.set()
    worker = Worker(desk.db, desk.pipeline, batch=32, yield_to=lambda quiet: busy.is_set(),
                    max_defer=30, short_defer=30)
    ids = _queue(desk, 3, worker)
    threading.Timer(0.2, busy.clear).start()
    done, waited = _run_once(worker)
    assert done == ids and 0.15 <= waited < 5


def test_follow_ups_wait_for_a_longer_pause_and_give_way_to_new_mail(desk: Desk) -> None:
    """Intake pauses for a millisecond between two messages of one client: enough for new
    mail, not for follow-ups (ten times the work), which also step aside for new mail."""
    pausing = threading.Event()  # intake quiet long enough for follow-ups too
    worker = Worker(desk.db, desk.pipeline, short_defer=30, max_defer=30,
                    yield_to=lambda quiet: quiet > NEW_MAIL_QUIET and not pausing.is_set())
    first = _queue(desk, 2, worker)
    assert [o.inbox_id for o in worker.run_once()] == first  # new mail goes at once
    threading.Timer(0.2, lambda: _queue(desk, 1, worker)).start()
    started = time.monotonic()
    assert worker.follow_up_once() is None  # it waited, then gave way to the new message
    assert 0.15 <= time.monotonic() - started < 5
    assert len(worker.run_once()) == 1
    pausing.set()
    assert worker.follow_up_once() == 3  # a real pause: all three follow-ups
    assert len(outbox.list_items(desk.db)) == 3 * 3  # an ack and two agent notifications each
