"""Raw message bytes -> ParsedMail, plus the cheap helpers intake needs.

The only module importing mail-parser and mail-parser-reply. mail-parser parses
the MIME tree, the bodies, the addresses and the date; when it raises (it does on
some malformed mail, see corpus/PARSE-BASELINE.md) the stdlib `email` parser takes
over and ParsedMail.parser is "email". Nothing here raises because of content.
"""

from __future__ import annotations

import email
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from email.message import Message
from email.parser import BytesParser, HeaderParser
from functools import lru_cache
from typing import Any

import mailparser
from mailparser.dates import parse_mail_date
from mailparser.utils import get_addresses
from mailparser_reply.parser import EmailMessage

from maildesk.domain import Attachment, DeliveryReport, DeliveryStatus, ParsedMail
from maildesk.identity import header_message_id, msg_ids
from maildesk.mimetext import decode_bytes, header_text, html_to_text, safe_filename, unescape_8bit

log = logging.getLogger(__name__)
# mail-parser warns about every text part it does not render (each DSN part, each
# calendar invite): noise about content, not information for the operator.
logging.getLogger("mailparser").setLevel(logging.ERROR)

REPLY_LANGUAGES = ("en", "de", "es", "fr", "nl")
# mail-parser-reply's regexes are quadratic in line length: it reads at most this
# much, with longer lines wrapped, so a hostile body costs milliseconds, not minutes.
_REPLY_SCAN_CHARS = 32_000
_REPLY_LINE_CHARS = 400
# Past this, headers skip mail-parser (its header decoding is quadratic) and
# address lists are cut: no help desk needs a 64 KiB To header.
_HEADER_BLOCK_LIMIT = 256 * 1024
_ADDRESS_HEADER_LIMIT = 64 * 1024

_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to")
_RAW_KEPT = frozenset({*_ADDRESS_HEADERS, "date"})
_DSN_FIELDS = ("final-recipient", "original-recipient", "action", "status")
_STATUS_CODE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def parse_message(raw: bytes) -> ParsedMail:
    """Parse one message; never raises for any content."""
    if _header_block_end(raw) >= 0:  # past that, mail-parser's header decoding is quadratic
        try:
            return _parse_with_mailparser(raw)
        except Exception:
            log.debug("mail-parser failed, using the stdlib parser", exc_info=True)
    try:
        return _parse_with_stdlib(raw)
    except Exception as exc:  # e.g. RecursionError on absurd MIME nesting
        log.warning("message kept as raw text, no parser could read it: %r", exc)
        return _unparsed(raw)


def parse_headers(raw: bytes) -> ParsedMail | None:
    """Only the header block: every header field exactly as parse_message gives it, and
    empty body fields (`headers_only`). A fifth of the cost of a whole parse on typical
    mail, far less with attachments: what threading needs, before the body is read.
    None when only a whole parse can tell (a huge or unreadable header block)."""
    end = _header_block_end(raw)
    if end < 0:
        return None
    try:
        msg = _HEAD_PARSER.parsebytes(raw[:end], headersonly=True)
        return _build(msg, [], [], [], {}, (), "headers", headers_only=True)
    except Exception:
        log.debug("header block unreadable on its own", exc_info=True)
        return None


_HEAD_PARSER = BytesParser()  # compat32, as mail-parser and the stdlib fallback use


def _header_block_end(raw: bytes) -> int:
    """Where the header block ends (after its blank line, or the whole message when it
    has no body); -1 past _HEADER_BLOCK_LIMIT."""
    limit = min(len(raw), _HEADER_BLOCK_LIMIT)
    crlf = raw.find(b"\n\r\n", 0, limit)
    lf = raw.find(b"\n\n", 0, crlf if crlf >= 0 else limit)  # CRLF mail: not the whole body
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return len(raw) if len(raw) <= _HEADER_BLOCK_LIMIT else -1


# --- the two parsers ---------------------------------------------------------------


