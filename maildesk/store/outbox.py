"""The outbox and the suppression list.

An outgoing message is a fully rendered row, written in the same transaction as the
ticket change that caused it, so a decision and its mail commit together or not at all.
The sender claims due rows with a lease (SKIP LOCKED on PostgreSQL), hands each to a
transport and marks it sent right after the transport accepted it: a message is never
claimed by two senders. A transport that cannot tell a repeat (SMTP) has the row marked
`sending` right before the point of no return; a row left `sending` by a sender that died
counts as sent (`recover`), a row left `pending` is sent again.

Hand-written SQL (store.raw) throughout, so that `maildesk outbox list` and `maildesk
ingest` import no SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from maildesk.addresses import mailbox
from maildesk.store.inbox import utcnow
from maildesk.store.raw import Raw, placeholders
from maildesk.store.raw import raw as _raw

if TYPE_CHECKING:  # `maildesk outbox list` runs without SQLAlchemy (store.direct.Reader)
    from maildesk.store.db import Database
    from maildesk.store.direct import Readable
    from maildesk.store.raw import Tx

PENDING, SENT, FAILED, BOUNCED = "pending", "sent", "failed", "bounced"
SENDING = "sending"  # the smarthost may have it: the end of DATA went out, no reply yet
PRESUMED_SENT = ("presumed sent: the sender stopped after the end of DATA, before the"
                 " smarthost's reply; `maildesk outbox retry ID` sends it again")
LEASE = timedelta(minutes=5)  # longer than any transport timeout: a live sender keeps its rows


@dataclass(frozen=True)
class OutboxItem:
    id: int
    ticket_id: int | None
    template: str
    automatic: bool
    recipients: tuple[str, ...]
    envelope_from: str
    message_id: str
    created_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    sent_at: datetime | None


@dataclass(frozen=True)
class Claimed:
    """A row leased to one sender, with the bytes to transmit."""

    item: OutboxItem
    raw: bytes
    reclaimed: bool = False  # an earlier lease ran out: that sender may have delivered it


def split_recipients(value: str) -> tuple[str, ...]:
    return tuple(a for a in value.split(",") if a)


# --- writing, inside the processing transaction -----------------------------------------


def reserve(
    s: Tx, *, message_id: str, raw: bytes, ticket_id: int | None, entry_id: int | None,
    template: str, automatic: bool, recipients: Iterable[str], now: datetime,
    envelope_from: Callable[[int], str], thread_index_root: str | None = None,
) -> int:
    """Insert a pending row; its envelope sender is made from its id (VERP).

    The ticket learns the message's own ids (its Message-ID, and a Thread-Index root we
    started), so replies that only reference our mail thread onto it. Both are new: plain
    inserts, no lookup. This runs for every outgoing message inside the processing
    transaction: hand-written SQL (store.raw)."""
    r = _raw(s)
    recipients = list(recipients)
    at = r.time(now)
    outbox_id = r.insert(
        "INSERT INTO outbox (ticket_id, entry_id, template, automatic, recipients,"
        " envelope_from, message_id, raw, created_at, state, attempts, next_attempt_at)"
        " VALUES (?, ?, ?, ?, ?, '', ?, ?, ?, ?, 0, ?) RETURNING id",
        (ticket_id, entry_id, template, automatic, ",".join(recipients), message_id, raw, at,
         PENDING, at))
    r.run("UPDATE outbox SET envelope_from = ? WHERE id = ?", (envelope_from(outbox_id), outbox_id))
    refs = [(message_id, ticket_id, "own")] if ticket_id is not None else []
    if thread_index_root and ticket_id is not None:
        refs.append((thread_index_root, ticket_id, "thread_index"))
    r.many("INSERT INTO message_ref (key, ticket_id, kind) VALUES (?, ?, ?)", refs)
    if automatic:
        r.many("INSERT INTO auto_reply (address, created_at) VALUES (?, ?)",
               [(mailbox(a), at) for a in recipients])
    return outbox_id


def auto_replies_since(s: Tx, address: str, since: datetime) -> int:
    """How many automatic messages went (or are going) to the mailbox of `address`
    (`addresses.mailbox`: its `+` forms count together) since `since`."""
    r = _raw(s)
    found = r.one("SELECT count(*) FROM auto_reply WHERE address = ? AND created_at >= ?",
                  (mailbox(address), r.time(since)))
    return int(found[0]) if found else 0


def by_id(s: Tx, outbox_id: int) -> OutboxItem | None:
    """One outgoing message (the bounce handler's: which message a report is about)."""
    r = _raw(s)
    row = r.one(f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE id = ?", (outbox_id,))
    return _raw_item(r, row) if row else None


def by_message_id(s: Tx, message_id: str) -> OutboxItem | None:
    r = _raw(s)
    row = r.one(f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE message_id = ? ORDER BY id LIMIT 1",
                (message_id,))
    return _raw_item(r, row) if row else None


def mark_bounced(s: Tx, outbox_id: int, reason: str) -> None:
    _raw(s).run("UPDATE outbox SET state = ?, last_error = ? WHERE id = ?",
                (BOUNCED, _one_line(reason), outbox_id))


def suppressed(s: Tx, addresses: Iterable[str]) -> set[str]:
    """The addresses among `addresses` that are on the suppression list."""
    wanted = list(dict.fromkeys(a.lower() for a in addresses))
    if not wanted:
        return set()
    found = _raw(s).rows(
        f"SELECT address FROM suppression WHERE address IN ({placeholders(len(wanted))})", wanted)
    return {a for (a,) in found}


def suppress(s: Tx, address: str, reason: str, now: datetime) -> bool:
    """Put an address on the suppression list; False when it already was."""
    address = address.lower()
    r = _raw(s)
    if r.one("SELECT 1 FROM suppression WHERE address = ?", (address,)) is not None:
        return False
    r.run("INSERT INTO suppression (address, reason, created_at) VALUES (?, ?, ?)",
          (address, _one_line(reason), r.time(now)))
    return True


# --- the sender's side -----------------------------------------------------------------


_ITEM_COLUMNS = ("id, ticket_id, template, automatic, recipients, envelope_from, message_id,"
                 " created_at, state, attempts, next_attempt_at, last_error, sent_at")


def _raw_item(r: Raw, row: Sequence[Any]) -> OutboxItem:
    (i, ticket_id, template, automatic, recipients, envelope_from, message_id, created_at,
     state, attempts, next_attempt_at, last_error, sent_at) = row
    created = r.read_time(created_at)
    assert created is not None
    return OutboxItem(
        id=i, ticket_id=ticket_id, template=template, automatic=bool(automatic),
        recipients=split_recipients(recipients), envelope_from=envelope_from,
        message_id=message_id, created_at=created, state=state, attempts=attempts,
        next_attempt_at=r.read_time(next_attempt_at), last_error=last_error,
        sent_at=r.read_time(sent_at),
    )


def claim_due(db: Database, *, now: datetime | None = None, limit: int = 20) -> list[Claimed]:
    """Lease up to `limit` pending rows whose time has come, oldest first (hand-written
    SQL: the sender runs this for every batch of outgoing mail)."""
    now = now or utcnow()
    with db.write_raw() as r:
        at = r.time(now)
        rows = r.rows(
            f"SELECT {_ITEM_COLUMNS}, claimed_until IS NOT NULL, raw FROM outbox WHERE state = ?"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            " AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?"
            + ("" if r.sqlite else " FOR UPDATE SKIP LOCKED"), (PENDING, at, at, limit))
        if rows:
            r.run(f"UPDATE outbox SET claimed_until = ? WHERE id IN ({placeholders(len(rows))})",
                  (r.time(now + LEASE), *(row[0] for row in rows)))
        return [Claimed(_raw_item(r, row[:-2]), bytes(row[-1]), bool(row[-2])) for row in rows]


@dataclass(frozen=True)
class Result:
    """What one delivery attempt did to a row."""

    outbox_id: int
    state: str  # SENT, PENDING (retry at `at`) or FAILED
    note: str | None = None  # the error, or a remark on a delivery (partly refused)
    at: datetime | None = None  # sent_at for SENT, next attempt for PENDING


def mark_sending(db: Database, outbox_id: int) -> None:
    """The transport is about to pass the point of no return with this row. A process
    that dies after this commit leaves the row `sending` (the database has it, flushed
    or not), and a crash in the time between the commit and the point of no return loses
    the message: so the commit does not wait for the disk, a flush that took
    milliseconds (most of the window, measured with bench/crash.py). A power cut may undo
    it, and then the row is sent again, as it was before this mark existed; the sender's
    record of the smarthost's 250 is durable."""
    with db.write_raw(durable=False) as r:
        r.run("UPDATE outbox SET state = ? WHERE id = ? AND state = ?",
              (SENDING, outbox_id, PENDING))


def record(db: Database, results: Sequence[Result]) -> None:
    """Store attempts in one transaction: rows leave the sender's lease."""
    if not results:
        return
    with db.write_raw() as r:
        r.many("UPDATE outbox SET state = ?, attempts = attempts + 1, claimed_until = NULL,"
               " last_error = ?, sent_at = ?, next_attempt_at = ? WHERE id = ?",
               [(x.state, _one_line(x.note) if x.note else None,
                 r.time(x.at) if x.state == SENT else None,
                 r.time(x.at) if x.state == PENDING else None, x.outbox_id) for x in results])


def recover(db: Database, *, now: datetime | None = None, sole: bool = False,
            ) -> list[OutboxItem]:
    """Rows that a dead sender left behind. `sending` rows whose lease ran out (all of
    them when `sole`) count as sent (PRESUMED_SENT) and are returned, for the log. With
    `sole` (no other sender can be alive: a daemon that owns its SQLite file) the leases
    of `pending` rows end now instead of after LEASE; they stay marked as claimed before,
    so that the transport checks for a copy of an earlier try (`Claimed.reclaimed`)."""
    now = now or utcnow()
    with db.write_raw() as r:
        at = r.time(now)
        lapsed = "" if sole else " AND claimed_until < ?"
        rows = r.rows(f"SELECT {_ITEM_COLUMNS} FROM outbox WHERE state = ?{lapsed}",
                      (SENDING, *([] if sole else [at])))
        if rows:
            r.run("UPDATE outbox SET state = ?, attempts = attempts + 1, claimed_until = NULL,"
                  f" last_error = ?, sent_at = ? WHERE state = ?{lapsed}",
                  (SENT, PRESUMED_SENT, at, SENDING, *([] if sole else [at])))
        if sole:
            r.run("UPDATE outbox SET claimed_until = ? WHERE state = ? AND claimed_until > ?",
                  (r.time(now - timedelta(seconds=1)), PENDING, at))
        return [_raw_item(r, row) for row in rows]


def release(db: Database, ids: list[int]) -> None:
    """Give claimed rows back unsent (the sender is stopping)."""
    if not ids:
        return
    with db.write_raw() as r:
        r.run(f"UPDATE outbox SET claimed_until = NULL WHERE id IN ({placeholders(len(ids))})",
              ids)


def retry(db: Database, outbox_id: int, *, now: datetime | None = None) -> bool:
    """`maildesk outbox retry`: a failed (or pending) message becomes due now, with a fresh
    retry schedule (the sender counts `max_retry` by attempts, see sender.backoff). A sent
    one only when it was presumed sent (`recover`): the operator found it missing."""
    now = now or utcnow()
    with db.write_raw() as r:
        return r.run("UPDATE outbox SET state = ?, attempts = 0, next_attempt_at = ?,"
                     " claimed_until = NULL, sent_at = NULL"
                     " WHERE id = ? AND (state != ? OR last_error = ?)",
                     (PENDING, r.time(now), outbox_id, SENT, PRESUMED_SENT)) > 0


def list_items(db: Readable, *, state: str | None = None, limit: int = 200) -> list[OutboxItem]:
    where = "WHERE state = ? " if state is not None else ""
    with db.read_raw() as r:
        rows = r.rows(f"SELECT {_ITEM_COLUMNS} FROM outbox {where}ORDER BY id DESC LIMIT ?",
                      (*([state] if state is not None else []), limit))
        return [_raw_item(r, row) for row in rows]


def backlog(db: Readable) -> int:
    """Outgoing messages waiting to be sent."""
    return _count(db, PENDING)


def failed_count(db: Readable) -> int:
    """Outgoing messages given up on (`maildesk outbox list --state failed`)."""
    return _count(db, FAILED)


def _count(db: Readable, state: str) -> int:
    with db.read_raw() as r:
        found = r.one("SELECT count(*) FROM outbox WHERE state = ?", (state,))
        return int(found[0]) if found else 0


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]
