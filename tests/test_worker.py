"""The processing loop's scheduling (maildesk.worker): intake goes first, within bounds.

A real pipeline on a real SQLite database; `yield_to` stands in for the SMTP listener's
`busy()`, which tests/test_smtp.py and tests/test_serve.py exercise on a real socket."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from maildesk.domain import Source
from maildesk.identity import content_hash, header_message_id
from maildesk.store import inbox
from maildesk.worker import Worker
from tests.helpers import Desk, message, write_config


def _queue(desk: Desk, n: int) -> list[int]:
    raws = [message(msgid=f"<w{i}@customer.example>", subject=f"case {i}") for i in range(n)]
    return inbox.add_many(desk.db, [inbox.new_row(
        r, source=Source.SMTP, message_id=header_message_id(r), content_hash=content_hash(r))
        for r in raws])


def test_idle_intake_means_a_normal_batch_at_once(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/w.db"))
    ids = _queue(desk, 5)
    worker = Worker(desk.db, desk.pipeline, batch=2, catch_up=50, yield_to=lambda: False)
    worker.wake(ids)
    started = time.monotonic()
    outcomes = worker.run_once()
    assert time.monotonic() - started < 0.5
    assert [o.inbox_id for o in outcomes] == ids[:2]  # `batch`, not `catch_up`
    assert all(o.state.value == "processed" for o in outcomes)
    desk.db.dispose()


def test_busy_intake_holds_batches_short_then_long_in_a_burst(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/w.db"))
    ids = _queue(desk, 5)
    busy = threading.Event()
    busy.set()
    worker = Worker(desk.db, desk.pipeline, batch=2, catch_up=50, yield_to=busy.is_set,
                    short_defer=0.2, max_defer=0.8)
    worker.wake(ids)
    started = time.monotonic()
    outcomes = worker.run_once()
    waited = time.monotonic() - started
    assert 0.15 <= waited < 0.7  # held while intake was busy, first for short_defer
    assert [o.inbox_id for o in outcomes] == ids  # then a catch-up batch: all of them
    assert {t.id for t in desk.tickets()} == {1, 2, 3, 4, 5}
    # intake still busy without a pause: a burst, so the next batch may wait max_defer
    more = _queue(desk, 2)
    worker.wake(more)
    started = time.monotonic()
    assert [o.inbox_id for o in worker.run_once()] == more
    assert 0.7 <= time.monotonic() - started < 3
    desk.db.dispose()


def test_a_batch_goes_as_soon_as_intake_falls_quiet(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/w.db"))
    ids = _queue(desk, 3)
    busy = threading.Event()
    busy.set()
    worker = Worker(desk.db, desk.pipeline, batch=32, yield_to=busy.is_set, max_defer=30,
                    short_defer=30)
    worker.wake(ids)
    threading.Timer(0.2, busy.clear).start()
    started = time.monotonic()
    outcomes = worker.run_once()
    assert 0.15 <= time.monotonic() - started < 5
    assert [o.inbox_id for o in outcomes] == ids
    desk.db.dispose()


def test_a_few_waiting_messages_wait_only_short_defer_for_busy_intake(tmp_path: Path) -> None:
    desk = Desk.open(write_config(tmp_path, f"sqlite:///{tmp_path}/w.db"))
    ids = _queue(desk, 3)  # fewer than a batch: not a burst, latency matters more
    worker = Worker(desk.db, desk.pipeline, batch=32, yield_to=lambda: True, max_defer=30,
                    short_defer=0.2)
    worker.wake(ids)
    started = time.monotonic()
    outcomes = worker.run_once()
    assert 0.15 <= time.monotonic() - started < 5
    assert [o.inbox_id for o in outcomes] == ids
    desk.db.dispose()
