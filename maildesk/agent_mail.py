"""What an agent's mail does to its ticket (SPEC §2.4): the plan, then its field changes.

`plan` decides before anything is stored, from who sent it (identify), the loop check,
the threading decision and the text, and changes nothing:

| the mail                                              | handling   | entry       | commands |
|-------------------------------------------------------|------------|-------------|----------|
| automatic (an out-of-office answering a notification) | automatic  | note        | no       |
| not verified (customer's reply address, no DKIM, ...) | unverified | note        | no       |
| a bad command, a closed ticket, a bad merge target    | rejected   | note        | no       |
| `#note`, or no words after the commands               | note       | note        | yes      |
| anything else                                         | reply      | agent_reply | yes      |

Only a reply is relayed to the customer; a rejected mail gets the agent a
`command_error` naming each bad line and why.

`threading` adjusts the threading decision for agent mail first (never by subject
alone; a closed ticket keeps it). `merge_step` and `apply` then run the commands on the
ticket record inside `ticketing.store_message`, before its one save: merge first (the
other commands change the merge target), then status, assignee, priority, tags, queue.
A relayed reply on an unassigned ticket assigns it to the agent who wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from maildesk import addresses, commands
from maildesk.agent_text import dropped_lines, new_text
from maildesk.commands import (
    Assign,
    Command,
    CommandError,
    Merge,
    Note,
    Requester,
    SetPriority,
    SetQueue,
    SetStatus,
    SetTags,
)
from maildesk.config import Settings
from maildesk.domain import EntryKind, ParsedMail, Sender, Status, ThreadDecision, ThreadRule
from maildesk.store import tickets
from maildesk.thread import ThreadLookup

if TYPE_CHECKING:
    from maildesk.store.raw import Tx

_NOTHING = commands.Parsed()


class Handling(StrEnum):
    REPLY = "reply"
    NOTE = "note"
    UNVERIFIED = "unverified"
    AUTOMATIC = "automatic"
    REJECTED = "rejected"


@dataclass(frozen=True)
class AgentPlan:
    agent: str
    verified: bool
    why: str  # verified or not, and why (identify)
    handling: Handling
    text: str  # what the entry stores; for a reply, what the customer gets
    commands: tuple[tuple[str, Command], ...] = ()
    errors: tuple[CommandError, ...] = ()
    withheld: tuple[str, ...] = ()  # what does not reach the customer, and why

    @property
    def entry_kind(self) -> EntryKind:
        return EntryKind.AGENT_REPLY if self.handling is Handling.REPLY else EntryKind.NOTE

    @property
    def runs_commands(self) -> bool:
        return self.handling in (Handling.REPLY, Handling.NOTE)

    @property
    def requester(self) -> str | None:
        found = next((c for _, c in self.commands if isinstance(c, Requester)), None)
        return found.address if found and self.runs_commands else None

    @property
    def merge_into(self) -> int | None:
        found = next((c for _, c in self.commands if isinstance(c, Merge)), None)
        return found.ticket_id if found and self.runs_commands else None

    def describe(self) -> list[str]:
        """Lines for `explain`: verified or not, each command, what is withheld."""
        lines = [f"agent {self.agent}: {'verified' if self.verified else 'NOT verified'}"
                 f" ({self.why}); handled as {self.handling.value}"]
        lines += [f"command {line!r}: {describe_command(c)}" for line, c in self.commands]
        lines += [f"command error {e.line!r}: {e.why}" for e in self.errors]
        lines += [f"withheld from the customer: {w}" for w in self.withheld]
        return lines


def threading(decision: ThreadDecision) -> ThreadDecision:
    """Agents' mail threads by what they answer (reply address, tag, references): it
    never joins by subject alone (their "Welcome" to one customer is not another's), and
    on a closed ticket it stays there (as a note; agent_mail refuses its commands)
    instead of opening a new ticket, as a customer's would."""
    if decision.rule is ThreadRule.SUBJECT_WINDOW:
        return ThreadDecision(None, ThreadRule.NEW_TICKET,
                              "no rule matched: new ticket (agent mail never joins by subject)")
    if decision.rule is not ThreadRule.REOPEN_CLOSED or not decision.link_to:
        return decision
    closed = decision.link_to[0]
    return ThreadDecision(closed, decision.rule,
                          f"{decision.reason.rpartition(';')[0]}; ticket #{closed} is closed: "
                          "agent mail is kept on it")


def context(settings: Settings, me: str) -> commands.Context:
    """What `#assignee`, `#queue` and `#requester` values are checked against."""
    names = [settings.default_queue, *(q.name for q in settings.queues)]
    return commands.Context(me=me, agents=settings.agent_addresses(),
                            queues={q.casefold(): q for q in names})


def plan(
    mail: ParsedMail, *, sender: Sender, automatic: str | None, decision: ThreadDecision,
    lookup: ThreadLookup, settings: Settings,
) -> AgentPlan:
    """How to handle this mail from an agent address (see the module docstring)."""
    agent = sender.address or ""
    ctx, secret = context(settings, agent), settings.desk.secret

    def made(handling: Handling, text: str, withheld: tuple[str, ...],
             parsed: commands.Parsed = _NOTHING,
             errors: tuple[CommandError, ...] = ()) -> AgentPlan:
        return AgentPlan(agent, sender.verified, sender.why, handling, text, parsed.commands,
                         errors, withheld)

    if automatic:
        return made(Handling.AUTOMATIC, mail.display_body,
                    (f"automatic mail ({automatic}): a note, never relayed",))
    if not sender.verified:
        return made(Handling.UNVERIFIED, mail.display_body,
                    ("unverified: stored as a note, no command runs",))
    parsed = commands.parse(mail.text, ctx)
    errors = parsed.errors + tuple(_ticket_errors(parsed, decision, lookup))
    if errors:
        return made(Handling.REJECTED, mail.display_body,
                    ("a command was refused: nothing applied, nothing relayed",), parsed, errors)
    private = [agent]
    if decision.ticket_id is not None:
        private.append(f"+{decision.ticket_id}-"
                       + addresses.agent_token(secret, decision.ticket_id, agent))
    text = new_text(mail.display_body, private=private)
    withheld = []
    if parsed.commands:
        withheld.append(f"{len(parsed.commands)} command line(s)")
    dropped = dropped_lines(mail.text, text)
    if dropped:
        withheld.append(f"{dropped} line(s) of quoted history, signature and notification")
    why_note = _why_note(parsed, decision, text)
    if why_note:
        return made(Handling.NOTE, text, (why_note, *withheld), parsed)
    return made(Handling.REPLY, text, tuple(withheld), parsed)


def _why_note(parsed: commands.Parsed, decision: ThreadDecision, text: str) -> str | None:
    if parsed.first(Note):
        return "#note: the whole reply is internal"
    if not text.strip():
        return "no words after the commands: nothing to relay"
    if decision.ticket_id is None and not parsed.first(Requester):
        return "a new ticket with no customer (#requester <email> names one): internal"
    return None


def _ticket_errors(
    parsed: commands.Parsed, decision: ThreadDecision, lookup: ThreadLookup
) -> list[CommandError]:
    """What only the stored tickets can tell: a closed ticket, the merge target."""
    errors: list[CommandError] = []
    current = lookup.ticket(decision.ticket_id) if decision.ticket_id is not None else None
    if current is not None and current.status is Status.CLOSED:
        errors.append(CommandError(
            "(the whole reply)", f"ticket #{current.id} is closed: nothing of this mail was "
            "applied or sent; to write to the customer, open a ticket with #requester"))
    for line, c in parsed.commands:
        if isinstance(c, Requester) and decision.ticket_id is not None:
            errors.append(CommandError(line, "#requester opens a ticket: write to the desk "
                                             "address, not to a ticket's reply address"))
        if not isinstance(c, Merge):
            continue
        target = lookup.ticket(c.ticket_id)
        if current is None:
            errors.append(CommandError(line, "#merge works on an existing ticket"))
        elif target is None:
            errors.append(CommandError(line, f"there is no ticket #{c.ticket_id}"))
        elif target.id == current.id:
            errors.append(CommandError(line, f"ticket #{current.id} cannot merge into itself"))
        elif target.status is Status.CLOSED:
            errors.append(CommandError(line, f"ticket #{target.id} is closed"))
    return errors


def merge_step(
    s: Tx, lookup: tickets.SessionLookup, ticket: tickets.Ticket, agent_plan: AgentPlan,
    now: datetime,
) -> tuple[tickets.Ticket, list[str]]:
    """`#merge <id>`: this ticket moves into the target (entries, references and
    participants; it stays as a closed pointer, linked); the target is the record to
    change and save from here on."""
    target_id = agent_plan.merge_into
    target = lookup.row(target_id) if target_id is not None else None
    if target is None or target.id == ticket.id:
        return ticket, []
    tickets.merge(s, lookup, target, ticket.id, now)
    tickets.link(s, target.id, ticket.id, f"#{ticket.id} merged into #{target.id} by "
                                          f"{agent_plan.agent}")
    return target, [f"merged #{ticket.id} into #{target.id}"]


def apply(ticket: tickets.Ticket, agent_plan: AgentPlan, now: datetime) -> list[str]:
    """The field commands, on the caller's record; what changed, one phrase each."""
    if not agent_plan.runs_commands:
        return []
    changes: list[str] = []
    for _, c in agent_plan.commands:
        changes += _run(ticket, c, now)
    ticket.agent_touched = True
    if agent_plan.handling is Handling.REPLY and ticket.assignee is None:
        ticket.assignee = agent_plan.agent
        changes.append(f"assigned to {agent_plan.agent} (first reply)")
    return changes


def _run(t: tickets.Ticket, c: Command, now: datetime) -> list[str]:
    if isinstance(c, SetStatus) and t.status != c.status.value:
        done = c.status in (Status.SOLVED, Status.CLOSED)
        t.status = c.status.value
        t.solved_at = (t.solved_at or now) if done else None
        t.closed_at = now if c.status is Status.CLOSED else None
        return [f"status {c.status.value}"]
    if isinstance(c, Assign) and t.assignee != c.address:
        t.assignee = c.address
        return [f"assigned to {c.address}"]
    if isinstance(c, SetPriority) and t.priority != c.priority.value:
        t.priority = c.priority.value
        return [f"priority {c.priority.value}"]
    if isinstance(c, SetQueue) and t.queue != c.queue:
        t.queue = c.queue
        return [f"queue {c.queue}"]
    if isinstance(c, SetTags):
        old = t.tags.split()
        new = [x for x in dict.fromkeys([*old, *c.add]) if x not in c.remove]
        t.tags = " ".join(new)
        return [f"tags {' '.join(new) or '(none)'}"] if new != old else []
    return []


def describe_command(c: Command) -> str:
    if isinstance(c, SetStatus):
        return f"status -> {c.status.value}"
    if isinstance(c, Assign):
        return f"assignee -> {c.address}"
    if isinstance(c, SetPriority):
        return f"priority -> {c.priority.value}"
    if isinstance(c, SetTags):
        return "tags " + " ".join([*(f"+{x}" for x in c.add), *(f"-{x}" for x in c.remove)])
    if isinstance(c, SetQueue):
        return f"queue -> {c.queue}"
    if isinstance(c, Merge):
        return f"merge into ticket #{c.ticket_id}"
    if isinstance(c, Requester):
        return f"open the ticket for {c.address}"
    return "internal note" if isinstance(c, Note) else "public reply"
