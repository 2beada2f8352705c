"""Jinja2 templates to text and HTML, and headers to a safe RFC 5322 message.

The only importer of jinja2. A template `NAME` is `NAME.txt` (required) and `NAME.html`
(optional); the first line of the text template is `Subject: ...`, the rest is the body.
HTML is autoescaped, because customer-written subjects and bodies end up in it. Header
values pass through `header_text`, which drops CR, LF and other controls: a subject such
as "hi\\r\\nBcc: victim" can never add a header. Attachments (an agent's, relayed) go as
base64 parts with a checked media type and a sanitised file name (`safe_filename`;
RFC 2231 for names that are not ASCII).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, formataddr
from functools import cache
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, TemplateError, select_autoescape

from maildesk.domain import Attachment
from maildesk.mimetext import safe_filename

_CONTROLS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9.-]+")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}"
_MEDIA_TYPE = re.compile(f"{_TOKEN}/{_TOKEN}")
MAX_SUBJECT = 250
MAX_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters; fold at spaces
MAX_MSG_ID = 900  # longer ids are dropped: "In-Reply-To: <id>" must fit the 998 limit
MAX_ADDRESS = 254  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its brackets
MAX_REFERENCES = 20  # keep the newest ids: long chains make headers clients truncate anyway
FILETIME_EPOCH = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns units


class RenderError(Exception):
    """A template is missing or broken; the message that needed it is not sent."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


