"""Tickets, their entries, participants, message references and links."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, insert, update
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
from maildesk.store.tables import (
    AttachmentRow,
    EntryRow,
    MessageRefRow,
    OutboxRow,
    ParticipantRow,
    TicketLinkRow,
    TicketRow,
)
from maildesk.thread import TicketFacts

MAX_MERGE_HOPS = 20


class SessionLookup:
    """thread.ThreadLookup over one database session (inside the processing transaction)."""

    def __init__(self, session: Session) -> None:
        self.s = session
        # The session's identity map holds rows weakly: keep what threading loaded,
        # so storing the message does not load the same ticket again.
        self.loaded: dict[int, TicketRow] = {}

    def _resolve(self, ticket_id: int) -> TicketRow | None:
        row = self._get(ticket_id)
        hops = 0
        while row is not None and row.merged_into is not None and hops < MAX_MERGE_HOPS:
            row = self._get(row.merged_into)
            hops += 1
        return row

    def _get(self, ticket_id: int) -> TicketRow | None:
        row = self.loaded.get(ticket_id) or self.s.get(TicketRow, ticket_id)
        if row is not None:
            self.loaded[ticket_id] = row
        return row

    def row(self, ticket_id: int) -> TicketRow | None:
        """The ticket (merges followed) as a row to change."""
        return self._resolve(ticket_id)

    def _facts(self, row: TicketRow) -> TicketFacts:
        assert row.id is not None
        return TicketFacts(id=row.id, status=Status(row.status), created_at=row.created_at,
                           agent_touched=row.agent_touched)

    def ticket(self, ticket_id: int) -> TicketFacts | None:
        row = self._resolve(ticket_id)
        return self._facts(row) if row else None

    def is_participant(self, ticket_id: int, address: str) -> bool:
        return self.s.exec(
            select(ParticipantRow.id).where(
                ParticipantRow.ticket_id == ticket_id, ParticipantRow.address == address
            ).limit(1)
        ).first() is not None

    def tickets_by_keys(self, keys: Sequence[str]) -> list[TicketFacts]:
        ids = self.s.connection().execute(
            select(MessageRefRow.ticket_id).where(col(MessageRefRow.key).in_(list(keys))).distinct()
        ).scalars().all()
        found: dict[int, TicketFacts] = {}
        for i in ids:
            row = self._resolve(i)
            if row is not None and row.id is not None:
                found.setdefault(row.id, self._facts(row))
        return list(found.values())

    def ticket_by_subject(
        self, sender: str, subject_key: str, since: datetime
    ) -> TicketFacts | None:
        row = self.s.exec(
            select(TicketRow)
            .join(ParticipantRow, col(ParticipantRow.ticket_id) == col(TicketRow.id))
            .where(
                TicketRow.subject_key == subject_key,
                ParticipantRow.address == sender,
                col(TicketRow.status) != Status.CLOSED.value,
                col(TicketRow.merged_into).is_(None),
                col(TicketRow.last_activity_at) >= since,
            )
            .order_by(col(TicketRow.last_activity_at).desc())
            .limit(1)
        ).first()
        return self._facts(row) if row else None

    def ticket_of_outbox(self, outbox_id: int) -> int | None:
        row = self.s.get(OutboxRow, outbox_id)
        return row.ticket_id if row else None


def get_row(s: Session, ticket_id: int) -> TicketRow | None:
    return SessionLookup(s)._resolve(ticket_id)


def create(
    s: Session, *, subject: str, subject_key: str, requester: str, reply_to: str | None,
    queue: str, now: datetime,
) -> TicketRow:
    row = TicketRow(
        subject=subject, subject_key=subject_key, requester=requester, reply_to=reply_to,
        queue=queue, created_at=now, updated_at=now, last_activity_at=now,
    )
    s.add(row)
    s.flush()
    return row


def add_participants(
    s: Session, ticket_id: int, addrs: Iterable[str], role: str = "cc", *, new: bool = False
) -> None:
    """Add addresses not yet on the ticket (`new`: the ticket was just created, has none)."""
    wanted = [a for a in dict.fromkeys(addrs) if a]
    if not wanted:
        return
    existing = set() if new else set(s.connection().execute(select(ParticipantRow.address).where(
        ParticipantRow.ticket_id == ticket_id, col(ParticipantRow.address).in_(wanted))).scalars())
    rows = [{"ticket_id": ticket_id, "address": a, "role": role}
            for a in wanted if a not in existing]
    if rows:
        s.connection().execute(insert(ParticipantRow), rows)


def add_refs(
    s: Session, ticket_id: int, keys: Iterable[tuple[str, str]], *, new: bool = False
) -> None:
    """Remember (key, kind) pairs for the ticket; already known keys are skipped."""
    wanted = {k[:998]: kind for k, kind in keys}
    if not wanted:
        return
    known = set() if new else set(s.connection().execute(select(MessageRefRow.key).where(
        MessageRefRow.ticket_id == ticket_id, col(MessageRefRow.key).in_(list(wanted)))).scalars())
    rows = [{"key": k, "ticket_id": ticket_id, "kind": kind}
            for k, kind in wanted.items() if k not in known]
    if rows:
        s.connection().execute(insert(MessageRefRow), rows)


def add_entry(
    s: Session, *, ticket_id: int, kind: EntryKind, from_addr: str | None, subject: str,
    body: str, now: datetime, message_id: str | None, inbox_id: int | None = None,
    verified: bool | None = None, thread_rule: str = "", thread_reason: str = "",
    attachments: Sequence[Attachment] = (),
) -> int:
    """Insert an entry and its attachments; returns the entry id."""
    entry_id: int | None = s.connection().execute(insert(EntryRow).values(
        ticket_id=ticket_id, inbox_id=inbox_id, kind=kind.value, from_addr=from_addr,
        subject=subject, body=body, created_at=now, message_id=message_id, verified=verified,
        thread_rule=thread_rule, thread_reason=thread_reason,
    ).returning(col(EntryRow.id))).scalar_one()
    assert entry_id is not None
    if attachments:
        s.connection().execute(insert(AttachmentRow), [{
            "entry_id": entry_id, "filename": a.filename, "content_type": a.content_type,
            "size": a.size, "sha256": hashlib.sha256(a.data).hexdigest(), "data": a.data,
        } for a in attachments])
    return entry_id


def link(s: Session, a: int, b: int, reason: str) -> None:
    for x, y in ((a, b), (b, a)):
        exists = s.exec(
            select(TicketLinkRow.id)
            .where(TicketLinkRow.ticket_id == x, TicketLinkRow.other_id == y)
        ).first()
        if exists is None:
            s.add(TicketLinkRow(ticket_id=x, other_id=y, reason=reason))


def merge(s: Session, into: int, other: int, now: datetime) -> None:
    """Move everything of `other` onto `into`; `other` stays as a closed pointer."""
    if into == other:
        return
    for table in (EntryRow, OutboxRow):
        s.execute(update(table).where(col(table.ticket_id) == other).values(ticket_id=into))
    keys = s.exec(select(MessageRefRow.key, MessageRefRow.kind).where(
        MessageRefRow.ticket_id == other)).all()
    add_refs(s, into, [(k, kind) for k, kind in keys])
    people = s.exec(select(ParticipantRow.address).where(ParticipantRow.ticket_id == other)).all()
    add_participants(s, into, people)
    row = s.get(TicketRow, other)
    target = s.get(TicketRow, into)
    if row is None or target is None:
        return
    row.merged_into = into
    row.status = Status.CLOSED.value
    row.closed_at = now
    row.updated_at = now
    if row.created_at < target.created_at:
        target.created_at = row.created_at
    target.last_activity_at = max(target.last_activity_at, row.last_activity_at)
    target.updated_at = now
    s.add_all([row, target])


# --- reading, for the CLI and the outbound side -------------------------------------------


def view(s: Session, row: TicketRow) -> TicketView:
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