class _MailParser(mailparser.MailParser):  # type: ignore[misc]  # mail-parser is untyped
    """mail-parser without its `mail` and `mail_partial` dicts.

    MailParser.parse() ends by building both (for mail_json and friends), which decodes
    and NFC-normalizes every header twice: about a sixth of its parse time. We read the
    typed properties (bodies, defects, addresses, date) instead; none of them derives
    from these dicts, so `mail`/`mail_partial` are simply left empty.
    """

    def _make_mail(self, complete: bool = True) -> dict[str, Any]:
        return {}


def _parse_with_mailparser(raw: bytes) -> ParsedMail:
    parsed = _MailParser.from_bytes(raw)
    bodies, attachments = _split_parts(parsed.message)
    plain, html = parsed.text_plain, parsed.text_html
    defects = tuple(sorted(parsed.defects_categories))
    if ("CharsetDecodeDefect" in defects or not "".join(plain + html).strip()
            or any("\x1b" in t for t in plain + html)):
        # mail-parser leaves 7-bit ISO-2022-JP undecoded, knows no charset
        # supersets, and drops the text of a multipart whose boundary never came.
        plain, html = _decode_bodies(bodies)
    known = {"from": parsed.from_, "to": parsed.to, "cc": parsed.cc,
             "reply-to": parsed.reply_to, "date": parsed.date}
    return _build(parsed.message, plain, html, attachments, known, defects, "mail-parser")


def _parse_with_stdlib(raw: bytes) -> ParsedMail:
    msg = email.message_from_bytes(raw)  # compat32 like mail-parser: one walker serves both
    bodies, attachments = _split_parts(msg)
    plain, html = _decode_bodies(bodies)
    defects = sorted({type(d).__name__ for part in msg.walk() for d in part.defects})
    return _build(msg, plain, html, attachments, {}, tuple(defects), "email")


def _build(msg: Message, plain: list[str], html: list[str], attachments: list[Attachment],
           known: dict[str, Any], defects: tuple[str, ...], parser: str,
           headers_only: bool = False) -> ParsedMail:
    """The ParsedMail; `known` holds what mail-parser already read (addresses, date)."""
    headers, raw = _headers(msg)
    addresses = _address_pairs(raw, known)
    date = known["date"] if "date" in known else parse_mail_date(raw.get("date")).value
    sender = _mailboxes(addresses["from"])
    html_text: str | None = None
    text = display_body = ""
    dsn = None
    if not headers_only:
        html_text, text = _texts(plain, html)
        display_body = _display_body(text)
        dsn = _delivery_report(msg)
    ids = msg_ids(headers.get("message-id"))
    return ParsedMail(
        message_id=ids[0] if ids else None,
        in_reply_to=tuple(i for i in msg_ids(headers.get("in-reply-to")) if "@" in i),
        references=tuple(i for i in msg_ids(headers.get("references")) if "@" in i),
        thread_index=headers.get("thread-index") or None,
        subject=headers.get("subject", ""),
        from_addr=sender[0][1] if sender else None,
        from_name=sender[0][0] if sender else "",
        reply_to=_addresses(addresses["reply-to"]),
        to=_addresses(addresses["to"]),
        cc=_addresses(addresses["cc"]),
        date=date if isinstance(date, datetime) else None,
        headers=headers,
        text=text,
        html=html_text,
        display_body=display_body,
        attachments=tuple(attachments),
        dsn=dsn,
        defects=defects,
        parser=parser,
        headers_only=headers_only,
    )


def _texts(plain: list[str], html: list[str]) -> tuple[str | None, str]:
    """The HTML body and the text body (converted from the HTML when there is no text)."""
    html_text = "\n".join(html).replace("\x00", "") or None  # PostgreSQL text refuses NUL
    text = "\n".join(plain).replace("\x00", "")
    text = text if text.strip() else html_to_text(html_text or "")
    return html_text, text.replace("\r\n", "\n").replace("\r", "\n")


def _unparsed(raw: bytes) -> ParsedMail:
    text = decode_bytes(raw, None).replace("\x00", "")
    return ParsedMail(message_id=header_message_id(raw), in_reply_to=(), references=(),
                      thread_index=None, subject="", from_addr=None, from_name="", reply_to=(),
                      to=(), cc=(), date=None, headers={}, text=text, html=None,
                      display_body=text, defects=("UnparseableMessage",), parser="raw")


