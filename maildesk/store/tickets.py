"""Tickets, their entries, participants, message references and links.

All hand-written SQL (store.raw), no ORM: the processing transaction's statements for
speed, the reads (reports, assignment; the display reads of `tickets list` and `show` are
in store.ticket_views, re-exported here) so that they also run on a store.direct.Reader
without importing SQLAlchemy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maildesk.domain import (
    Attachment,
    EntryKind,
    Priority,
    Status,
)
from maildesk.store.raw import Raw, Row, placeholders, raw
from maildesk.store.ticket_views import Page as Page  # the display reads, re-exported
from maildesk.store.ticket_views import entries as entries
from maildesk.store.ticket_views import list_views as list_views
from maildesk.store.ticket_views import page as page
from maildesk.store.ticket_views import view as view
from maildesk.store.ticket_views import views as views
from maildesk.thread import TicketFacts

if TYPE_CHECKING:  # not at run time: `maildesk tickets list` runs without SQLAlchemy
    from maildesk.store.direct import Readable
    from maildesk.store.raw import Tx

MAX_MERGE_HOPS = 20


@dataclass
class Ticket:
    """A ticket row as the processing transaction reads and changes it (see store.raw),
    and as reports read it; the CLI lists and shows TicketViews."""

    id: int
    subject: str
    subject_key: str
    status: str
    priority: str
    queue: str
    assignee: str | None
    requester: str
    reply_to: str | None
    tags: str
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    last_customer_at: datetime | None
    first_response_at: datetime | None
    agent_touched: bool
    merged_into: int | None
    solved_at: datetime | None
    closed_at: datetime | None
    first_response_due: datetime | None
    next_response_due: datetime | None
    resolution_due: datetime | None
    sla_policy: str | None = None
    next_response_from: datetime | None = None
    next_response_at: datetime | None = None
    next_response_met: int = 0
    next_response_breached: int = 0
    paused_since: datetime | None = None
    sla_next_at: datetime | None = None
    first_response_business: float | None = None  # seconds (maildesk.deadlines)
    resolution_business: float | None = None


_COLUMNS = [f.name for f in fields(Ticket)]
_TIMES = {f.name for f in fields(Ticket) if "datetime" in str(f.type)}
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM ticket"
_UPDATE = f"UPDATE ticket SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])} WHERE id = ?"


_TIME_AT = tuple(i for i, c in enumerate(_COLUMNS) if c in _TIMES)
_TOUCHED_AT = _COLUMNS.index("agent_touched")


def _ticket(r: Raw, row: Row) -> Ticket:
    # by position (the columns are the dataclass's fields in order): a dict of names per
    # row was most of what `report` spent reading a large desk
    assert len(row) == len(_COLUMNS)
    values = list(row)
    for i in _TIME_AT:
        values[i] = r.read_time(values[i])
    values[_TOUCHED_AT] = bool(values[_TOUCHED_AT])
    return Ticket(*values)


def load(s: Tx, ticket_id: int) -> Ticket | None:
    """One ticket as stored (merges not followed)."""
    r = raw(s)
    row = r.one(f"{_SELECT} WHERE id = ?", (ticket_id,))
    return _ticket(r, row) if row else None


def find(s: Tx, where: str, params: Sequence[Any] = ()) -> list[Ticket]:
    """Tickets as stored, by a condition of ours (`where` may end in ORDER BY / LIMIT)."""
    r = raw(s)
    return [_ticket(r, row) for row in r.rows(f"{_SELECT} WHERE {where}", params)]


def _stored(r: Raw, t: Ticket, columns: Sequence[str]) -> list[Any]:
    """The values of `columns` as parameters (times as stored)."""
    return [r.time(getattr(t, c)) if c in _TIMES else getattr(t, c) for c in columns]


def save(s: Tx, t: Ticket) -> None:
    r = raw(s)
    r.run(_UPDATE, (*_stored(r, t, _COLUMNS[1:]), t.id))


class SessionLookup:
    """thread.ThreadLookup over one database session (inside the processing transaction)."""

    def __init__(self, session: Tx) -> None:
        self.s = session
        # What threading loaded, so storing the message changes the same objects.
        self.loaded: dict[int, Ticket] = {}

    @property
    def r(self) -> Raw:
        return raw(self.s)

    def _resolve(self, ticket_id: int) -> Ticket | None:
        row = self._get(ticket_id)
        hops = 0
        while row is not None and row.merged_into is not None and hops < MAX_MERGE_HOPS:
            row = self._get(row.merged_into)
            hops += 1
        return row

    def _get(self, ticket_id: int) -> Ticket | None:
        row = self.loaded.get(ticket_id) or load(self.s, ticket_id)
        if row is not None:
            self.loaded[ticket_id] = row
        return row

    def row(self, ticket_id: int) -> Ticket | None:
        """The ticket (merges followed) as a record to change."""
        return self._resolve(ticket_id)

    def _facts(self, row: Ticket) -> TicketFacts:
        return TicketFacts(id=row.id, status=Status(row.status), created_at=row.created_at,
                           agent_touched=row.agent_touched)

    def ticket(self, ticket_id: int) -> TicketFacts | None:
        row = self._resolve(ticket_id)
        return self._facts(row) if row else None

    def is_participant(self, ticket_id: int, address: str) -> bool:
        return self.r.one("SELECT 1 FROM participant WHERE ticket_id = ? AND address = ? LIMIT 1",
                          (ticket_id, address)) is not None

    def tickets_by_keys(self, keys: Sequence[str]) -> list[TicketFacts]:
        keys = list(keys)
        if not keys:
            return []
        ids = self.r.rows(f"SELECT DISTINCT ticket_id FROM message_ref "
                          f"WHERE key IN ({placeholders(len(keys))})", keys)
        found: dict[int, TicketFacts] = {}
        for (i,) in ids:
            row = self._resolve(i)
            if row is not None:
                found.setdefault(row.id, self._facts(row))
        return list(found.values())

    def ticket_by_subject(
        self, sender: str, subject_key: str, since: datetime
    ) -> TicketFacts | None:
        found = self.r.one(
            "SELECT t.id FROM ticket t JOIN participant p ON p.ticket_id = t.id"
            " WHERE t.subject_key = ? AND p.address = ? AND t.status != ?"
            " AND t.merged_into IS NULL AND t.last_activity_at >= ?"
            " ORDER BY t.last_activity_at DESC LIMIT 1",
            (subject_key, sender, Status.CLOSED.value, self.r.time(since)))
        row = self._get(found[0]) if found else None
        return self._facts(row) if row else None

    def ticket_of_outbox(self, outbox_id: int) -> int | None:
        found = self.r.one("SELECT ticket_id FROM outbox WHERE id = ?", (outbox_id,))
        return found[0] if found else None


def get_row(s: Tx, ticket_id: int) -> Ticket | None:
    """The ticket, merges followed."""
    return SessionLookup(s)._resolve(ticket_id)


def create(
    s: Tx, *, subject: str, subject_key: str, requester: str, reply_to: str | None,
    queue: str, now: datetime,
) -> Ticket:
    r = raw(s)
    t = Ticket(
        id=0, subject=subject, subject_key=subject_key, status=Status.NEW.value,
        priority=Priority.NORMAL.value, queue=queue, assignee=None, requester=requester,
        reply_to=reply_to, tags="", created_at=now, updated_at=now, last_activity_at=now,
        last_customer_at=None, first_response_at=None, agent_touched=False, merged_into=None,
        solved_at=None, closed_at=None, first_response_due=None, next_response_due=None,
        resolution_due=None,
    )
    columns = _COLUMNS[1:]
    t.id = r.insert(
        f"INSERT INTO ticket ({', '.join(columns)}) VALUES ({placeholders(len(columns))})"
        " RETURNING id", _stored(r, t, columns))
    return t


def add_participants(
    s: Tx, ticket_id: int, addrs: Iterable[str], role: str = "cc", *, new: bool = False
) -> None:
    """Add addresses not yet on the ticket (`new`: the ticket was just created, has none)."""
    wanted = [a for a in dict.fromkeys(addrs) if a]
    if not wanted:
        return
    r = raw(s)
    existing = set() if new else _known(r, "participant", "address", ticket_id, wanted)
    r.many("INSERT INTO participant (ticket_id, address, role) VALUES (?, ?, ?)",
           [(ticket_id, a, role) for a in wanted if a not in existing])


def add_refs(
    s: Tx, ticket_id: int, keys: Iterable[tuple[str, str]], *, new: bool = False
) -> None:
    """Remember (key, kind) pairs for the ticket; already known keys are skipped."""
    wanted = {k[:998]: kind for k, kind in keys}
    if not wanted:
        return
    r = raw(s)
    known = set() if new else _known(r, "message_ref", "key", ticket_id, list(wanted))
    r.many("INSERT INTO message_ref (key, ticket_id, kind) VALUES (?, ?, ?)",
           [(k, ticket_id, kind) for k, kind in wanted.items() if k not in known])


def _known(r: Raw, table: str, column: str, ticket_id: int, values: Sequence[str]) -> set[str]:
    """Which of `values` the ticket already has in `table.column` (a fixed name of ours)."""
    found = r.rows(f"SELECT {column} FROM {table} WHERE ticket_id = ?"
                   f" AND {column} IN ({placeholders(len(values))})", (ticket_id, *values))
    return {v for (v,) in found}


def add_entry(
    s: Tx, *, ticket_id: int, kind: EntryKind, from_addr: str | None, subject: str,
    body: str, now: datetime, message_id: str | None, inbox_id: int | None = None,
    verified: bool | None = None, thread_rule: str = "", thread_reason: str = "",
    attachments: Sequence[Attachment] = (),
) -> int:
    """Insert an entry and its attachments; returns the entry id."""
    r = raw(s)
    entry_id = r.insert(
        "INSERT INTO entry (ticket_id, inbox_id, kind, from_addr, subject, body, created_at,"
        " message_id, verified, thread_rule, thread_reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (ticket_id, inbox_id, kind.value, from_addr, subject, body, r.time(now), message_id,
         verified, thread_rule, thread_reason))
    _add_attachments(s, entry_id, attachments)
    return entry_id


def fill_entry(s: Tx, entry_id: int, *, body: str,
               attachments: Sequence[Attachment] = ()) -> None:
    """The body and attachments of an entry stored from its message's headers alone."""
    raw(s).run("UPDATE entry SET body = ? WHERE id = ?", (body, entry_id))
    _add_attachments(s, entry_id, attachments)


