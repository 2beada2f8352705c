"""Which node runs the scheduled jobs (SPEC §5): one leader on PostgreSQL, taken over when it
goes; a tick on a node that does not lead does nothing."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from maildesk.scheduler import Scheduler
from maildesk.store.leader import SCHEDULER_LOCK_KEY, AdvisoryLeader, AlwaysLeader, leadership
from tests.sla_desk import SlaDesk, at
from tests.test_serve import wait_for


@pytest.mark.postgres
def test_one_leader_and_a_takeover_when_it_goes(pg_url: str) -> None:
    a, b = AdvisoryLeader(pg_url), AdvisoryLeader(pg_url)
    try:
        assert a.leads() and not b.leads()
        assert a.leads() and not b.leads()  # asking again changes nothing
        a.close()  # a node that stops gives the lock up
        assert b.leads() and not a.leads()
        # a leader whose session dies (the node was killed, or its connection cut): its
        # lock goes with it, the other node takes over at its next tick
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE"
                          " locktype = 'advisory' AND granted AND objid = %s AND database ="
                          " (SELECT oid FROM pg_database WHERE datname = current_database())",
                          (SCHEDULER_LOCK_KEY,))
        assert not b.leads()  # it notices the lost connection: no longer leading
        # the server frees the lock once the killed session has ended: a node that asks
        # each interval takes over
        wait_for("the takeover", a.leads)
        assert not b.leads()
    finally:
        a.close()
        b.close()


def test_sqlite_has_one_node_which_always_leads(tmp_path: Path) -> None:
    assert isinstance(leadership(f"sqlite:///{tmp_path}/x.db"), AlwaysLeader)


class Follower:
    def leads(self) -> bool:
        return False

    def close(self) -> None:
        pass


def test_a_tick_runs_the_jobs_only_while_this_node_leads(tmp_path: Path) -> None:
    sd = SlaDesk.open(tmp_path, f"sqlite:///{tmp_path}/m.db")
    try:
        t = sd.customer("2026-11-30 10:00")
        woken: list[bool] = []
        follower = Scheduler(sd.desk.settings, sd.desk.db, leader=Follower(),
                             after=lambda: woken.append(True))
        assert follower.tick(at("2026-11-30 11:01")).led is False
        assert sd.mail() == [] and woken == []
        leader = Scheduler(sd.desk.settings, sd.desk.db, after=lambda: woken.append(True))
        result = leader.tick(at("2026-11-30 11:01"))
        assert result.led and result.breaches == 1 and woken == [True]
        assert {m[0] for m in sd.mail()} == {t}
    finally:
        sd.close()
