"""Ticket reply addresses, VERP bounce addresses and the subject tag.

`support+42-k3j9q2xa@example.com` routes a reply to ticket 42; the token is a
truncated HMAC of the ticket id with `desk.secret`, so it cannot be guessed. That is
the customer's reply address: customers and whoever they CC see it, so it threads
but proves nothing about who writes. Each agent has a reply address of their own per
ticket, same shape, whose token is an HMAC of the ticket id *and* the agent's
lowercased address (purpose `agent:<address>`): it appears only in mail sent to that
agent, so mail to it from that agent is theirs (SPEC §2.4). `reply_target` tells the
two apart. Tokens are compared in constant time.
`bounces+1234-9qk2m1zt@example.com` is the envelope sender of outbox message
1234, so a bounce names exactly the message that bounced.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

TOKEN_LENGTH = 8
BOUNCE_LOCAL = "bounces"


def token(secret: str, purpose: str, number: int) -> str:
    mac = _keyed(secret).copy()
    mac.update(f"{purpose}:{number}".encode())
    # 5 bytes are 8 base32 characters: the token, without encoding the rest of the digest
    return base64.b32encode(mac.digest()[:5]).decode("ascii").lower()[:TOKEN_LENGTH]


@lru_cache(maxsize=8)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC with the key already mixed in: copying it skips the key schedule."""
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.lower().rpartition("@")
    return local, domain


@lru_cache(maxsize=4096)  # an HMAC per call; asked several times for each outgoing mail
def reply_address(desk_address: str, secret: str, ticket_id: int) -> str:
    local, domain = _split(desk_address)
    return f"{local}+{ticket_id}-{token(secret, 'ticket', ticket_id)}@{domain}"


@lru_cache(maxsize=4096)  # one per notification, asked again when its reply comes
def agent_reply_address(desk_address: str, secret: str, ticket_id: int, agent: str) -> str:
    """The reply address of ticket `ticket_id` that only `agent` is given."""
    local, domain = _split(desk_address)
    return f"{local}+{ticket_id}-{agent_token(secret, ticket_id, agent)}@{domain}"


def agent_token(secret: str, ticket_id: int, agent: str) -> str:
    return token(secret, f"agent:{agent.strip().lower()}", ticket_id)


def bounce_address(desk_address: str, secret: str, outbox_id: int) -> str:
    _, domain = _split(desk_address)
    return f"{BOUNCE_LOCAL}+{outbox_id}-{token(secret, 'bounce', outbox_id)}@{domain}"


_PLUS = re.compile(r"^(?P<base>[^+@]+)\+(?P<id>\d{1,12})-(?P<token>[a-z2-7]+)$")


def _plus_parts(address: str) -> tuple[str, int, str, str] | None:
    local, domain = _split(address)
    m = _PLUS.match(local)
    if not m:
        return None
    return m["base"], int(m["id"]), m["token"], domain


@dataclass(frozen=True)
class ReplyTarget:
    """What a valid reply address names: the ticket, and the agent it was given to
    (None: the customer's reply address)."""

    ticket_id: int
    agent: str | None = None


def _desk_parts(address: str, desk_addresses: Iterable[str]) -> tuple[int, str] | None:
    """(ticket id, token) of a `+` form of a desk address, else None."""
    parts = _plus_parts(address)
    if parts is None:
        return None
    base, number, tok, domain = parts
    if f"{base}@{domain}" not in {a.lower() for a in desk_addresses}:
        return None
    return number, tok


def ticket_from_reply_address(
    address: str, desk_addresses: Iterable[str], secret: str
) -> int | None:
    """The ticket id of a customer reply address with a valid token, else None."""
    found = _desk_parts(address, desk_addresses)
    if found is None:
        return None
    number, tok = found
    return number if hmac.compare_digest(tok, token(secret, "ticket", number)) else None


def reply_target(
    address: str, desk_addresses: Iterable[str], secret: str, agents: Iterable[str] = (),
    *, likely: str | None = None,
) -> ReplyTarget | None:
    """Which reply address this is: the customer's of a ticket, one agent's of a ticket,
    or none (a bad token, another domain). The customer token is tried first, then the
    `likely` agent's (the sender's), then every other agent's for that ticket id: an
    HMAC each, so a desk with many agents pays for them only on a stranger's mail."""
    found = _desk_parts(address, desk_addresses)
    if found is None:
        return None
    number, tok = found
    if hmac.compare_digest(tok, token(secret, "ticket", number)):
        return ReplyTarget(number)
    ordered = [likely] if likely else []
    for agent in [*ordered, *(a for a in agents if a != likely)]:
        if hmac.compare_digest(tok, agent_token(secret, number, agent)):
            return ReplyTarget(number, agent.strip().lower())
    return None


def agent_ticket_from_address(
    address: str, desk_addresses: Iterable[str], secret: str, agent: str
) -> int | None:
    """The ticket id when `address` is `agent`'s own reply address of it, else None."""
    found = _desk_parts(address, desk_addresses)
    if found is None:
        return None
    number, tok = found
    return number if hmac.compare_digest(tok, agent_token(secret, number, agent)) else None


def outbox_from_bounce_address(address: str, desk_address: str, secret: str) -> int | None:
    parts = _plus_parts(address)
    if parts is None:
        return None
    base, number, tok, domain = parts
    if base != BOUNCE_LOCAL or domain != _split(desk_address)[1]:
        return None
    return number if hmac.compare_digest(tok, token(secret, "bounce", number)) else None


def is_desk_recipient(address: str, desk_addresses: Iterable[str]) -> bool:
    """RCPT policy: a desk address, one of its `+` forms, or the bounce address."""
    local, domain = _split(address)
    base = local.split("+", 1)[0]
    desks = {a.lower() for a in desk_addresses}
    if f"{base}@{domain}" in desks:
        return True
    return base == BOUNCE_LOCAL and "+" in local and any(_split(d)[1] == domain for d in desks)


def is_postmaster(address: str, desk_addresses: Iterable[str]) -> bool:
    """`postmaster` at one of the desks' domains, or bare: RFC 5321 §4.5.1 says a server
    that delivers mail for a domain accepts it (case-insensitively). The desk takes it as
    mail to the desk: a ticket in the default queue, which a person reads."""
    local, domain = _split(address)
    if not local:  # "postmaster" with no domain
        local, domain = domain, ""
    return local == "postmaster" and (
        not domain or any(_split(d)[1] == domain for d in desk_addresses))


def mailbox(address: str) -> str:
    """The mailbox an address delivers to, for the hourly cap on automatic replies:
    lowercased, without a `+` subaddress. `help+7-k3j9q2xa@b.example` (another help
    desk's reply address of its ticket 7) is help@b.example's mailbox: answers to each of
    its tickets' addresses, and to its plain address, count together (bench/abuse.py)."""
    local, at, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}" if at and local else address.strip().lower()


def subject_tag(prefix: str, ticket_id: int) -> str:
    return f"[{prefix}#{ticket_id}]"


def tag_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(r"\[\s*" + re.escape(prefix) + r"\s*#\s*(\d{1,12})\s*\]", re.IGNORECASE)
