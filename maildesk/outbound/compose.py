"""Queue one outgoing message: recipients checked, template rendered, outbox row written.

Every path that sends mail (acknowledgements, notifications, relayed agent replies, SLA
mail) goes through `Composer.queue`, inside the transaction of the ticket change, so
suppression, the per-address hourly cap and the loop headers hold everywhere and nothing
is queued for a change that rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from maildesk import addresses
from maildesk.agent_text import MARKER
from maildesk.config import Settings
from maildesk.domain import Attachment, ParsedMail
from maildesk.outbound.render import (
    MAX_SUBJECT,
    Headers,
    RenderError,
    Templates,
    build_message,
    new_message_id,
    safe_address,
    thread_index,
)
from maildesk.store import outbox
from maildesk.store.tickets import Ticket
from maildesk.thread import thread_index_key

if TYPE_CHECKING:
    from maildesk.store.raw import Tx

log = logging.getLogger(__name__)


class MailKind(StrEnum):
    """Why we write: it decides Auto-Submitted and whether the hourly cap applies."""

    AUTO_REPLY = "auto-replied"  # answers someone's mail: capped per address (SPEC §2.6)
    NOTIFICATION = "auto-generated"  # tells agents something happened
    PERSONAL = "personal"  # an agent's own words, relayed: not automatic


@dataclass(frozen=True)
class Thread:
    """Threading headers of a message that answers another (SPEC §2.2, last paragraph)."""

    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    thread_index: str | None = None

    @classmethod
    def answering(cls, mail: ParsedMail | None) -> Thread:
        """In-Reply-To their Message-ID; References theirs plus it; Thread-Index continued."""
        if mail is None:
            return cls()
        refs = list(mail.references) or list(mail.in_reply_to)
        if mail.message_id:
            refs.append(mail.message_id)
        return cls(mail.message_id, tuple(dict.fromkeys(refs)), mail.thread_index)


@dataclass(frozen=True)
class Draft:
    template: str
    to: tuple[str, ...]
    kind: MailKind
    thread: Thread = Thread()
    context: Mapping[str, object] = field(default_factory=dict)
    entry_id: int | None = None
    cc: tuple[str, ...] = ()
    reply_to: str | None = None  # None: the ticket's customer reply address
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Queued:
    """The outcome of one draft: the outbox id (None when withheld) and a line for logs."""

    outbox_id: int | None
    recipients: tuple[str, ...]
    note: str


class Composer:
    def __init__(self, settings: Settings, templates: Templates) -> None:
        self.settings = settings
        self.templates = templates

    def queue(self, s: Tx, ticket: Ticket | None, draft: Draft, now: datetime) -> Queued:
        """Queue one draft about `ticket` (None: about no single ticket, e.g. the digest)."""
        allowed, withheld = self._recipients(s, draft, now)
        what = f"{draft.template} for ticket #{ticket.id}" if ticket else draft.template
        if not allowed:
            return Queued(None, (), f"withheld {what}: {'; '.join(withheld) or 'no recipient'}")
        named = {a.strip().lower() for a in draft.to}
        to = tuple(a for a in allowed if a in named) or allowed
        cc = tuple(a for a in allowed if a not in to)
        try:
            rendered = self.templates.render(draft.template, self._context(ticket, draft, to))
        except RenderError as exc:
            log.error("%s: %s: not sent", what, exc)
            return Queued(None, (), f"withheld {what}: {exc}")
        desk = self.settings.desk
        assert desk.message_id_domain is not None
        message_id = new_message_id(desk.message_id_domain)
        index = thread_index(draft.thread.thread_index, now.timestamp())
        headers = Headers(
            from_name=desk.name, from_addr=desk.address, to=to, cc=cc,
            subject=_tagged(rendered.subject or f"Re: {ticket.subject}", desk.ticket_prefix,
                            ticket.id) if ticket else rendered.subject or draft.template,
            message_id=message_id, date=now,
            reply_to=draft.reply_to or (
                addresses.reply_address(desk.address, desk.secret, ticket.id) if ticket else None),
            in_reply_to=draft.thread.in_reply_to, references=draft.thread.references,
            thread_topic=ticket.subject if ticket else None, thread_index=index,
            auto_submitted=None if draft.kind is MailKind.PERSONAL else draft.kind.value,
            x_loop=desk.address,
        )
        started = thread_index_key(draft.thread.thread_index) is None  # a root of our own
        outbox_id = outbox.reserve(
            s, message_id=message_id, raw=build_message(headers, rendered, draft.attachments),
            ticket_id=ticket.id if ticket else None,
            entry_id=draft.entry_id, template=draft.template,
            automatic=draft.kind is MailKind.AUTO_REPLY, recipients=allowed, now=now,
            envelope_from=lambda i: addresses.bounce_address(desk.address, desk.secret, i),
            thread_index_root=thread_index_key(index) if started else None,
        )
        note = "; ".join(withheld)
        return Queued(outbox_id, allowed,
                      f"queued {what} to {', '.join(allowed)} (outbox {outbox_id})"
                      + (f"; not to {note}" if note else ""))

    def _recipients(self, s: Tx, draft: Draft, now: datetime) -> tuple[tuple[str, ...],
                                                                             list[str]]:
        """Who may get this draft, and why the others may not."""
        desks = self.settings.desk_addresses()
        withheld: list[str] = []
        wanted: list[str] = []
        for raw in dict.fromkeys(a.strip().lower() for a in (*draft.to, *draft.cc)):
            addr = safe_address(raw)
            if addr is None:
                withheld.append(f"{raw!r} is not a usable address")
            elif addresses.is_desk_recipient(addr, desks):
                withheld.append(f"{addr} is a desk address")
            else:
                wanted.append(addr)
        for addr in sorted(outbox.suppressed(s, wanted)):
            wanted.remove(addr)
            withheld.append(f"{addr} is suppressed (an earlier message bounced)")
        if draft.kind is MailKind.AUTO_REPLY:
            cap = self.settings.loop.max_auto_replies_per_hour
            since = now - timedelta(hours=1)
            for addr in list(wanted):
                if outbox.auto_replies_since(s, addr, since) >= cap:
                    wanted.remove(addr)
                    box = addresses.mailbox(addr)
                    withheld.append(f"{addr} already got {cap} automatic replies this hour"
                                    + (f" (counted as {box})" if box != addr else ""))
        return tuple(wanted), withheld

    def _context(self, ticket: Ticket | None, draft: Draft, to: Sequence[str]
                 ) -> dict[str, object]:
        desk = self.settings.desk
        base: dict[str, object] = {
            "desk": {"name": desk.name, "address": desk.address},
            "recipient": to[0],
            "recipients": list(to),
            "marker": MARKER,  # the first line of mail to agents: their reply is cut there
        }
        if ticket is None:
            return {**base, **draft.context}
        base["ticket"] = {
            "id": ticket.id, "tag": addresses.subject_tag(desk.ticket_prefix, ticket.id),
            "subject": ticket.subject, "status": ticket.status, "priority": ticket.priority,
            "queue": ticket.queue, "assignee": ticket.assignee,
            "requester": ticket.requester, "tags": ticket.tags.split(),
            "reply_address": addresses.reply_address(desk.address, desk.secret, ticket.id),
        }
        return {**base, **draft.context}


def message_context(mail: ParsedMail) -> dict[str, object]:
    """What templates may show of a received message."""
    return {
        "from": mail.from_addr or "", "from_name": mail.from_name, "subject": mail.subject,
        "body": mail.display_body, "date": mail.date,
        "attachments": [a.filename for a in mail.attachments],
    }


def _tagged(subject: str, prefix: str, ticket_id: int) -> str:
    """The subject with this ticket's tag, added when the template left it out (or a long
    subject pushed it past MAX_SUBJECT: the subject is shortened, the tag kept)."""
    tag = addresses.subject_tag(prefix, ticket_id)
    if tag.lower() in subject[:MAX_SUBJECT].lower():
        return subject
    return f"{subject[:MAX_SUBJECT - len(tag) - 1].rstrip()} {tag}"