# --- headers ------------------------------------------------------------------------


def _headers(msg: Message) -> tuple[dict[str, str], dict[str, str]]:
    """Lowercased name -> decoded first value for every header, and -> raw first
    value for the address headers and Date."""
    headers: dict[str, str] = {}
    raw: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        if key not in headers:
            headers[key] = header_text(str(value))
            if key in _RAW_KEPT:
                raw[key] = str(value)
    return headers, raw


def _address_pairs(raw: dict[str, str], known: dict[str, Any]) -> dict[str, Any]:
    """(name, address) pairs per address header: mail-parser's when it read them, else
    read here from decoded text (mail-parser turns 8-bit names into literal \\udcXX)."""
    return {
        name: known[name] if name in known and raw.get(name, "").isascii()
        else _parsed_addresses(unescape_8bit(raw.get(name, "")[:_ADDRESS_HEADER_LIMIT]))
        for name in _ADDRESS_HEADERS
    }


@lru_cache(maxsize=4096)
def _parsed_addresses(value: str) -> tuple[tuple[str, str], ...]:
    """mail-parser's reading of an address header, remembered: the same values come
    back all day (the desk's address in To, each customer's From on all their mail),
    and reading one costs more than the rest of the header block."""
    return tuple(get_addresses(value, decode_names=True))


def _mailboxes(pairs: Any) -> list[tuple[str, str]]:
    """mail-parser's (name, address) pairs: names decoded, addresses lowercased."""
    result = []
    for name, address in pairs or ():
        address = "".join(str(address).split()).lower()
        if address:
            text = header_text(str(name))
            result.append(("" if text.lower() == address else text, address))
    return result


def _addresses(pairs: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a for _, a in _mailboxes(pairs) if "@" in a))


# --- bodies and attachments -----------------------------------------------------------


def _split_parts(msg: Message) -> tuple[list[Message], list[Attachment]]:
    """Body text parts and attachments, by mail-parser's rules but with stable names."""
    bodies: list[Message] = []
    attachments: list[Attachment] = []
    for part in msg.walk():
        try:
            ctype = part.get_content_type()
            disposition = part.get_content_disposition()
            if ctype.startswith("multipart/") and not part.is_multipart():
                bodies.append(part)  # its boundary never came: this text is all there is
                continue
            attached_message = ctype.startswith("message/") and disposition == "attachment"
            if part.is_multipart() and not attached_message:
                continue  # a container: walk() visits its children
            filename = _filename(part)
            inline_text = ctype in ("text/plain", "text/html") and disposition != "attachment"
            if inline_text and (not filename or disposition == "inline"):
                bodies.append(part)
            if filename or not inline_text:
                attachments.append(_attachment(part, ctype, filename))
        except Exception:
            log.debug("skipping an unreadable MIME part", exc_info=True)
    return bodies, attachments


def _filename(part: Message) -> str | None:
    """The part's file name, 8-bit names decoded as text (compat32 gives U+FFFD)."""
    raw = [(k, str(v)) for k, v in part.raw_items()
           if k.lower() in ("content-disposition", "content-type")]
    if all(v.isascii() for _, v in raw):
        return part.get_filename()
    view = Message()
    for name, value in raw:
        view[name] = unescape_8bit(value)
    return view.get_filename()


def _attachment(part: Message, ctype: str, filename: str | None) -> Attachment:
    if part.is_multipart():  # an attached message
        inner = part.get_payload(0)
        data = inner.as_bytes() if isinstance(inner, Message) else b""
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    name = safe_filename(header_text(filename) if filename else "", ctype)
    return Attachment(filename=name, content_type=ctype, data=data)


def _decode_bodies(parts: list[Message]) -> tuple[list[str], list[str]]:
    plain: list[str] = []
    html: list[str] = []
    for part in parts:
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload:
            text = decode_bytes(payload, part.get_content_charset())
            (html if part.get_content_subtype() == "html" else plain).append(text)
    return plain, html


