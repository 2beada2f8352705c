"""Who sent a message: a customer, or an agent, and whether the agent is verified (SPEC §2.4).

An agent address alone proves nothing (From is trivially forged), and neither does
the ticket's customer reply address: the customer and everyone they CC have it. Agent
mail counts as the agent's only when it was sent to that agent's own reply address
of a ticket (`addresses.agent_reply_address`, given only in mail to that agent), or a
trusted server vouches for it with DKIM for the agent's domain in
Authentication-Results. `why` says which, or why not, for `explain`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from maildesk import addresses
from maildesk.domain import ParsedMail, Sender

_METHOD = re.compile(r"\bdkim\s*=\s*(\w+)(?P<props>[^;]*)", re.I)
_HEADER_D = re.compile(r"\bheader\.d\s*=\s*([^\s;]+)", re.I)


def identify(
    mail: ParsedMail,
    *,
    agents: frozenset[str],
    recipients: Iterable[str],
    desk_addresses: frozenset[str],
    secret: str,
    trusted_authserv_ids: Iterable[str],
    auth_results: Iterable[str] = (),
) -> Sender:
    addr = mail.from_addr
    if not addr or addr not in agents:
        return Sender(addr, is_agent=False, verified=False, why="not an agent address")
    recipients = list(recipients)
    for r in recipients:
        ticket = addresses.agent_ticket_from_address(r, desk_addresses, secret, addr)
        if ticket is not None:
            return Sender(addr, True, True,
                          f"agent, sent to their own reply address of ticket #{ticket}")
    domain = addr.rpartition("@")[2]
    for header in auth_results:
        if dkim_pass_for(header, domain, trusted_authserv_ids):
            return Sender(addr, True, True, f"agent, DKIM pass for {domain} by a trusted server")
    return Sender(addr, True, False, "agent address, but " + _not_theirs(
        recipients, agents=agents, desk_addresses=desk_addresses, secret=secret, addr=addr))


def _not_theirs(recipients: list[str], *, agents: frozenset[str],
                desk_addresses: frozenset[str], secret: str, addr: str) -> str:
    """Why mail from an agent address is not verified, for `explain` and the entry."""
    for r in recipients:
        target = addresses.reply_target(r, desk_addresses, secret, agents)
        if target is None:
            continue
        if target.agent is None:
            return (f"sent to the customer's reply address of ticket #{target.ticket_id}, "
                    "which proves nothing, and no trusted DKIM")
        return (f"sent to another agent's reply address of ticket #{target.ticket_id}, "
                "and no trusted DKIM")
    return "not sent to their own reply address, and no trusted DKIM"


def dkim_pass_for(header: str, domain: str, trusted: Iterable[str]) -> bool:
    """Does this Authentication-Results header, from a trusted authserv-id, say dkim=pass
    for `domain`?"""
    authserv, _, results = header.partition(";")
    authserv_id = authserv.strip().split()[0].lower() if authserv.strip() else ""
    if authserv_id not in {t.lower() for t in trusted}:
        return False
    for m in _METHOD.finditer(results):
        if m.group(1).lower() != "pass":
            continue
        d = _HEADER_D.search(m.group("props"))
        if d and d.group(1).strip().lower().rstrip(".") == domain.lower():
            return True
    return False
