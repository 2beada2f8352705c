"""The new words of an agent's reply: what is stored as its text and relayed (SPEC §2.4).

Starts from the display body (`parse` trims quoted history and signatures) and:
- removes the command block at the top (`commands.strip_commands`);
- puts back the sign-off ("Best regards,\\nAlice") that the reply parser counts as a
  signature, read from the full text right after the display body, while a "-- "
  signature block, "Sent from my phone" and the quoted history stay out;
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
_SIGN_OFF_CHARS = 30
_NAME_CHARS = 40
_CLOSINGS = re.compile(
    r"(best|kind|warm)?\s*(regards|wishes)|thanks?\b|thank you|cheers|sincerely|yours|"
    r"saludos|atentamente|gracias|gr(ü|ue)(ß|ss)e|viele|danke|mit freundlichen|cordialement|"
    r"merci|bien (à|a) vous|groeten|met vriendelijke|bedankt|best\b", re.I)
_ATTRIBUTION = re.compile(
    r"^(from|sent|to|cc|date|subject|von|gesendet|an|betreff|datum|de|envoy[ée]|[àa]|objet|"
    r"enviado|para|asunto|fecha|van|verzonden|aan|onderwerp)\s*:|"
    r"\b(wrote|schrieb|a [ée]crit|escribi[óo]|schreef)\b.*:\s*$|"
    r"^-{2,}\s*(original message|urspr[üu]ngliche nachricht|message d'origine|"
    r"mensaje original|oorspronkelijk bericht)|^_{5,}$", re.I)


def new_text(text: str, display_body: str, *, private: Sequence[str] = ()) -> str:
    """The agent's new words, from the mail's full text and its display body."""
    body = _with_sign_off(strip_commands(text), strip_commands(display_body))
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


def _with_sign_off(full: str, body: str) -> str:
    """`body` and, when the full text goes on with a sign-off right after it, that
    sign-off: a closing line ("Thanks,") and the name under it (blank lines between
    them, as text made from HTML has, are skipped)."""
    after = _after(full.split("\n"), [line.strip() for line in body.split("\n") if line.strip()])
    if after is None:
        return body
    lines = [line.strip() for line in after if line.strip()][:2]  # blank lines: HTML
    if not lines or _ends_reply(lines[0]) or len(lines[0]) > _SIGN_OFF_CHARS \
            or not _CLOSINGS.match(lines[0]):
        return body
    if len(lines) == 2 and (_ends_reply(lines[1]) or len(lines[1]) > _NAME_CHARS
                            or "@" in lines[1] or any(ch.isdigit() for ch in lines[1])):
        lines = lines[:1]
    return body.rstrip() + "\n\n" + "\n".join(lines)


def _after(full: list[str], wanted: list[str]) -> list[str] | None:
    """The lines of `full` after the last of `wanted`, found in order; None when they
    are not all there (the display body was rewrapped: leave it as it is)."""
    pos = 0
    for line in wanted:
        while pos < len(full) and full[pos].strip() != line:
            pos += 1
        if pos == len(full):
            return None
        pos += 1
    return full[pos:]


def _ends_reply(line: str) -> bool:
    lower = line.lower()
    return (line.startswith(">") or line.rstrip() == "--" or MARKER.lower() in lower
            or lower.startswith(("sent from", "get outlook", "enviado desde", "von meinem"))
            or _ATTRIBUTION.search(line) is not None)
