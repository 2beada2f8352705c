"""Several nodes on one PostgreSQL (SPEC §5): three real `maildesk serve` processes, each
with its SMTP port and metrics port, on one scratch database and one Maildir outbox.

Mail sent to all three lands on the right tickets once (the replies of one conversation go
to different nodes), and when the node that runs the scheduled jobs is killed (SIGKILL:
no goodbye to PostgreSQL), another one takes the jobs over and sends every SLA reminder
and breach, none twice."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maildesk import parse_pool
from maildesk.domain import Source
from maildesk.identity import content_hash, header_message_id
from maildesk.scheduler import LEADER_POLL, Scheduler
from maildesk.store import deferred, inbox, outbox
from maildesk.store.leader import AdvisoryLeader
from tests.helpers import Desk, write_config
from tests.sla_desk import SlaDesk
from tests.test_serve import Daemon, free_port, message, wait_for

pytestmark = pytest.mark.postgres

ALICE, LEAD = "alice@agents.example.com", "lead@agents.example.com"
CONVERSATIONS = 12
REMIND_AFTER = 8  # seconds from a ticket's creation to its reminder; the breach 6 s later
NODE = """
[[rules]]
name = "all to alice"
[rules.then]
assignee = "alice@agents.example.com"

[[sla]]
name = "fast"
first_response = "{due}s"
remind_before = "6s"
business_hours = "Mon-Sun 00:00-24:00"
escalate_to = ["lead@agents.example.com"]

[scheduler]
interval = "1s"
digest_at = ""

[metrics]
listen = "127.0.0.1:{metrics}"
"""


class Node(Daemon):
    """A `maildesk serve` of the cluster: the shared database and outbox, its own ports."""

    def __init__(self, folder: Path, pg_url: str, maildir: Path) -> None:
        self.metrics = free_port()
        super().__init__(folder, NODE.format(due=REMIND_AFTER + 6, metrics=self.metrics))
        self.config.write_text(self.config.read_text()
                               .replace(f"sqlite:///{folder}/maildesk.db", pg_url)
                               .replace(str(folder / "outbox"), str(maildir)))
        self.maildir = maildir / "new"

    def leads(self) -> bool:
        """What the node's metrics say: does it run the scheduled jobs?"""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            return "maildesk_scheduler_leader 1.0" in r.read().decode()


def conversation(c: int) -> list[bytes]:
    """A customer's first message and two replies, each naming what came before."""
    frm, subject = f"Customer {c} <cust{c}@customer.example>", f"Order {c} has not arrived"
    ids = [f"<c{c}-{k}@customer.example>" for k in range(3)]
    return [message(frm=frm, subject=("Re: " if k else "") + subject, msgid=ids[k],
                    in_reply_to=ids[k - 1] if k else None, references=ids[:k] or None,
                    body=f"Message {k} about order {c}.\n") for k in range(3)]


def send_all(node: Node, mail: list[bytes]) -> list[int]:
    return [node.send(raw, mail_from="customer@customer.example")[0] for raw in mail]


