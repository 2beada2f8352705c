"""A message's identity, from its header block alone: Message-ID and content hash.

They are the dedupe key (SPEC §2.1: same Message-ID and same content hash, or the
hash alone without a Message-ID), computed at intake for every message. Standard
library only: `maildesk ingest --queue` runs once per message from an MTA and must
not import mail-parser or SQLAlchemy to compute them.
"""

from __future__ import annotations

import hashlib
import re

_MSGID = re.compile(r"<([^<>]*)>")
_EOL = re.compile(rb"\r\n|\r|\n")
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]*):[ \t]*")  # as email.feedparser.headerRE
_IDENTITY_HEADERS = frozenset({b"from", b"to", b"cc", b"subject", b"date", b"message-id"})
_CONTROLS = dict.fromkeys([*range(32), 127], " ")
_FIELD_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")  # a field, obsolete WSP too
_OBS_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]+:")
_OBS_FIELD_LINE = re.compile(rb"(?m)^([\x21-\x39\x3b-\x7e]+)[ \t]+:")
_STRAY_LINES = 4  # lines looked at above the header block
_STRAY_LINE_BYTES = 4096
# Fields that a header block starts with (the first one after stray lines must be one).
_KNOWN_FIRST = frozenset({
    b"from", b"sender", b"to", b"cc", b"subject", b"date", b"message-id", b"received",
    b"return-path", b"reply-to", b"mime-version", b"content-type", b"delivered-to",
    b"in-reply-to", b"references", b"envelope-to", b"authentication-results",
    b"dkim-signature", b"arc-seal", b"arc-message-signature", b"arc-authentication-results",
    b"thread-topic", b"thread-index", b"user-agent", b"list-id", b"precedence",
    b"auto-submitted", b"importance", b"organization", b"resent-from", b"resent-date"})


def readable(raw: bytes) -> bytes:
    """The message as the parsers should read it: from its header block on (past a leading
    mbox `From ` line, blank lines, or a few stray lines a forwarding tool put above it),
    and with obsolete `Name  :` fields (RFC 5322 §4.5) written `Name:`. The same bytes
    when nothing needs doing, which is nearly always; cheap and linear in any case."""
    start = header_start(raw)
    if start:
        raw = raw[start:]
    if _OBS_FIELD.match(raw):
        end = _blank_line(raw)
        raw = _OBS_FIELD_LINE.sub(rb"\1:", raw[:end]) + raw[end:]
    return raw


def header_start(raw: bytes) -> int:
    """Where the header block starts: 0, or past the lines above it that are no header
    field (an mbox `From ` line, blank lines, a note a forwarding tool added), at most
    `_STRAY_LINES` of them and only when a known header field follows."""
    if _FIELD_LINE.match(raw):
        return 0
    pos = 0
    for _ in range(_STRAY_LINES):
        eol = _EOL.search(raw, pos, pos + _STRAY_LINE_BYTES)
        if eol is None:
            return 0
        pos = eol.end()
        field = _FIELD_LINE.match(raw, pos)
        if field is not None:
            name = field[1].lower()
            return pos if name in _KNOWN_FIRST or name.startswith(b"x-") else 0
    return 0


def _blank_line(raw: bytes) -> int:
    """Where the header block ends (at its blank line), or the end of the message."""
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    return min(ends) + 1 if ends else len(raw)


def identity(raw: bytes) -> tuple[str | None, str]:
    """(header_message_id, content_hash), reading the header block once."""
    try:
        raw = readable(raw)
        fields, body_start = header_fields(raw)
    except Exception:
        return None, hashlib.sha256(bytes(raw)).hexdigest()
    return _message_id(fields), _content_hash(raw, fields, body_start)


def header_message_id(raw: bytes) -> str | None:
    """Message-ID from the header block alone, normalised as parse_message does it."""
    try:
        return _message_id(header_fields(readable(raw))[0])
    except Exception:
        return None


def _message_id(fields: list[tuple[bytes, bytes]]) -> str | None:
    try:
        value = next((v for name, v in fields if name == b"message-id"), None)
        if value is not None:
            ids = msg_ids(_header_text(value.decode("ascii", "surrogateescape")))
            return ids[0] if ids else None
    except Exception:
        pass
    return None


def _header_text(value: str) -> str:
    """mimetext.header_text, without importing it for the plain ASCII ids of nearly all mail."""
    if value.isascii() and "=?" not in value:
        return " ".join(value.translate(_CONTROLS).split())
    from maildesk.mimetext import header_text

    return header_text(value)


def content_hash(raw: bytes) -> str:
    """sha256 of what survives redelivery: identity headers and body, never trace headers."""
    return identity(raw)[1]


def _content_hash(raw: bytes, fields: list[tuple[bytes, bytes]], body_start: int) -> str:
    try:
        body = raw[body_start:].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        body = b"\n".join(line.rstrip(b" \t") for line in body.split(b"\n")).rstrip()
        digest = hashlib.sha256()
        for name, value in fields:
            if name in _IDENTITY_HEADERS:
                digest.update(name + b":" + b" ".join(value.split()) + b"\n")
        digest.update(b"\n")
        digest.update(body)
        return digest.hexdigest()
    except Exception:
        return hashlib.sha256(bytes(raw)).hexdigest()


def msg_ids(value: str | None) -> list[str]:
    """Message ids in order, without <> or whitespace; bare tokens when no <> at all."""
    if not value:
        return []
    tokens = _MSGID.findall(value) or value.split()
    return list(dict.fromkeys(t for t in ("".join(t.split()) for t in tokens) if t))


def header_fields(raw: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """Header fields (lowercased name, unfolded value) and where the body starts,
    split by the rules of email.feedparser without parsing anything else."""
    fields: list[tuple[bytes, list[bytes]]] = []
    pos = 0
    while pos < len(raw):
        eol = _EOL.search(raw, pos)
        end, after = (eol.start(), eol.end()) if eol else (len(raw), len(raw))
        line = raw[pos:end]
        if not line:
            pos = after  # the blank line: the body follows it
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1].append(line.strip())
        elif match := _FIELD.match(line):
            fields.append((match[1].lower(), [line[match.end():].rstrip()]))
        elif not line.startswith(b"From "):  # email skips mbox separators too
            break  # not a header line: the body starts with it
        pos = after
    return [(name, b" ".join(parts)) for name, parts in fields], pos
