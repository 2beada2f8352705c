"""Tickets, their entries, participants, message references and links."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from maildesk.domain import (
    Attachment,
    EntryKind,
    EntryView,
    Priority,
    Status,
    TicketView,
)
from maildesk.store.db import Database
from maildesk.store.raw import Raw, Row, placeholders, raw
from maildesk.store.tables import (
    AttachmentRow,
    DeferredRow,
    EntryRow,
    ParticipantRow,
    TicketLinkRow,
    TicketRow,
)
from maildesk.thread import TicketFacts

MAX_MERGE_HOPS = 20


@dataclass
class Ticket:
    """A ticket row as the processing transaction reads and changes it (see store.raw);
    the CLI and reports use TicketRow through the ORM."""

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


_COLUMNS = [f.name for f in fields(Ticket)]
_TIMES = {f.name for f in fields(Ticket) if "datetime" in str(f.type)}
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM ticket"
_UPDATE = f"UPDATE ticket SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])} WHERE id = ?"


def _ticket(r: Raw, row: Row) -> Ticket:
    values: dict[str, Any] = {c: r.read_time(v) if c in _TIMES else v
                              for c, v in zip(_COLUMNS, row, strict=True)}
    values["agent_touched"] = bool(values["agent_touched"])
    return Ticket(**values)


def load(s: Session, ticket_id: int) -> Ticket | None:
    """One ticket as stored (merges not followed)."""
    r = raw(s)
    row = r.one(f"{_SELECT} WHERE id = ?", (ticket_id,))
    return _ticket(r, row) if row else None


def find(s: Session, where: str, params: Sequence[Any] = ()) -> list[Ticket]:
    """Tickets as stored, by a condition of ours (`where` may end in ORDER BY / LIMIT)."""
    r = raw(s)
    return [_ticket(r, row) for row in r.rows(f"{_SELECT} WHERE {where}", params)]


def _stored(r: Raw, t: Ticket, columns: Sequence[str]) -> list[Any]:
    """The values of `columns` as parameters (times as stored)."""
    return [r.time(getattr(t, c)) if c in _TIMES else getattr(t, c) for c in columns]


def save(s: Session, t: Ticket) -> None:
    r = raw(s)
    r.run(_UPDATE, (*_stored(r, t, _COLUMNS[1:]), t.id))


class SessionLookup:
    """thread.ThreadLookup over one database session (inside the processing transaction)."""

    def __init__(self, session: Session) -> None:
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


def get_row(s: Session, ticket_id: int) -> Ticket | None:
    """The ticket, merges followed."""
    return SessionLookup(s)._resolve(ticket_id)


def create(
    s: Session, *, subject: str, subject_key: str, requester: str, reply_to: str | None,
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
    s: Session, ticket_id: int, addrs: Iterable[str], role: str = "cc", *, new: bool = False
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
    s: Session, ticket_id: int, keys: Iterable[tuple[str, str]], *, new: bool = False
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
    s: Session, *, ticket_id: int, kind: EntryKind, from_addr: str | None, subject: str,
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


def fill_entry(s: Session, entry_id: int, *, body: str,
               attachments: Sequence[Attachment] = ()) -> None:
    """The body and attachments of an entry stored from its message's headers alone."""
    raw(s).run("UPDATE entry SET body = ? WHERE id = ?", (body, entry_id))
    _add_attachments(s, entry_id, attachments)


def _add_attachments(s: Session, entry_id: int, attachments: Sequence[Attachment]) -> None:
    raw(s).many("INSERT INTO attachment (entry_id, filename, content_type, size, sha256, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(entry_id, a.filename, a.content_type, a.size,
                  hashlib.sha256(a.data).hexdigest(), a.data) for a in attachments])


def participants(s: Session, ticket_id: int) -> list[tuple[str, str]]:
    """(address, role) of everyone on the ticket, in the order they joined."""
    return [(a, role) for a, role in raw(s).rows(
        "SELECT address, role FROM participant WHERE ticket_id = ? ORDER BY id", (ticket_id,))]


def last_customer_message(s: Session, ticket_id: int) -> tuple[str | None, int | None] | None:
    """(Message-ID, inbox id) of the ticket's latest customer entry; None without one."""
    found = raw(s).one(
        "SELECT message_id, inbox_id FROM entry WHERE ticket_id = ? AND kind = ?"
        " ORDER BY created_at DESC, id DESC LIMIT 1", (ticket_id, EntryKind.CUSTOMER.value))
    return (found[0], found[1]) if found else None


def link(s: Session, a: int, b: int, reason: str) -> None:
    r = raw(s)
    for x, y in ((a, b), (b, a)):
        if r.one("SELECT 1 FROM ticket_link WHERE ticket_id = ? AND other_id = ?",
                 (x, y)) is None:
            r.run("INSERT INTO ticket_link (ticket_id, other_id, reason) VALUES (?, ?, ?)",
                  (x, y, reason))