def test_three_nodes_share_the_mail_and_the_jobs_survive_the_leader(
    tmp_path: Path, pg_url: str
) -> None:
    maildir = tmp_path / "outbox"
    nodes = [Node(tmp_path / f"node{n}", pg_url, maildir) for n in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:  # started together, on an empty database
            list(pool.map(lambda n: n.start(), nodes))
        desk = Desk.open(nodes[0].config)
        mail = [conversation(c) for c in range(CONVERSATIONS)]
        # Round k sends every conversation's message k at once, over the three nodes: the
        # first message of conversation c to node c % 3, its replies to the two others.
        # An MTA that retries also hands conversation 0's first message to a second node.
        for k in range(3):
            todo: dict[int, list[bytes]] = {n: [] for n in range(3)}
            for c in range(CONVERSATIONS):
                todo[(c + k) % 3].append(mail[c][k])
            if k == 0:
                todo[1].append(mail[0][0])
            with ThreadPoolExecutor(3) as pool:
                codes = [code for sent in pool.map(send_all, nodes, todo.values())
                         for code in sent]
            assert codes == [250] * sum(map(len, todo.values()))

        def settled() -> bool:
            items = inbox.list_items(desk.db, limit=1000)
            return (len(items) == 3 * CONVERSATIONS + 1
                    and all(i.state.value != "queued" for i in items)
                    and deferred.count(desk.db) == 0
                    and all(o.state == "sent" for o in outbox.list_items(desk.db)))
        wait_for("every message processed and its mail sent", settled, timeout=30)

        # each conversation is one ticket with its three messages, each stored once
        items = {i.message_id: i for i in inbox.list_items(desk.db, limit=1000)
                 if i.state.value == "processed"}
        states = Counter(i.state.value for i in inbox.list_items(desk.db, limit=1000))
        assert states == {"processed": 3 * CONVERSATIONS, "duplicate": 1}, states
        tickets = {c: {items[f"c{c}-{k}@customer.example"].ticket_id for k in range(3)}
                   for c in range(CONVERSATIONS)}
        assert all(len(t) == 1 for t in tickets.values()), tickets
        assert len(desk.tickets()) == CONVERSATIONS
        for c, (ticket,) in tickets.items():
            assert ticket is not None
            entries = desk.entries(ticket)
            assert sorted(e.message_id for e in entries) == [
                f"c{c}-{k}@customer.example" for k in range(3)], (c, entries)
            [ack] = nodes[0].mails_to(f"cust{c}@customer.example")  # one ack, not one a node
            assert f"[MD#{ticket}]" in ack["Subject"]

        # kill -9 the leader (between sends: mail it had claimed would wait out its lease):
        # another node leads within 30 s and sends the reminders and breaches due after the
        # kill (all, unless this machine took REMIND_AFTER to get here), none twice
        [leader] = wait_for("one leader", lambda: [n for n in nodes if n.leads()] or None)
        wait_for("no mail in flight", settled)
        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        survivors = [n for n in nodes if n is not leader]
        [heir] = wait_for("a new leader", lambda: [n for n in survivors if n.leads()] or None,
                          timeout=30)
        assert time.monotonic() - killed < 30
        subjects = {c: re.compile(rf"\[MD#{t}\]") for c, (t,) in tickets.items()}

        def sla_mail(to: str, what: str) -> Counter[int]:
            return Counter(c for m in heir.mails_to(to) if what in m["Subject"]
                           for c, tag in subjects.items() if tag.search(m["Subject"]))
        wait_for("every breach", lambda: len(sla_mail(LEAD, "SLA breached")) == CONVERSATIONS,
                 timeout=REMIND_AFTER + 6 + 30)
        time.sleep(1.5)  # a second scanner would have ticked by now: nothing more comes
        everyone = dict.fromkeys(range(CONVERSATIONS), 1)
        assert sla_mail(ALICE, "Due soon") == everyone
        assert sla_mail(ALICE, "SLA breached") == everyone
        assert sla_mail(LEAD, "SLA breached") == everyone
        desk.db.dispose()
        for n in survivors:
            assert n.stop() == 0
    finally:
        for n in nodes:
            n.kill()


def test_each_follow_up_is_read_whole_by_one_node(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes' pipelines look for follow-ups at once: each message is parsed whole by
    one of them (not by both, one in vain), and its mail is queued once."""
    config = write_config(tmp_path, pg_url)
    a, b = Desk.open(config), Desk.open(config)
    raws = [message(frm=f"cust{k}@customer.example", subject=f"Order {k} is late",
                    msgid=f"<f{k}@customer.example>") for k in range(32)]
    ids = inbox.add_many(a.db, [inbox.new_row(
        r, source=Source.SMTP, message_id=header_message_id(r), content_hash=content_hash(r),
        envelope_to=("support@example.com",)) for r in raws])
    a.pipeline.process_batch(ids)  # stored from the headers: 32 follow-ups wait
    assert deferred.count(a.db) == 32
    parsed: Counter[str | None] = Counter()
    real = parse_pool.parse_message

    def parse_message(raw: bytes):  # type: ignore[no-untyped-def]
        parsed[header_message_id(raw)] += 1
        return real(raw)

    # follow-ups are read whole by the pipeline's parser (in-process here: parse_pool)
    monkeypatch.setattr(parse_pool, "parse_message", parse_message)

    def node(desk: Desk) -> None:
        while deferred.count(desk.db):
            desk.pipeline.follow_up(limit=8)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(node, [a, b]))
    assert parsed == {f"f{k}@customer.example": 1 for k in range(32)}
    acks = Counter(o.recipients for o in outbox.list_items(a.db, limit=1000)
                   if o.template == "ack")
    assert acks == {(f"cust{k}@customer.example",): 1 for k in range(32)}
    a.db.dispose()
    b.db.dispose()


def test_a_follow_up_whose_lock_outlived_its_node_is_done_all_the_same(
    tmp_path: Path, pg_url: str
) -> None:
    """A session can outlive its client behind a proxy or pooler and keep the advisory
    locks of the follow-ups it claimed: a fresh one waits for its holder, one left over
    deferred.STALE_CLAIM is done all the same (CI saw two left undone for good)."""
    import psycopg

    config = write_config(tmp_path, pg_url)
    desk = Desk.open(config)
    raws = [message(frm=f"z{k}@customer.example", subject=f"Zombie {k}",
                    msgid=f"<z{k}@customer.example>") for k in range(2)]
    ids = inbox.add_many(desk.db, [inbox.new_row(
        r, source=Source.SMTP, message_id=header_message_id(r), content_hash=content_hash(r),
        envelope_to=("support@example.com",)) for r in raws])
    desk.pipeline.process_batch(ids)
    assert deferred.count(desk.db) == 2
    zombie = psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    try:
        for i in ids:  # the dead node's locks, held by a session nobody ends
            zombie.execute("SELECT pg_advisory_lock(%s + %s)", (deferred.CLAIM_KEY_BASE, i))
        zombie.execute("UPDATE deferred SET created_at = created_at - make_interval(secs => %s)"
                       " WHERE inbox_id = %s", (deferred.STALE_CLAIM + 5, ids[0]))
        assert desk.pipeline.follow_up(limit=8) == 1  # the stale one; the other waits
        assert deferred.count(desk.db) == 1 and deferred.pending(desk.db, 8) == []
        [ticket] = [i.ticket_id for i in inbox.list_items(desk.db) if i.id == ids[0]]
        assert ticket is not None
        [entry] = desk.entries(ticket)
        assert "the printer is on fire" in entry.body  # filled in by the follow-up
    finally:
        zombie.close()
        desk.db.dispose()


def test_a_node_that_does_not_lead_asks_again_between_ticks(tmp_path: Path, pg_url: str
                                                            ) -> None:
    """With the default 30 s interval, a follower asks every LEADER_POLL and takes the jobs
    over that soon, not at its next tick (SPEC §5: within 30 s of the leader's death)."""
    sd = SlaDesk.open(tmp_path, pg_url)
    other = AdvisoryLeader(pg_url)
    mine = Asked(AdvisoryLeader(pg_url))
    scheduler = Scheduler(sd.desk.settings, sd.desk.db, leader=mine)
    try:
        assert scheduler.interval.total_seconds() == 30
        assert other.leads()
        scheduler.start()
        wait_for("the first tick", lambda: mine.answers == [False])
        other.close()
        gone = time.monotonic()
        wait_for("the takeover", lambda: True in mine.answers,
                 timeout=LEADER_POLL.total_seconds() + 3)
        assert time.monotonic() - gone < 30
    finally:
        scheduler.stop()
        other.close()
        sd.close()


class Asked:
    """A leadership that notes each answer it gave."""

    def __init__(self, inner: AdvisoryLeader) -> None:
        self.inner = inner
        self.answers: list[bool] = []

    def leads(self) -> bool:
        led = self.inner.leads()
        self.answers.append(led)
        return led

    def close(self) -> None:
        self.inner.close()


def test_postgresql_probes_the_connections_that_hold_a_nodes_locks(pg_url: str) -> None:
    """A host that dies sends no FIN: PostgreSQL would keep its sessions, and the leader's
    and the mailboxes' locks, for the OS default of 2 hours. Every connection of ours asks
    the server to probe it after 5 s of silence, 3 probes 5 s apart."""
    from sqlalchemy import text

    from maildesk.store import Database

    leader, db = AdvisoryLeader(pg_url), Database(pg_url)
    names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
    try:
        assert leader.leads() and leader.conn is not None
        assert [leader.conn.execute(text(f"SHOW {n}")).scalar() for n in names] == ["5", "5", "3"]
        with db.read_raw() as r:
            assert [r.one(f"SHOW {n}") for n in names] == [("5",), ("5",), ("3",)]
    finally:
        leader.close()
        db.dispose()
