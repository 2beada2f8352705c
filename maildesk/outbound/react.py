"""The mail a stored change causes: acknowledgements, agent notifications, rule replies,
and for agent mail the relay to the customer or the command error (`relay`).

`OutboundReactor` is the pipeline's Reactor. It runs inside the processing transaction,
so its outbox rows commit with the ticket change. Loop safety (SPEC §2.6): what classify
calls automatic or bulk (which covers noreply senders and our own X-Loop) is never
answered, and Composer holds the suppression list and the per-address hourly cap.
A notification goes to each agent on their own, with Reply-To their own reply address of
the ticket (`addresses.agent_reply_address`): their answer is then verified as theirs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from maildesk import addresses
from maildesk.config import Settings
from maildesk.domain import EntryKind, ParsedMail
from maildesk.logs import about
from maildesk.outbound import bounce, relay
from maildesk.outbound.compose import (
    Composer,
    Draft,
    MailKind,
    Queued,
    Thread,
    message_context,
)
from maildesk.outbound.render import Templates
from maildesk.pipeline import Change
from maildesk.store import tickets
from maildesk.store.tickets import Ticket

if TYPE_CHECKING:
    from maildesk.store.raw import Tx

log = logging.getLogger(__name__)
ACK = "ack"
NEW_TICKET_AGENT = "new_ticket_agent"
CUSTOMER_REPLY_AGENT = "customer_reply_agent"


class OutboundReactor:
    def __init__(self, settings: Settings, templates: Templates | None = None) -> None:
        self.settings = settings
        self.composer = Composer(settings, templates or Templates(settings.desk.templates))

    def react(self, session: Tx, change: Change) -> list[str]:
        if bounce.is_bounce(change):
            return bounce.handle(session, self.settings, change)
        if change.classification.automatic:
            return [f"no mail: automatic message ({change.classification.automatic})"]
        ticket = tickets.get_row(session, change.ticket_id)
        if ticket is None:
            return []
        if change.entry_kind != EntryKind.CUSTOMER.value:
            lines = relay.react(self.composer, session, ticket, change)
        else:
            lines = self._answer(session, ticket, change) + self._notify(session, ticket, change)
        for line in lines:
            log.info("inbox %s <%s>: %s", change.inbox_id, change.mail.message_id or "", line,
                     extra=about(inbox=change.inbox_id, message_id=change.mail.message_id,
                                 ticket=change.ticket_id))
        return lines

    def _answer(self, s: Tx, ticket: Ticket, change: Change) -> list[str]:
        """The ack on a new ticket, or the templates rules ask for instead of it."""
        names = list(change.rules.reply_templates) or ([ACK] if change.new_ticket else [])
        if not names:
            return []
        why_not = no_auto_reply(change)
        if why_not:
            return [f"no {', '.join(names)}: {why_not}"]
        to = reply_address(change.mail)
        assert to is not None  # no_auto_reply checked it
        context = {"message": message_context(change.mail)}
        return [self._queue(s, ticket, change, Draft(
            template=name, to=(to,), kind=MailKind.AUTO_REPLY,
            thread=Thread.answering(change.mail), context=context, entry_id=change.entry_id,
        )).note for name in names]

    def _notify(self, s: Tx, ticket: Ticket, change: Change) -> list[str]:
        """Tell the assignee (else the queue's agents) and the rule's `notify` addresses."""
        agents = [ticket.assignee] if ticket.assignee else list(
            self.settings.queue_agents(ticket.queue))
        targets = list(dict.fromkeys([*agents, *change.rules.notify]))
        name = NEW_TICKET_AGENT if change.new_ticket else CUSTOMER_REPLY_AGENT
        names = {a.email: a.name for a in self.settings.agents}
        context = {"message": message_context(change.mail)}
        desk = self.settings.desk
        return [self._queue(s, ticket, change, Draft(
            template=name, to=(addr,), kind=MailKind.NOTIFICATION,
            thread=Thread.answering(change.mail), entry_id=change.entry_id,
            context={**context, "agent": {"email": addr, "name": names.get(addr, "")}},
            # an address given to this agent alone; others (rules' `notify`) answer as before
            reply_to=addresses.agent_reply_address(desk.address, desk.secret, ticket.id, addr)
            if addr in names else None,
        )).note for addr in targets]

    def _queue(self, s: Tx, ticket: Ticket, change: Change, draft: Draft) -> Queued:
        return self.composer.queue(s, ticket, draft, change.now)


def no_auto_reply(change: Change) -> str | None:
    """Why this message must not be answered automatically, or None."""
    if change.classification.no_auto_reply:
        return change.classification.no_auto_reply
    if reply_address(change.mail) is None:
        return "no sender address to answer"
    return None


def reply_address(mail: ParsedMail) -> str | None:
    """Replies go to Reply-To when present, else From; never to the envelope sender."""
    return mail.reply_to[0] if mail.reply_to else mail.from_addr