_SIGN_OFF_CHARS = 30


def _display_body(text: str) -> str:
    """Text minus quoted history and signature; all of it when nothing is left."""
    reply = _latest_reply(text)
    return _strip_quoted_tail(text if reply is None else reply) or text.strip()


def _latest_reply(text: str) -> str | None:
    """mail-parser-reply's latest reply, or None when it found no history or signature."""
    head = text[:_REPLY_SCAN_CHARS]
    if any(len(line) > _REPLY_LINE_CHARS for line in head.splitlines()):
        head = "\n".join(wrapped for line in head.splitlines()
                         for wrapped in _wrap(line, _REPLY_LINE_CHARS))
    try:
        replies = _reply_message(head).read().replies
        first = replies[0]
        body: str = first.body
    except Exception:
        log.debug("reply parser failed", exc_info=True)
        return None
    if first.signatures and not _is_sign_off(first.signatures):
        body = first.content  # "Thanks, that fixed it. But ..." is a sentence, not a signature
    found = len(replies) > 1 or first.headers or first.signatures or first.disclaimers
    return body if found else None


def _wrap(line: str, width: int) -> list[str]:
    """`line` in pieces of at most `width` characters, broken at spaces where it can be,
    inside a longer word where it cannot. textwrap.wrap does this with a regex over the
    whole line that costs more than the rest of parsing on a line of a few KB."""
    if len(line) <= width:
        return [line]
    pieces: list[str] = []
    current = ""
    for word in line.split(" "):
        while len(word) > width:  # a word longer than a line: cut it
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:width])
            word = word[width:]
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            pieces.append(current)
            current = word
    if current:
        pieces.append(current)
    return pieces


def _reply_message(text: str) -> EmailMessage:
    """An EmailMessage reusing the regexes compiled once in `_REPLY_REGEXES`."""
    return EmailMessage(text=text, languages=list(REPLY_LANGUAGES), keep_hyphen_lists=True,
                        **_REPLY_REGEXES)


class _LineStartPattern:
    """A regex whose every match starts at a line start or on a newline, with a findall
    that only tries those positions.

    mail-parser-reply's reply-header regex is about a dozen such alternatives ("^On ...
    wrote:$", "(^|\\n)From: ...", ...), but the `re` engine cannot skip ahead to a line
    start, so findall tries all of them at every character: half of the reply parser's
    time. Trying only where a match can begin gives the same list (tests/test_parse.py
    checks that the library's pattern is still built this way).
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def findall(self, text: str) -> list[Any]:
        """re.findall's result: matches left to right, none overlapping."""
        found: list[Any] = []
        end = 0
        for start in _line_starts(text):
            match = self.pattern.match(text, start) if start >= end else None
            if match is None:
                continue
            if match.end() == start:  # cannot happen with this pattern; stay exact anyway
                return self.pattern.findall(text)
            found.append(_findall_item(match))
            end = match.end()
        return found


def _line_starts(text: str) -> Iterator[int]:
    """0, then each newline's position and the one after it, in order, each once."""
    last = 0
    yield 0
    newline = text.find("\n")
    while newline >= 0:
        if newline > last:
            yield newline
        last = newline + 1
        yield last
        newline = text.find("\n", last)


def _findall_item(match: re.Match[str]) -> Any:
    """What re.findall lists for one match: the whole match, its one group, or a tuple
    of all groups, with "" for a group that took no part."""
    groups = match.re.groups
    if groups == 0:
        return match[0]
    return (match[1] or "") if groups == 1 else match.groups("")


def _compile_reply_regexes() -> dict[str, Any]:
    """mail-parser-reply builds its three regexes from the language tables again for
    every message (hundreds of alternations joined, then a lookup in `re`'s cache, which
    every multipart's one-off boundary regex pushes them out of, so they get compiled
    again): build them once from a template with the same settings, and pass them in."""
    template = EmailMessage(text="", languages=list(REPLY_LANGUAGES), keep_hyphen_lists=True)
    return {"_header_regex": _LineStartPattern(template.HEADER_REGEX),
            "_disclaimers_regex": template.DISCLAIMERS_REGEX,
            "_signature_regex": _rest_as_class(template.SIGNATURE_REGEX)}


