"""An agent's mail on its way out (SPEC §2.4): the relay to the customer, or the
`command_error` back to the agent.

Called by OutboundReactor inside the processing transaction and sent through
Composer.queue like all our mail, so the suppression list and the loop headers hold
and the outbox row commits with the ticket change (a message is processed once, so
a relay is queued once). A relay is a person's mail (MailKind.PERSONAL: no
Auto-Submitted, no hourly cap). It goes from the desk address to the requester (their
Reply-To, else From) and the CC participants, never to an agent or a desk address;
its Reply-To is the customer's reply address; In-Reply-To, References and
Thread-Index continue the customer's own last message, so it threads in their
client; the agent's attachments go with it. Nothing in it names the agent's address
or token: its text is `AgentPlan.text` (see agent_text), signed with the agent's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maildesk import addresses
from maildesk.agent_mail import AgentPlan, Handling
from maildesk.config import Settings
from maildesk.outbound.compose import Composer, Draft, MailKind, Thread
from maildesk.parse import parse_headers, parse_message
from maildesk.pipeline import Change
from maildesk.store import inbox, tickets
from maildesk.store.tickets import Ticket

if TYPE_CHECKING:
    from maildesk.store.raw import Tx

AGENT_REPLY = "agent_reply"
COMMAND_ERROR = "command_error"


def react(composer: Composer, s: Tx, ticket: Ticket, change: Change) -> list[str]:
    """The mail an agent's stored mail causes, one line per message queued or not."""
    plan = change.agent
    if plan is None:
        return []
    if plan.handling is Handling.REJECTED:
        return [command_error(composer, s, ticket, change, plan)]
    if plan.handling is not Handling.REPLY:
        return [f"not relayed ({plan.handling.value}): {'; '.join(plan.withheld)}"]
    return [relay(composer, s, ticket, change, plan)]


def relay(composer: Composer, s: Tx, ticket: Ticket, change: Change,
          plan: AgentPlan) -> str:
    to, cc = customers(s, composer.settings, ticket)
    names = {a.email: a.name for a in composer.settings.agents}
    return composer.queue(s, ticket, Draft(
        template=AGENT_REPLY, to=to, cc=cc, kind=MailKind.PERSONAL,
        thread=customer_thread(s, ticket.id), entry_id=change.entry_id,
        context={"reply": {"body": plan.text, "agent_name": names.get(plan.agent, "")}},
        attachments=change.mail.attachments,
    ), change.now).note


def command_error(composer: Composer, s: Tx, ticket: Ticket, change: Change,
                  plan: AgentPlan) -> str:
    """Tell the agent which lines were refused and why; their reply goes to their own
    address of the ticket again."""
    desk = composer.settings.desk
    return composer.queue(s, ticket, Draft(
        template=COMMAND_ERROR, to=(plan.agent,), kind=MailKind.NOTIFICATION,
        thread=Thread.answering(change.mail), entry_id=change.entry_id,
        reply_to=addresses.agent_reply_address(desk.address, desk.secret, ticket.id,
                                               plan.agent),
        context={"errors": [{"line": e.line, "why": e.why} for e in plan.errors],
                 "text": change.mail.display_body},
    ), change.now).note


def customers(s: Tx, settings: Settings, ticket: Ticket) -> tuple[tuple[str, ...],
                                                                         tuple[str, ...]]:
    """(To, Cc) of a relay: the requester's reply address, and the CC participants;
    never an agent or a desk address."""
    agents, desks = settings.agent_addresses(), settings.desk_addresses()

    def customer(a: str) -> bool:
        return a not in agents and not addresses.is_desk_recipient(a, desks)

    requester = ticket.reply_to or ticket.requester
    to = (requester,) if customer(requester) else ()
    cc = tuple(a for a, role in tickets.participants(s, ticket.id)
               if role != "requester" and a not in (requester, ticket.requester) and customer(a))
    return to, cc


def customer_thread(s: Tx, ticket_id: int) -> Thread:
    """Threading headers answering the customer's last message on the ticket."""
    last = tickets.last_customer_message(s, ticket_id)
    if last is None:
        return Thread()
    message_id, inbox_id = last
    head = inbox.raw_head(s, inbox_id) if inbox_id is not None else None
    if head is None:
        return Thread(message_id, (message_id,) if message_id else ())
    return Thread.answering(parse_headers(head) or parse_message(head))