def _add_attachments(s: Tx, entry_id: int, attachments: Sequence[Attachment]) -> None:
    raw(s).many("INSERT INTO attachment (entry_id, filename, content_type, size, sha256, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(entry_id, a.filename, a.content_type, a.size,
                  hashlib.sha256(a.data).hexdigest(), a.data) for a in attachments])


def participants(s: Tx, ticket_id: int) -> list[tuple[str, str]]:
    """(address, role) of everyone on the ticket, in the order they joined."""
    return [(a, role) for a, role in raw(s).rows(
        "SELECT address, role FROM participant WHERE ticket_id = ? ORDER BY id", (ticket_id,))]


def last_customer_message(s: Tx, ticket_id: int) -> tuple[str | None, int | None] | None:
    """(Message-ID, inbox id) of the ticket's latest customer entry; None without one."""
    found = raw(s).one(
        "SELECT message_id, inbox_id FROM entry WHERE ticket_id = ? AND kind = ?"
        " ORDER BY created_at DESC, id DESC LIMIT 1", (ticket_id, EntryKind.CUSTOMER.value))
    return (found[0], found[1]) if found else None


def link(s: Tx, a: int, b: int, reason: str) -> None:
    r = raw(s)
    for x, y in ((a, b), (b, a)):
        if r.one("SELECT 1 FROM ticket_link WHERE ticket_id = ? AND other_id = ?",
                 (x, y)) is None:
            r.run("INSERT INTO ticket_link (ticket_id, other_id, reason) VALUES (?, ?, ?)",
                  (x, y, reason))


