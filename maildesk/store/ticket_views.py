"""Reading tickets for display: a page of `tickets list` with the total of its filter,
TicketViews with their CC participants and links, a ticket's entries with their
attachments (`tickets show`, the outbound side).

Hand-written SQL (store.raw), batched: a page costs a query for its rows, one for their
CC participants and one for their links, not two per ticket. It runs on the daemon's
sessions and on a store.direct.Reader alike (each function takes a session or a Raw),
without SQLAlchemy: the CLI's read commands do not import it. `store.tickets`
re-exports these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from maildesk.domain import EntryKind, EntryView, Priority, Status, TicketView
from maildesk.store.raw import Raw, placeholders, raw

if TYPE_CHECKING:
    from maildesk.store.direct import Readable
    from maildesk.store.raw import Tx
    from maildesk.store.tickets import Ticket

_IN_CHUNK = 500  # ids per IN (...) list: SQLite allows 32,766 parameters, PostgreSQL 65,535
_VIEW_COLUMNS = ("id, subject, status, priority, queue, assignee, requester, reply_to, tags,"
                 " created_at, updated_at, merged_into, sla_policy, first_response_due,"
                 " first_response_at, next_response_due, next_response_at, next_response_from,"
                 " resolution_due, solved_at, closed_at")


@dataclass(frozen=True)
class Page:
    """One page of `tickets list`: the tickets, newest first, how many match in all, and
    whether older ones follow."""

    tickets: list[TicketView]
    total: int
    more: bool = False


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _IN_CHUNK):
        yield list(ids[i:i + _IN_CHUNK])


def _by_ticket(r: Raw, sql: str, ids: Sequence[int]) -> dict[int, list[Any]]:
    """`sql` for many ids at once (`{}` is the IN list): the rows grouped by their first
    column, each as its second column or, with more columns, the tuple of the rest."""
    found: dict[int, list[Any]] = {}
    for chunk in _chunks(ids):
        for key, *rest in r.rows(sql.format(placeholders(len(chunk))), chunk):
            found.setdefault(key, []).append(rest[0] if len(rest) == 1 else tuple(rest))
    return found


def views(src: Tx, rows: Sequence[Sequence[Any]]) -> list[TicketView]:
    """TicketViews of rows selected as _VIEW_COLUMNS: two queries in all for their CC
    participants and links, not two per ticket."""
    r = raw(src)
    ids = [row[0] for row in rows]
    cc = _by_ticket(r, "SELECT ticket_id, address FROM participant WHERE role = 'cc'"
                       " AND ticket_id IN ({}) ORDER BY id", ids)
    linked = _by_ticket(r, "SELECT ticket_id, other_id FROM ticket_link"
                           " WHERE ticket_id IN ({})", ids)
    out = []
    for (i, subject, status, priority, queue, assignee, requester, reply_to, tags, created,
         updated, merged_into, policy, first_due, first_at, next_due, next_at, next_from,
         resolution_due, solved, closed) in rows:
        created_at, updated_at = r.read_time(created), r.read_time(updated)
        assert created_at is not None and updated_at is not None
        done = Status(status) in (Status.SOLVED, Status.CLOSED)
        out.append(TicketView(
            id=i, subject=subject, status=Status(status), priority=Priority(priority),
            queue=queue, assignee=assignee, requester=requester, reply_to=reply_to,
            tags=tags.split(), cc=cc.get(i, []), created_at=created_at, updated_at=updated_at,
            merged_into=merged_into, linked=sorted(linked.get(i, [])),
            sla_policy=policy, first_response_due=r.read_time(first_due),
            first_response_at=r.read_time(first_at), next_response_due=r.read_time(next_due),
            # met only while a next-response clock ran (next_response_from set)
            next_response_at=r.read_time(next_at) if next_from is not None else None,
            resolution_due=r.read_time(resolution_due),
            solved_at=(r.read_time(solved) or r.read_time(closed) or updated_at)
            if done else None,
        ))
    return out


def view(src: Tx, row: Ticket) -> TicketView:
    r = raw(src)
    found = r.one(f"SELECT {_VIEW_COLUMNS} FROM ticket WHERE id = ?", (row.id,))
    assert found is not None, f"no ticket #{row.id}"
    return views(r, [found])[0]


def page(
    db: Readable, *, status: str | None = None, queue: str | None = None, limit: int = 50,
    before: int | None = None,
) -> Page:
    """Live tickets (merged-away ones left out), newest first: `limit` of them (0: all)
    older than ticket `before` when given, and the total of the filter (not of the page).

    Indexes keep both fast however many tickets there are: ix_ticket_status_list and
    ix_ticket_queue_list are (status or queue, merged_into, id), so the page is read
    from the index in order and stops after `limit` rows, and the total counts index
    entries only."""
    where: list[str] = ["merged_into IS NULL"]
    params: list[Any] = []
    for column, value in (("status", status), ("queue", queue)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    match = " AND ".join(where)
    with db.read_raw() as r:
        total = r.one(f"SELECT count(*) FROM ticket WHERE {match}", params)
        if before is not None:
            match += " AND id < ?"
            params.append(before)
        sql = f"SELECT {_VIEW_COLUMNS} FROM ticket WHERE {match} ORDER BY id DESC"
        rows = r.rows(sql + " LIMIT ?", (*params, limit + 1)) if limit else r.rows(sql, params)
        more = bool(limit) and len(rows) > limit
        return Page(views(r, rows[:limit] if limit else rows), int(total[0]) if total else 0,
                    more)


def list_views(
    src: Tx, *, status: str | None = None, queue: str | None = None,
    limit: int = 500,
) -> list[TicketView]:
    """The newest `limit` live tickets (see `page`)."""
    return page(_Fixed(raw(src)), status=status, queue=queue, limit=limit).tickets


class _Fixed:
    """A Readable over a Raw that is already open (a session's)."""

    def __init__(self, r: Raw) -> None:
        self.r = r

    @contextmanager
    def read_raw(self) -> Iterator[Raw]:
        yield self.r


def entries(src: Tx, ticket_id: int) -> list[EntryView]:
    """The entries of a ticket in order, with their attachments (one query for all of
    them) and whether their body is still being read (a pending follow-up)."""
    r = raw(src)
    rows = r.rows(
        "SELECT e.id, e.ticket_id, e.kind, e.from_addr, e.subject, e.body, e.created_at,"
        " e.message_id, e.verified, e.thread_rule, e.thread_reason, e.inbox_id,"
        " d.inbox_id IS NOT NULL FROM entry e LEFT JOIN deferred d ON d.entry_id = e.id"
        " WHERE e.ticket_id = ? ORDER BY e.created_at, e.id", (ticket_id,))
    attachments = _by_ticket(
        r, "SELECT entry_id, filename, content_type, size FROM attachment"
           " WHERE entry_id IN ({}) ORDER BY id", [row[0] for row in rows]) if rows else {}
    out = []
    for (i, t, kind, frm, subject, body, created, mid, verified, rule, reason, inbox_id,
         pending) in rows:
        created_at = r.read_time(created)
        assert created_at is not None
        out.append(EntryView(
            id=i, ticket_id=t, kind=EntryKind(kind), from_addr=frm, subject=subject,
            body=body, created_at=created_at, message_id=mid,
            verified=None if verified is None else bool(verified), thread_rule=rule,
            thread_reason=reason, inbox_id=inbox_id, attachments=attachments.get(i, []),
            pending=bool(pending),
        ))
    return out
