"""Domain types that cross module boundaries.

Only the standard library is imported here: every other module may depend on
this one, and it depends on nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    SOLVED = "solved"
    CLOSED = "closed"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class EntryKind(StrEnum):
    CUSTOMER = "customer"
    AGENT_REPLY = "agent_reply"
    NOTE = "note"
    SYSTEM = "system"


class InboxState(StrEnum):
    QUEUED = "queued"
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    FAILED = "failed"


class Source(StrEnum):
    SMTP = "smtp"
    IMAP = "imap"
    CLI = "cli"


class ThreadRule(StrEnum):
    """Which threading rule of SPEC §2.2 put a message on its ticket."""

    TOKEN_ADDRESS = "token_address"
    SUBJECT_TAG = "subject_tag"
    REFERENCES = "references"
    THREAD_INDEX = "thread_index"
    SUBJECT_WINDOW = "subject_window"
    NEW_TICKET = "new_ticket"
    REOPEN_CLOSED = "new_ticket_after_closed"


@dataclass(frozen=True)
class Attachment:
    filename: str  # already sanitised: safe as a single path component
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class DeliveryStatus:
    """What a delivery status notification (RFC 3464) says about one recipient."""

    recipient: str | None
    action: str | None  # failed | delayed | delivered | relayed | expanded
    status: str | None  # e.g. "5.1.1"

    @property
    def is_hard_bounce(self) -> bool:
        return (self.action or "").lower() == "failed" and (self.status or "").startswith("5")


@dataclass(frozen=True)
class DeliveryReport:
    """A parsed DSN: per-recipient results and the Message-ID of the message it reports on."""

    statuses: tuple[DeliveryStatus, ...]
    original_message_id: str | None


@dataclass(frozen=True)
class ParsedMail:
    """One message as the pipeline sees it; built by parse.parse_message.

    Message ids are stored without angle brackets. Addresses are lowercased.
    `headers` maps lowercased header names to their first decoded value.
    """

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    thread_index: str | None
    subject: str
    from_addr: str | None
    from_name: str
    reply_to: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: datetime | None
    headers: dict[str, str]
    text: str  # full text body (text/plain, or text converted from HTML)
    html: str | None
    display_body: str  # text minus quoted history and signature
    attachments: tuple[Attachment, ...] = ()
    dsn: DeliveryReport | None = None
    defects: tuple[str, ...] = ()
    parser: str = "mail-parser"  # or "email" when the stdlib fallback was used
    sender_addr: str | None = None  # the Sender header's address (SPEC §2.3 fallback)
    # parse.parse_headers: every header field as above, body fields empty (text, html,
    # display_body, attachments, dsn, defects); parse_message fills them later.
    headers_only: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Classification:
    """Loop and bulk facts about one message (SPEC §2.3, §2.6).

    `automatic` is set for machine-written mail (auto-replies, bounces, DSNs):
    such mail never creates a ticket by default and never triggers anything.
    `bulk` is set for list and bulk mail: written by people, but never auto-answered.
    """

    automatic: str | None = None  # reason, e.g. "Auto-Submitted: auto-replied"
    bulk: str | None = None  # reason, e.g. "List-Id present"
    bounce: bool = False

    @property
    def no_auto_reply(self) -> str | None:
        return self.automatic or self.bulk


@dataclass(frozen=True)
class ThreadDecision:
    ticket_id: int | None  # None: open a new ticket
    rule: ThreadRule
    reason: str
    link_to: tuple[int, ...] = ()  # tickets to link the (new or joined) ticket with
    merge: tuple[int, ...] = ()  # tickets to merge into ticket_id


@dataclass(frozen=True)
class Sender:
    address: str | None
    is_agent: bool
    verified: bool  # agent mail only: token address or trusted DKIM
    why: str


@dataclass
class TicketView:
    """A ticket as the CLI and the outbound side read it."""

    id: int
    subject: str
    status: Status
    priority: Priority
    queue: str
    assignee: str | None
    requester: str
    reply_to: str | None
    tags: list[str]
    cc: list[str]
    created_at: datetime
    updated_at: datetime
    merged_into: int | None = None
    linked: list[int] = field(default_factory=list)
    # service levels (maildesk.sla): the policy, each due time and when it was met
    sla_policy: str | None = None
    first_response_due: datetime | None = None
    first_response_at: datetime | None = None
    next_response_due: datetime | None = None
    next_response_at: datetime | None = None
    resolution_due: datetime | None = None
    solved_at: datetime | None = None


@dataclass
class EntryView:
    id: int
    ticket_id: int
    kind: EntryKind
    from_addr: str | None
    subject: str
    body: str
    created_at: datetime
    message_id: str | None
    verified: bool | None
    thread_rule: str
    thread_reason: str
    inbox_id: int | None
    attachments: list[tuple[str, str, int]] = field(default_factory=list)  # name, type, size
    pending: bool = False  # stored from its headers: body and attachments still to come


@dataclass(frozen=True)
class RuleOutcome:
    """What the `[[rules]]` that fired ask for (SPEC §2.5); later rules override earlier."""

    fired: tuple[str, ...] = ()
    queue: str | None = None
    priority: Priority | None = None
    assignee: str | None = None  # an address, "round_robin" or "least_open"
    tags: tuple[str, ...] = ()
    status: Status | None = None
    reply_templates: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()
    drop: bool = False