def merge(s: Tx, lookup: SessionLookup, into: Ticket, other: int, now: datetime) -> None:
    """Move everything of `other` onto `into`; `other` stays as a closed pointer.

    `into` is the caller's record, saved by the caller; `other` is saved here."""
    row = lookup.row(other)
    if row is None or row.id == into.id:
        return
    r = raw(s)
    for table in ("entry", "outbox"):
        r.run(f"UPDATE {table} SET ticket_id = ? WHERE ticket_id = ?", (into.id, row.id))
    keys = r.rows("SELECT key, kind FROM message_ref WHERE ticket_id = ?", (row.id,))
    add_refs(s, into.id, [(k, kind) for k, kind in keys])
    people = r.rows("SELECT address FROM participant WHERE ticket_id = ?", (row.id,))
    add_participants(s, into.id, [a for (a,) in people])
    row.merged_into = into.id
    row.status = Status.CLOSED.value
    row.closed_at = now
    row.sla_next_at = None  # closed: no SLA mail (maildesk.deadlines)
    row.updated_at = now
    save(s, row)
    into.created_at = min(into.created_at, row.created_at)
    into.last_activity_at = max(into.last_activity_at, row.last_activity_at)
    into.updated_at = now


# --- reading, for the CLI and the outbound side -------------------------------------------
# The display reads (TicketView, EntryView, pages) are in store.ticket_views, re-exported
# above; these serve assignment, reports and metrics. Hand-written SQL like the rest: the
# CLI's `report` runs on a store.direct.Reader, without SQLAlchemy.


def last_assignee(s: Tx, queue: str) -> str | None:
    """The assignee of the most recently created assigned ticket in `queue` (round robin)."""
    found = raw(s).one(
        "SELECT assignee FROM ticket WHERE queue = ? AND assignee IS NOT NULL"
        " ORDER BY created_at DESC, id DESC LIMIT 1", (queue,))
    return found[0] if found else None