_ANY_CHAR_GROUP = r"(.|\s)*)"  # how the signature regex takes the rest of the text


def _rest_as_class(pattern: re.Pattern[str]) -> re.Pattern[str]:
    r"""The signature regex ends by taking the rest of the text one character at a time
    through a two-way alternation, `(.|\s)*`, which costs a backtracking step per
    character of every signature it finds. `[\s\S]*` matches the same characters in
    one loop. Unchanged when the library's pattern no longer ends that way."""
    if not pattern.pattern.endswith(_ANY_CHAR_GROUP):
        return pattern
    return re.compile(pattern.pattern[: -len(_ANY_CHAR_GROUP)] + r"[\s\S]*)", pattern.flags)


_REPLY_REGEXES = _compile_reply_regexes()


def _is_sign_off(signature: str) -> bool:
    """Does a cut-off block start like a signature ("Thanks,", "Best regards", "-- ")?
    The reply parser cuts at any line that begins with such a word, sentence or not."""
    first = next((line.strip() for line in signature.splitlines() if line.strip()), "")
    return len(first) <= _SIGN_OFF_CHARS


def _strip_quoted_tail(text: str) -> str:
    """Drop the ">" quoted block below the reply, even with no "On ... wrote:" above it;
    quotes above or between the reply's lines stay: they give an inline answer context."""
    lines = text.rstrip().split("\n")
    end = len(lines)
    while end and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith(">")):
        end -= 1
    return "\n".join(lines[:end]).strip()


# --- delivery status notifications (RFC 3464) ------------------------------------------


def _delivery_report(msg: Message) -> DeliveryReport | None:
    try:
        status_parts, original = _report_parts(msg)
    except Exception:  # the message still parses; it is just no readable report
        log.debug("unreadable delivery report", exc_info=True)
        return None
    is_report = (msg.get_content_type() == "multipart/report"
                 and str(msg.get_param("report-type", "")).lower() == "delivery-status")
    if not status_parts and not is_report:
        return None
    blocks = [block for part in status_parts for block in _status_blocks(part)]
    statuses = tuple(_recipient_status(b) for b in blocks if any(k in b for k in _DSN_FIELDS))
    return DeliveryReport(statuses=statuses, original_message_id=_original_id(original))


def _report_parts(msg: Message) -> tuple[list[Message], Message | None]:
    """The delivery-status parts and the returned message (or its headers), looking
    through multiparts only: a bounce forwarded as an attachment is no bounce."""
    status_parts: list[Message] = []
    original: Message | None = None
    queue = [msg]
    for part in queue:  # breadth first; the queue grows while we walk it
        ctype = part.get_content_type()
        payload = part.get_payload()
        if ctype == "message/delivery-status":
            status_parts.append(part)
        elif ctype in ("message/rfc822", "text/rfc822-headers"):
            original = original or part
        elif ctype.startswith("multipart/") and isinstance(payload, list):
            queue.extend(p for p in payload if isinstance(p, Message))
    return status_parts, original


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser().parsestr(chunk) for chunk in re.split(r"\r?\n\s*\r?\n", text)]


def _recipient_status(block: Message) -> DeliveryStatus:
    recipient = str(block.get("final-recipient") or block.get("original-recipient") or "")
    address = header_text(recipient).rpartition(";")[2].strip().strip("<>").strip().lower()
    action = header_text(str(block.get("action", ""))).lower().split()
    status = header_text(str(block.get("status", "")))
    code = _STATUS_CODE.search(status)
    return DeliveryStatus(recipient=address or None, action=action[0] if action else None,
                          status=code[0] if code else (status or None))


def _original_id(part: Message | None) -> str | None:
    if part is None:
        return None
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        inner = payload[0]
    else:
        inner = HeaderParser().parsestr(payload if isinstance(payload, str) else "")
    ids = msg_ids(header_text(str(inner.get("message-id", ""))))
    return ids[0] if ids else None