def merge(s: Session, lookup: SessionLookup, into: Ticket, other: int, now: datetime) -> None:
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


def view(s: Session, row: TicketRow | Ticket) -> TicketView:
    assert row.id is not None
    cc = s.exec(select(ParticipantRow.address).where(
        ParticipantRow.ticket_id == row.id, ParticipantRow.role == "cc")).all()
    linked = s.exec(select(TicketLinkRow.other_id).where(TicketLinkRow.ticket_id == row.id)).all()
    return TicketView(
        id=row.id, subject=row.subject, status=Status(row.status),
        priority=Priority(row.priority), queue=row.queue, assignee=row.assignee,
        requester=row.requester, reply_to=row.reply_to, tags=row.tags.split(),
        cc=list(cc), created_at=row.created_at, updated_at=row.updated_at,
        merged_into=row.merged_into, linked=sorted(linked),
        sla_policy=row.sla_policy, first_response_due=row.first_response_due,
        first_response_at=row.first_response_at, next_response_due=row.next_response_due,
        next_response_at=row.next_response_at if row.next_response_from else None,
        resolution_due=row.resolution_due,
        solved_at=(row.solved_at or row.closed_at or row.updated_at)
        if row.status in (Status.SOLVED, Status.CLOSED) else None,
    )


def list_views(
    s: Session, *, status: str | None = None, queue: str | None = None, limit: int = 500
) -> list[TicketView]:
    q = select(TicketRow).where(col(TicketRow.merged_into).is_(None))
    if status:
        q = q.where(TicketRow.status == status)
    if queue:
        q = q.where(TicketRow.queue == queue)
    rows = s.exec(q.order_by(col(TicketRow.id).desc()).limit(limit)).all()
    return [view(s, r) for r in rows]


def entries(s: Session, ticket_id: int) -> list[EntryView]:
    rows = s.exec(
        select(EntryRow).where(EntryRow.ticket_id == ticket_id)
        .order_by(col(EntryRow.created_at), col(EntryRow.id))
    ).all()
    pending = set(s.exec(select(DeferredRow.entry_id).where(
        col(DeferredRow.entry_id).in_([r.id for r in rows]))).all()) if rows else set()
    out = []
    for r in rows:
        assert r.id is not None
        atts = s.exec(select(AttachmentRow.filename, AttachmentRow.content_type,
                             AttachmentRow.size).where(AttachmentRow.entry_id == r.id)).all()
        out.append(EntryView(
            id=r.id, ticket_id=r.ticket_id, kind=EntryKind(r.kind), from_addr=r.from_addr,
            subject=r.subject, body=r.body, created_at=r.created_at, message_id=r.message_id,
            verified=r.verified, thread_rule=r.thread_rule, thread_reason=r.thread_reason,
            inbox_id=r.inbox_id, attachments=[(n, t, z) for n, t, z in atts],
            pending=r.id in pending,
        ))
    return out


def last_assignee(s: Session, queue: str) -> str | None:
    """The assignee of the most recently created assigned ticket in `queue` (round robin)."""
    return s.exec(
        select(TicketRow.assignee)
        .where(TicketRow.queue == queue, col(TicketRow.assignee).is_not(None))
        .order_by(col(TicketRow.created_at).desc(), col(TicketRow.id).desc())
        .limit(1)
    ).first()


def open_counts(s: Session, agents: Sequence[str]) -> dict[str, int]:
    """How many unsolved tickets each agent holds (least open)."""
    rows = s.exec(
        select(TicketRow.assignee, func.count())
        .where(
            col(TicketRow.assignee).in_(list(agents)),
            col(TicketRow.status).in_([Status.NEW.value, Status.OPEN.value, Status.PENDING.value]),
            col(TicketRow.merged_into).is_(None),
        )
        .group_by(TicketRow.assignee)
    ).all()
    counts = {a: 0 for a in agents}
    counts.update({a: n for a, n in rows if a})
    return counts


def report_rows(s: Session, since: datetime | None) -> list[TicketRow]:
    """Tickets created since `since` (merged-away ones excluded), for `maildesk report`."""
    q = select(TicketRow).where(col(TicketRow.merged_into).is_(None))
    if since is not None:
        q = q.where(col(TicketRow.created_at) >= since)
    return list(s.exec(q).all())


def count_by_status(db: Database) -> dict[str, int]:
    """Live tickets per status (merged-away ones excluded), for the metrics gauge."""
    with db.read() as s:
        rows = s.exec(select(TicketRow.status, func.count())
                      .where(col(TicketRow.merged_into).is_(None))
                      .group_by(TicketRow.status)).all()
    return {status: n for status, n in rows}
