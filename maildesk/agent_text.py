"""The new words of an agent's reply: what is stored as its text and relayed (SPEC §2.4).

Starts from the display body (`reply_text` trims quoted history and signatures and keeps
the sign-off) and:
- removes the command block at the top (`commands.strip_commands`);
- cuts at the notification's marker line (`MARKER`, the first line of every mail we
  send agents), quoted or not, with the attribution lines above it ("On ... wrote:",
  an Outlook "From:/Sent:" block): a client that quotes in a way the parser misses
  still relays nothing of the notification;
- cuts at the first line naming the agent's address or reply token (`private`): such
  a line is a quote header ("Alice <alice@...> wrote:"), and the customer must never
  see either.
Pure text in, text out; standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from maildesk.commands import strip_commands

MARKER = "##- Please type your reply above this line -##"
_ATTRIBUTION = re.compile(
    r"^(from|sent|to|cc|date|subject|von|gesendet|an|betreff|datum|de|envoy[ée]|[àa]|objet|"
    r"enviado|para|asunto|fecha|van|verzonden|aan|onderwerp)\s*:|"
    r"\b(wrote|schrieb|a [ée]crit|escribi[óo]|schreef)\b.*:\s*$|"
    r"^-{2,}\s*(original message|urspr[üu]ngliche nachricht|message d'origine|"
    r"mensaje original|oorspronkelijk bericht)|^_{5,}$", re.I)


def new_text(display_body: str, *, private: Sequence[str] = ()) -> str:
    """The agent's new words, from the mail's display body."""
    body = strip_commands(display_body)
    lines = body.split("\n")
    cut = _first(lines, lambda line: MARKER.lower() in line.lower())
    secrets = [p.lower() for p in private if p]
    cut = min(cut, _first(lines, lambda line: any(p in line.lower() for p in secrets)))
    return "\n".join(_drop_attribution(lines[:cut])).strip()


def dropped_lines(text: str, relayed: str) -> int:
    """How many non-blank lines of the reply (commands aside) are not relayed."""
    return max(0, _count(strip_commands(text)) - _count(relayed))


def _count(text: str) -> int:
    return sum(1 for line in text.split("\n") if line.strip())


def _first(lines: list[str], match: Callable[[str], bool]) -> int:
    return next((i for i, line in enumerate(lines) if match(line)), len(lines))


def _drop_attribution(lines: list[str]) -> list[str]:
    """Without the blank lines and quote headers that end it."""
    end = len(lines)
    while end and (not lines[end - 1].strip() or _ATTRIBUTION.search(lines[end - 1].strip())
                   or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    return lines[:end]
