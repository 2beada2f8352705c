"""SQLModel tables: the database schema, and nothing else.

Times are timezone-aware UTC datetimes (sqlmodel's UTCDateTime refuses naive
ones). Changing a table here needs a new
Alembic revision in maildesk/migrations/versions.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class InboxRow(SQLModel, table=True):
    """One message as it arrived, committed before anything else happens: its envelope,
    identity and processing state. Its bytes are in `inbox_raw`."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_dedupe", "content_hash", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime
    source: str  # smtp | imap | cli
    origin: str | None = None  # imap "mailbox/folder/uid", smtp peer, file name
    envelope_from: str | None = None  # "" is the null sender <>
    envelope_to: str = ""  # comma-separated RCPT TO addresses
    message_id: str | None = Field(default=None, max_length=998)
    content_hash: str = Field(max_length=64)
    size: int
    state: str = Field(default="queued", index=True, max_length=16)
    reason: str | None = None
    attempts: int = 0
    claimed_until: datetime | None = None  # lease of the worker processing it
    ticket_id: int | None = Field(default=None, index=True)
    entry_id: int | None = None
    processed_at: datetime | None = None


class InboxRawRow(SQLModel, table=True):
    """The bytes of an inbox message, written once and never changed.

    Apart from the inbox row, because processing updates that row (state, ticket, times):
    SQLite writes a changed row out whole, and with the bytes inside, every state change
    copied the message again, into the WAL and then into the database file."""

    __tablename__ = "inbox_raw"

    inbox_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class TicketRow(SQLModel, table=True):
    __tablename__ = "ticket"
    # `tickets list --status S` / `--queue Q`: a page is read from one of these in id
    # order (merged-away tickets, merged_into set, are left out by the index range), and
    # its total counts index entries only, however many tickets there are. Auto-close
    # reads pending tickets by how long they have waited (maildesk.autoclose).
    # `report --since` reads the live tickets of its period from ix_ticket_live_created.
    __table_args__ = (Index("ix_ticket_status_list", "status", "merged_into", "id"),
                      Index("ix_ticket_queue_list", "queue", "merged_into", "id"),
                      Index("ix_ticket_status_paused_since", "status", "paused_since"),
                      Index("ix_ticket_live_created", "merged_into", "created_at"))

    id: int | None = Field(default=None, primary_key=True)
    subject: str = ""
    subject_key: str = Field(default="", index=True)  # normalised, for the subject window
    status: str = Field(default="new", max_length=16)
    priority: str = Field(default="normal", max_length=16)
    queue: str = Field(default="general")
    assignee: str | None = None
    requester: str = ""
    reply_to: str | None = None
    tags: str = ""  # space-separated
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime  # last customer or agent message (subject window counts from it)
    last_customer_at: datetime | None = None
    first_response_at: datetime | None = None
    agent_touched: bool = False  # any agent action: such tickets are linked, never merged
    merged_into: int | None = None  # indexed by ix_ticket_live_created
    solved_at: datetime | None = None
    closed_at: datetime | None = None
    first_response_due: datetime | None = None
    next_response_due: datetime | None = None
    resolution_due: datetime | None = None
    # Service levels (maildesk.sla, maildesk.deadlines): the policy that set the due times;
    # the customer message that started the open next-response clock and the agent reply
    # that stopped it, with the count of earlier clocks met and breached; since when the
    # ticket waits (pending or solved: the SLA clock is stopped; ended pauses are in
    # sla_pause); and the next instant at which a reminder or breach may be due, which
    # is all the SLA scan reads (one index range, however many tickets are open).
    sla_policy: str | None = None
    next_response_from: datetime | None = None
    next_response_at: datetime | None = None
    next_response_met: int = 0
    next_response_breached: int = 0
    paused_since: datetime | None = None
    sla_next_at: datetime | None = Field(default=None, index=True)
    # Business seconds from creation to the first response and to done, in the calendar
    # of the ticket's policy (else the desk's default hours), kept by maildesk.deadlines:
    # `maildesk report` reads them rather than walk a calendar for every ticket it counts.
    first_response_business: float | None = None
    resolution_business: float | None = None