def open_counts(s: Tx, agents: Sequence[str]) -> dict[str, int]:
    """How many unsolved tickets each agent holds (least open)."""
    counts = {a: 0 for a in agents}
    if not counts:
        return counts
    unsolved = (Status.NEW.value, Status.OPEN.value, Status.PENDING.value)
    rows = raw(s).rows(
        f"SELECT assignee, count(*) FROM ticket WHERE assignee IN ({placeholders(len(counts))})"
        f" AND status IN (?, ?, ?) AND merged_into IS NULL GROUP BY assignee",
        (*counts, *unsolved))
    counts.update({a: int(n) for a, n in rows if a})
    return counts


_REPORT = "merged_into IS NULL AND created_at >= ?"  # ix_ticket_live_created: one range
_DONE = f"status IN ('{Status.SOLVED.value}', '{Status.CLOSED.value}')"  # sla.DONE
_DONE_AT = f"CASE WHEN {_DONE} THEN COALESCE(solved_at, closed_at, updated_at) END"


def _state(due: str, met: str) -> str:
    """sla.state in SQL: met | breached | open; NULL without a due time and unmet."""
    return (f"CASE WHEN {met} IS NOT NULL THEN CASE WHEN {due} IS NULL OR {met} <= {due}"
            f" THEN 'met' ELSE 'breached' END WHEN {due} IS NULL THEN NULL"
            f" WHEN {due} < ? THEN 'breached' ELSE 'open' END")


def _seconds(r: Raw, end: str) -> str:
    if r.sqlite:
        return f"(julianday({end}) - julianday(created_at)) * 86400.0"
    return f"EXTRACT(EPOCH FROM ({end}) - created_at)::float8"


_RUNNING = "next_response_from IS NOT NULL AND next_response_at IS NULL"


def report_tallies(src: Tx, since: datetime | None, now: datetime) -> Iterator[Row]:
    """For `maildesk report`, a row a live ticket (created since `since`): queue,
    assignee, priority, status, the states of its first response, resolution and running
    next response (sla.state; the last NULL when no next response is awaited), and its
    next responses met and breached. Rows alike are counted by the caller (they are few
    kinds: counting them there is quicker than the database's GROUP BY, which sorts)."""
    r = raw(src)
    sql = (f"SELECT queue, assignee, priority, status,"
           f" {_state('first_response_due', 'first_response_at')},"
           f" {_state('resolution_due', _DONE_AT)},"
           f" CASE WHEN {_RUNNING} THEN CASE WHEN next_response_due < ? THEN 'breached'"
           f" ELSE 'open' END END,"
           f" next_response_met, next_response_breached FROM ticket")
    now_at = r.time(now)
    return _report_read(r, sql, since, (now_at, now_at, now_at))


def report_times(src: Tx, since: datetime | None) -> Iterator[Row]:
    """For `maildesk report`, a row a live ticket answered or done (created since
    `since`): queue, assignee, priority, seconds to the first response and to done (wall
    clock), the same in business time (as maildesk.deadlines recorded them), and the id
    of a ticket whose business times were never recorded (an older release's) or None."""
    r = raw(src)
    sql = (f"SELECT queue, assignee, priority, {_seconds(r, 'first_response_at')},"
           f" first_response_business, {_seconds(r, _DONE_AT)}, resolution_business,"
           f" CASE WHEN (first_response_at IS NOT NULL AND first_response_business IS NULL)"
           f" OR ({_DONE} AND resolution_business IS NULL) THEN id END FROM ticket")
    return _report_read(r, sql, since, (), f" AND (first_response_at IS NOT NULL OR {_DONE})")


def _report_read(r: Raw, sql: str, since: datetime | None, params: tuple[Any, ...],
                 more: str = "") -> Iterator[Row]:
    if since is None:
        return r.each(f"{sql} WHERE merged_into IS NULL{more}", params)
    return r.each(f"{sql} WHERE {_REPORT}{more}", (*params, r.time(since)))


def report_plan(src: Tx, since: datetime) -> str:
    """The database's plan for the report's read of a period (EXPLAIN), a line a step."""
    r = raw(src)
    sql = f"SELECT id FROM ticket WHERE {_REPORT}"
    if r.sqlite:
        return "\n".join(str(row[-1]) for row in r.rows(f"EXPLAIN QUERY PLAN {sql}",
                                                        (r.time(since),)))
    return "\n".join(str(row[0]) for row in r.rows(f"EXPLAIN {sql}", (since,)))


def count_by_status(db: Readable) -> dict[str, int]:
    """Live tickets per status (merged-away ones excluded), for the metrics gauge."""
    with db.read_raw() as r:
        rows = r.rows("SELECT status, count(*) FROM ticket WHERE merged_into IS NULL"
                      " GROUP BY status")
    return {status: int(n) for status, n in rows}
