"""Who sent a message: a customer, or an agent, and whether the agent is verified (SPEC §2.4).

An agent address alone proves nothing (From is trivially forged). Agent mail
counts as the agent's only when it was sent to a ticket's reply address with
a valid token, or a trusted server vouches for it with DKIM for the agent's
domain in Authentication-Results.
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
    for r in recipients:
        ticket = addresses.ticket_from_reply_address(r, desk_addresses, secret)
        if ticket is not None:
            return Sender(addr, True, True, f"agent, sent to the reply address of ticket #{ticket}")
    domain = addr.rpartition("@")[2]
    for header in auth_results:
        if dkim_pass_for(header, domain, trusted_authserv_ids):
            return Sender(addr, True, True, f"agent, DKIM pass for {domain} by a trusted server")
    return Sender(addr, True, False, "agent address, but neither reply token nor trusted DKIM")


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