class ParticipantRow(SQLModel, table=True):
    __tablename__ = "participant"
    __table_args__ = (UniqueConstraint("ticket_id", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(index=True)
    address: str = Field(index=True)
    role: str = "cc"  # requester | cc


class EntryRow(SQLModel, table=True):
    __tablename__ = "entry"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(index=True)
    inbox_id: int | None = Field(default=None, index=True)
    kind: str = Field(max_length=16)  # customer | agent_reply | note | system
    from_addr: str | None = None
    subject: str = ""
    body: str = ""  # display body: quotes and signature stripped
    created_at: datetime
    message_id: str | None = Field(default=None, index=True, max_length=998)
    verified: bool | None = None
    thread_rule: str = ""
    thread_reason: str = ""


class DeferredRow(SQLModel, table=True):
    """A stored message whose body and outgoing mail are still to do.

    Processing threads and stores a message from its headers alone and writes this row
    in the same transaction; the follow-up (Pipeline.follow_up) reads the whole message,
    fills the entry's body and attachments, queues its outgoing mail and deletes the row,
    again in one transaction. The facts the mail depends on are kept here as they were
    when the message was stored."""

    __tablename__ = "deferred"

    inbox_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    entry_id: int
    new_ticket: bool
    reply_templates: str = ""  # rules' reply_template names, space-separated
    notify: str = ""  # rules' notify addresses, space-separated
    created_at: datetime


class MessageRefRow(SQLModel, table=True):
    """Every id a ticket knows: its messages' own ids, the ids they reference,
    and Outlook Thread-Index roots. Threading looks a new message's ids up here,
    which covers both directions (reply before original and original before reply)."""

    __tablename__ = "message_ref"
    __table_args__ = (UniqueConstraint("key", "ticket_id"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(index=True, max_length=998)  # message id, or "ti:<root>"
    ticket_id: int = Field(index=True)
    kind: str = "own"  # own | ref | thread_index


class AttachmentRow(SQLModel, table=True):
    __tablename__ = "attachment"

    id: int | None = Field(default=None, primary_key=True)
    entry_id: int = Field(index=True)
    filename: str
    content_type: str
    size: int
    sha256: str
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class TicketLinkRow(SQLModel, table=True):
    __tablename__ = "ticket_link"
    __table_args__ = (UniqueConstraint("ticket_id", "other_id"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(index=True)
    other_id: int = Field(index=True)
    reason: str = ""


class OutboxRow(SQLModel, table=True):
    """A fully rendered outgoing message, written in the ticket change's transaction."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, index=True)
    entry_id: int | None = None
    template: str = ""
    automatic: bool = True  # counts against loop.max_auto_replies_per_hour
    recipients: str = ""  # comma-separated
    envelope_from: str = ""
    message_id: str = Field(index=True, unique=True, max_length=998)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime
    state: str = Field(default="pending", index=True, max_length=16)  # pending|sent|failed
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, index=True)
    claimed_until: datetime | None = None
    last_error: str | None = None
    sent_at: datetime | None = None


class AutoReplyRow(SQLModel, table=True):
    """One automatic message to one mailbox (`addresses.mailbox`): the hourly cap counts
    these (an index range scan, however large the outbox grows)."""

    __tablename__ = "auto_reply"
    __table_args__ = (Index("ix_auto_reply_address_at", "address", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    address: str
    created_at: datetime


class SuppressionRow(SQLModel, table=True):
    __tablename__ = "suppression"

    address: str = Field(primary_key=True)
    reason: str = ""
    created_at: datetime


class MailboxStateRow(SQLModel, table=True):
    """IMAP checkpoint per mailbox and folder."""

    __tablename__ = "mailbox_state"

    mailbox: str = Field(primary_key=True)
    folder: str = Field(primary_key=True)
    # Unsigned 32-bit values in IMAP: BIGINT, since PostgreSQL's INTEGER is signed.
    uidvalidity: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    last_uid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime


class SlaPauseRow(SQLModel, table=True):
    """A span in which a ticket waited (pending, or solved until it reopened): its SLA
    clock stood still. The span in progress is the ticket's `paused_since`."""

    __tablename__ = "sla_pause"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(index=True)
    started_at: datetime
    ended_at: datetime


class SlaMailRow(SQLModel, table=True):
    """One scheduled mail about a ticket, written in the transaction of its outbox rows.

    The unique key (ticket, target, due time, kind) is what makes a reminder, a breach or
    an auto-close happen once: a restart, a second scanner or a retried transaction finds
    the key taken and sends nothing. A due time that moves is a new key."""

    __tablename__ = "sla_mail"
    __table_args__ = (UniqueConstraint("ticket_id", "target", "due_at", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int
    target: str = Field(max_length=32)  # first_response | next_response | resolution
    due_at: datetime
    kind: str = Field(max_length=16)  # reminder | breach | auto_close
    recipients: str = ""  # comma-separated
    created_at: datetime


class DigestMailRow(SQLModel, table=True):
    """The daily digest of one agent for one local day (desk.timezone): once a day."""

    __tablename__ = "digest_mail"

    agent: str = Field(primary_key=True)
    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD
    tickets: int = 0  # how many it listed (0: nothing was sent)
    created_at: datetime
