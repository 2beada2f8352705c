"""Address header values read as a mail client shows them, when they are not clean.

Real mail carries From values that an RFC 5322 parser reads as nothing: `Test
test@example.com` (no angle brackets), `<john smith@example.com>` (spaces in the local
part), `joe@example.com.` (a trailing dot), `Bob <bob@example.com` (never closed).
Mail clients still show a sender for them; `salvage` reads them the same way, and
`pick_from` chooses the From mailbox of a message that has several From headers (the
first one that gives an address). The strict reading is parse.py's (mail-parser's);
this module only repairs what it gives up on.

Pure and linear: only `str` methods and anchored regexes over at most `_LIMIT` characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_LIMIT = 4096  # of one value: a From value is a few dozen characters
_ANGLE = re.compile(r"<([^<>]*)>?")
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\x00-\x1f\x7f]+@(?:[^\W_]|-)+(?:\.(?:[^\W_]|-)+)*")
_EDGE = "\"'()<>[],;:"

Pair = tuple[str, str]  # (display name, address)


def clean_address(value: str) -> str | None:
    """`value` as an address a mail client would write to: no whitespace, no trailing
    dot, lowercased; None when it is no local@domain."""
    address = "".join(value.split()).strip(_EDGE).rstrip(".").lower()
    return address if _ADDRESS.fullmatch(address) else None


def salvage(value: str) -> Pair | None:
    """The (name, address) a mail client shows for a value no parser reads: the first
    angle-bracketed address (spaces and a trailing dot dropped), else the first word with
    an @ (the words before it are the name); None when there is no address at all."""
    value = value[:_LIMIT]
    angle = next((m for m in _ANGLE.finditer(value) if "@" in m[1]), None)
    if angle is not None:
        address = clean_address(angle[1])
        if address:
            return _name(value[: angle.start()]), address
    words = value.replace(",", " ").split()
    for i, word in enumerate(words):
        if "@" in word:
            address = clean_address(word)
            if address:
                return _name(" ".join(words[:i])), address
    return None


def _name(text: str) -> str:
    return " ".join(text.split()).strip(" \"'")


def pick_from(values: Sequence[str], read: Callable[[str], Sequence[Pair]]) -> Pair | None:
    """The From mailbox: of the From headers in order, the first whose value gives an
    address (`read`, else `salvage`); None when none does."""
    for value in values:
        for name, address in read(value):
            clean = "".join(address.split()).rstrip(".").lower()
            local, at, domain = clean.rpartition("@")
            if at and local and domain and clean.isprintable():  # no NUL, no controls
                return name, clean
        found = salvage(value)
        if found:
            return found
    return None