class Templates:
    """One folder of templates, loaded once: SIGHUP builds a new instance."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = Environment(
            loader=FileSystemLoader(str(folder)),
            autoescape=select_autoescape(enabled_extensions=("html", "htm"), default=False,
                                         default_for_string=False),
            keep_trailing_newline=True, auto_reload=False, trim_blocks=True, lstrip_blocks=True,
        )

    def exists(self, name: str) -> bool:
        return self._files(name)[0]

    @cache  # noqa: B019 - one instance per folder and reload, never many
    def _files(self, name: str) -> tuple[bool, bool]:
        """Whether NAME.txt and NAME.html are there (looked up once per instance)."""
        return (self.folder / f"{name}.txt").is_file(), (self.folder / f"{name}.html").is_file()

    def check(self, names: Sequence[str]) -> list[str]:
        """Problems with the named templates (missing, syntax errors), one line each."""
        problems = []
        for name in names:
            if not self.exists(name):
                problems.append(f"template {name!r}: {self.folder / (name + '.txt')} is missing")
                continue
            for suffix in (".txt", ".html"):
                if suffix == ".html" and not self._files(name)[1]:
                    continue
                try:
                    self.env.get_template(name + suffix)
                except TemplateError as exc:
                    problems.append(f"template {name}{suffix}: {exc}")
        return problems

    def render(self, name: str, context: Mapping[str, object]) -> Rendered:
        if not _TEMPLATE_NAME.fullmatch(name) or not self.exists(name):
            raise RenderError(f"no template {name!r} in {self.folder}")
        try:
            text = self.env.get_template(f"{name}.txt").render(context)
            html = None
            if self._files(name)[1]:
                html = self.env.get_template(f"{name}.html").render(context)
        except TemplateError as exc:
            raise RenderError(f"template {name!r}: {exc}") from exc
        subject, body = _split_subject(text)
        return Rendered(subject=subject, text=body, html=html)


def _split_subject(text: str) -> tuple[str, str]:
    first, _, rest = text.partition("\n")
    if first.lower().startswith("subject:"):
        return header_text(first[len("subject:"):]), rest.lstrip("\n")
    return "", text


def header_text(value: str, limit: int = MAX_SUBJECT) -> str:
    """One safe header line: controls (CR, LF, NUL, ...) become spaces, runs collapse."""
    return " ".join(_CONTROLS.sub(" ", value).split())[:limit]


def safe_address(value: str) -> str | None:
    """A bare address usable in a header and an SMTP envelope, or None: printable ASCII
    only (we speak no SMTPUTF8, and a header is written as ASCII), at most MAX_ADDRESS
    characters (what a relay will take)."""
    value = value.strip()
    return value if (len(value) <= MAX_ADDRESS and value.isascii()
                     and _ADDRESS.fullmatch(value)) else None


def new_message_id(domain: str) -> str:
    """A fresh Message-ID of our own domain, without angle brackets."""
    return f"{secrets.token_hex(16)}@{domain}"


def thread_index(parent: str | None, now: float | None = None) -> str:
    """Continue an Outlook Thread-Index (5 bytes per reply), or start a conversation."""
    filetime = int((now if now is not None else time.time()) * 10_000_000) + FILETIME_EPOCH
    raw = _decode_index(parent)
    if raw is None:
        return base64.b64encode(filetime.to_bytes(8, "big")[:6] + os.urandom(16)).decode()
    header_time = int.from_bytes(raw[:6] + b"\0\0", "big")
    delta = max(0, filetime - header_time)
    # 31 bits of the time delta at Outlook's precision; the top bit flags a coarser unit
    fine = delta < 1 << 49
    block = (delta >> 18) & 0x7FFFFFFF if fine else (1 << 31) | ((delta >> 23) & 0x7FFFFFFF)
    child = block.to_bytes(4, "big") + os.urandom(1)
    return base64.b64encode(raw + child).decode()


def _decode_index(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except ValueError:
        return None
    return raw if len(raw) >= 22 and (len(raw) - 22) % 5 == 0 else None


@dataclass(frozen=True)
class Headers:
    """Everything an outgoing message says about itself, before sanitising."""

    from_name: str
    from_addr: str
    to: Sequence[str]
    subject: str
    message_id: str
    date: datetime
    reply_to: str | None = None
    cc: Sequence[str] = ()
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    thread_topic: str | None = None
    thread_index: str | None = None
    auto_submitted: str | None = None  # "auto-replied" | "auto-generated" | None
    x_loop: str | None = None


def build_message(h: Headers, body: Rendered, attachments: Sequence[Attachment] = ()) -> bytes:
    """The message as CRLF bytes, ready for SMTP (the Maildir transport converts to LF),
    with `attachments` as base64 parts after the text (multipart/mixed).

    Written by hand rather than through email.message: the header registry costs a few
    milliseconds per message, and every value here is already validated or sanitised."""
    refs = [r for r in (_msg_id(x) for x in h.references) if r][-MAX_REFERENCES:]
    in_reply_to = _msg_id(h.in_reply_to) if h.in_reply_to else None
    lines = [
        ("From", formataddr((header_text(h.from_name, 100), h.from_addr), "utf-8")),
        ("To", _address_list(h.to)),
        ("Cc", _address_list(h.cc) or None),
        ("Reply-To", h.reply_to),
        ("Subject", _encoded(h.subject, len("Subject: "))),
        ("Date", format_datetime(h.date)),
        ("Message-ID", f"<{h.message_id}>"),
        ("In-Reply-To", f"<{in_reply_to}>" if in_reply_to else None),
        ("References", "\r\n ".join(f"<{r}>" for r in refs) or None),
        ("Thread-Topic", _encoded(h.thread_topic, len("Thread-Topic: "))
         if h.thread_topic else None),
        ("Thread-Index", header_text(h.thread_index, 900) if h.thread_index else None),
        ("Auto-Submitted", h.auto_submitted),
        # Exchange: no out-of-office replies to automatic mail
        ("X-Auto-Response-Suppress", "All" if h.auto_submitted else None),
        ("X-Loop", h.x_loop),
        ("MIME-Version", "1.0"),
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in lines if value).encode("ascii")
    if not attachments:
        return head + _body_entity(body)
    return head + _multipart("mixed", [_body_entity(body), *map(_attachment_part, attachments)])


def _address_list(addresses: Sequence[str]) -> str:
    """Addresses folded onto lines of about 78 characters: a relay to a ticket's 2,000
    CCs made one 56 KB header line (RFC 5322 allows 998)."""
    lines = [""]
    for address in addresses:
        if lines[-1] and len(lines[-1]) + len(address) > 72:
            lines.append("")
        lines[-1] += (", " if lines[-1] else "") + address
    return ",\r\n ".join(lines)


def _body_entity(body: Rendered) -> bytes:
    """The text part, or text and HTML as multipart/alternative (headers included)."""
    if body.html is None:
        return _text_part("plain", body.text)
    return _multipart("alternative", [_text_part("plain", body.text),
                                      _text_part("html", body.html)])


def _multipart(subtype: str, parts: Sequence[bytes]) -> bytes:
    boundary = ("=_" + secrets.token_hex(12)).encode()
    out = b'Content-Type: multipart/' + subtype.encode() + b'; boundary="' + boundary + b'"\r\n'
    out += b"\r\n" + b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return out + b"--" + boundary + b"--\r\n"


def _attachment_part(a: Attachment) -> bytes:
    """One attachment: a checked media type, a safe file name, base64 in 76-character
    lines. A name that is not ASCII goes as RFC 2231 `filename*` (and an RFC 2047 word
    in the Content-Type `name`, which Outlook reads)."""
    ctype = a.content_type.lower() if _MEDIA_TYPE.fullmatch(a.content_type) else ""
    ctype = ctype or "application/octet-stream"
    name = safe_filename(header_text(a.filename, 200), ctype)
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        disposition, type_name = f'filename="{name}"', f'"{name}"'
    else:
        disposition = "filename*=utf-8''" + quote(name, safe="")
        type_name = '"' + _encoded(name).replace("\r\n ", " ") + '"'
    data = base64.encodebytes(a.data).replace(b"\n", b"\r\n")
    return (f"Content-Type: {ctype}; name={type_name}\r\n"
            f"Content-Disposition: attachment; {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii") + data


def _text_part(subtype: str, text: str) -> bytes:
    """Headers and quoted-printable UTF-8 body of one text part, CRLF line ends."""
    data = "\n".join(text.splitlines()).encode("utf-8") + b"\n"
    qp = binascii.b2a_qp(data, quotetabs=False, istext=True).replace(b"\n", b"\r\n")
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii") + qp


def _encoded(value: str, offset: int = 0) -> str:
    """A sanitised unstructured header value, folded at spaces within MAX_LINE (the first
    line starts `offset` characters in, after the header's name); RFC 2047 words when it
    is not ASCII: base64 words of at most 39 bytes (64 characters with their markers),
    split between characters, one per folded line. ASCII text that a client would read as
    encoded words ("=?...?=", e.g. a subject whose words we could not decode) is encoded
    too, so it shows as written instead of being decoded into whatever bytes (NUL,
    controls) it claims."""
    text = header_text(value)
    if text.isascii() and "=?" not in text:
        return _folded(text.split(" "), offset)
    words, chunk = [], b""
    for ch in text:
        data = ch.encode("utf-8")
        if len(chunk) + len(data) > 39:
            words.append(chunk)
            chunk = b""
        chunk += data
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def _folded(words: Sequence[str], offset: int) -> str:
    """Words joined by spaces, a fold (CRLF, space) instead of the space wherever the line
    would pass MAX_LINE; a word longer than a line stays whole on a line of its own."""
    lines: list[str] = []
    line, room = "", MAX_LINE - offset
    for word in words:
        if line and len(line) + 1 + len(word) > room:
            lines.append(line)
            line, room = word, MAX_LINE - 1
        else:
            line = f"{line} {word}" if line else word
    return "\r\n ".join([*lines, line])


def _msg_id(value: str) -> str | None:
    """A message id fit for a header: ASCII, no brackets, spaces or controls, one '@', at
    most MAX_MSG_ID characters."""
    v = header_text(value, MAX_MSG_ID + 3).strip("<> ")
    ok = (v and len(v) <= MAX_MSG_ID and v.isascii() and " " not in v and "<" not in v
          and ">" not in v)
    return v if ok and "@" in v else None
