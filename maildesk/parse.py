"""Raw message bytes -> ParsedMail, plus the cheap helpers intake needs.

The only module importing mail-parser. mail-parser parses the MIME tree, the bodies,
the addresses and the date; when it raises (it does on some malformed mail, see
corpus/PARSE-BASELINE.md) the stdlib `email` parser takes over and ParsedMail.parser is
"email". Nothing here raises because of content.

Both parsers read the message from its header block on (`identity.readable`: past an
mbox `From ` line or stray lines above it). Header values read as a mail client shows
them: raw 8-bit bytes in the charset the message declares for its text, else a guess
(`mimetext.header_codec`); From as the first readable mailbox of the From headers, the
strict reading repaired by `address_fields` where it gives up. The entry body is what
the person wrote (`reply_text`): quoted history and signatures trimmed, HTML quotes
removed before HTML becomes text.
"""

from __future__ import annotations

import email
import logging
import re
from dataclasses import replace
from datetime import datetime
from email.message import Message
from email.parser import BytesParser, HeaderParser
from functools import lru_cache
from itertools import islice
from typing import Any

import mailparser
from mailparser.dates import parse_mail_date
from mailparser.exceptions import MailParserRecursionError
from mailparser.utils import get_addresses

from maildesk.address_fields import pick_from, salvage
from maildesk.domain import Attachment, DeliveryReport, DeliveryStatus, ParsedMail
from maildesk.identity import header_message_id, msg_ids, readable
from maildesk.mimetext import (
    decode_bytes,
    escaped_bytes,
    header_codec,
    header_text,
    html_to_text,
    safe_filename,
    unescape_8bit,
)
from maildesk.reply_text import is_forward_subject, without_quoted_html, written_text

log = logging.getLogger(__name__)
# mail-parser warns about every text part it does not render (each DSN part, each
# calendar invite): noise about content, not information for the operator.
logging.getLogger("mailparser").setLevel(logging.ERROR)

# Past this, headers skip mail-parser (its header decoding is quadratic) and
# address lists are cut: no help desk needs a 64 KiB To header.
_HEADER_BLOCK_LIMIT = 256 * 1024
_ADDRESS_HEADER_LIMIT = 64 * 1024
# At most this much of a body is converted from HTML and trimmed for the entry; the raw
# message is always kept whole. Both are linear, but at ~0.4 s per MB (a 20 MB body:
# 8 s), so past this an entry shows the head of the text, clipped as Gmail clips its view.
_BODY_READ_CHARS = 512 * 1024
# Only the first this many MIME parts give bodies and attachments, and a message with
# more delimiter lines skips mail-parser (its walk costs ~0.15 ms a part on top of the
# stdlib's): 10,000 parts took 2.6 s of CPU. Real mail has a few dozen at most.
_MAX_PARTS = 1000
# The stdlib parser matches every line against the boundaries of all the open multiparts:
# quadratic in the nesting (1,000 levels: 1 s of CPU; 100: 0.03 s). Past this many
# boundary parameters, the body is kept as raw text (the corpus has at most 12).
_MAX_BOUNDARIES = 100

_ADDRESS_HEADERS = ("from", "to", "cc", "reply-to", "sender")
_RAW_KEPT = frozenset({*_ADDRESS_HEADERS, "date"})
_DSN_FIELDS = ("final-recipient", "original-recipient", "action", "status")
_STATUS_CODE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def parse_message(raw: bytes) -> ParsedMail:
    """Parse one message; never raises for any content."""
    raw = readable(raw)
    if raw.lower().count(b"boundary=") > _MAX_BOUNDARIES:
        log.warning("message body kept as raw text: too many MIME boundaries")
        return _unparsed(raw)
    # past the header block limit, mail-parser's header decoding is quadratic
    if _header_block_end(raw) >= 0 and raw.count(b"\n--") <= _MAX_PARTS:
        try:
            return _parse_with_mailparser(raw)
        except (RecursionError, MailParserRecursionError):  # the stdlib nests the same way
            log.warning("message body kept as raw text: its MIME parts nest too deep")
            return _unparsed(raw)
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
    raw = readable(raw)
    end = _header_block_end(raw)
    if end < 0:
        return None
    try:
        msg = _HEAD_PARSER.parsebytes(raw[:end], headersonly=True)
        return _build(msg, raw, [], [], [], {}, (), "headers", headers_only=True)
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
    known = {"date": parsed.date}
    return _build(parsed.message, raw, plain, html, attachments, known, defects, "mail-parser")


def _parse_with_stdlib(raw: bytes) -> ParsedMail:
    msg = email.message_from_bytes(raw)  # compat32 like mail-parser: one walker serves both
    bodies, attachments = _split_parts(msg)
    plain, html = _decode_bodies(bodies)
    defects = sorted({type(d).__name__ for part in msg.walk() for d in part.defects})
    return _build(msg, raw, plain, html, attachments, {}, tuple(defects), "email")


def _build(msg: Message, data: bytes, plain: list[str], html: list[str],
           attachments: list[Attachment], known: dict[str, Any], defects: tuple[str, ...],
           parser: str, headers_only: bool = False) -> ParsedMail:
    """The ParsedMail of `msg` (parsed from `data`); `known` holds what mail-parser
    already read (the date)."""
    codec = _header_codec(msg, data)
    headers, raw = _headers(msg, codec)
    addresses = _address_pairs(raw)
    date = known["date"] if "date" in known else parse_mail_date(raw.get("date")).value
    sender = _from_mailbox(msg, codec)
    html_text: str | None = None
    text = display_body = ""
    dsn = None
    if not headers_only:
        html_text, text = _texts(plain, html)
        display_body = _display_body(plain, html_text, text, headers.get("subject", ""))
        dsn = _delivery_report(msg)
    ids = msg_ids(headers.get("message-id"))
    return ParsedMail(
        message_id=ids[0] if ids else None,
        in_reply_to=tuple(i for i in msg_ids(headers.get("in-reply-to")) if "@" in i),
        references=tuple(i for i in msg_ids(headers.get("references")) if "@" in i),
        thread_index=headers.get("thread-index") or None,
        subject=headers.get("subject", ""),
        from_addr=sender[1] if sender else None,
        from_name=sender[0] if sender else "",
        sender_addr=next(iter(_addresses(addresses["sender"])), None),
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
    text = text if text.strip() else html_to_text((html_text or "")[:_BODY_READ_CHARS])
    return html_text, text.replace("\r\n", "\n").replace("\r", "\n")


def _display_body(plain: list[str], html: str | None, text: str, subject: str) -> str:
    """What the person wrote: the text minus quoted history and signature, the HTML's
    quoted blocks removed first when there is only HTML; all of it when nothing is left.
    Read from the first `_BODY_READ_CHARS` of the body, with a note when it goes on."""
    forward = is_forward_subject(subject)
    if not "".join(plain).strip() and html:
        head = html[:_BODY_READ_CHARS]
        written = written_text(html_to_text(without_quoted_html(head, forward=forward)),
                               forward=forward)
        if written:
            return _clipped(written, len(html) - len(head))
    head = text[:_BODY_READ_CHARS]
    return _clipped(written_text(head, forward=forward) or head.strip(), len(text) - len(head))


def _clipped(written: str, left: int) -> str:
    if left <= 0:
        return written
    return (f"{written}\n\n[clipped: the message goes on for {left:,} more characters; "
            "the whole message is kept as received]")


def not_a_message(mail: ParsedMail) -> str | None:
    """Why this is no email message at all (nothing to open a ticket from), or None:
    an empty input, or bytes without a single header field of a message."""
    if mail.headers and not mail.headers.keys().isdisjoint(_MESSAGE_FIELDS):
        return None
    if not mail.text.strip() and not mail.headers:
        return "not an email message: empty (no header and no text)"
    return "not an email message: no header fields (binary or other data)"


_MESSAGE_FIELDS = frozenset({
    "from", "sender", "to", "cc", "bcc", "subject", "date", "message-id", "received",
    "return-path", "reply-to", "mime-version", "content-type", "in-reply-to", "references",
    "delivered-to", "x-original-to", "envelope-to", "resent-from", "list-id"})


def _unparsed(raw: bytes) -> ParsedMail:
    """The body as raw text, and the header fields when the header block reads alone."""
    head = parse_headers(raw)
    if head is not None:
        text = decode_bytes(raw[_header_block_end(raw):], None).replace("\x00", "")
        return replace(head, text=text, display_body=_clipped(
            text[:_BODY_READ_CHARS].strip(), len(text) - _BODY_READ_CHARS),
            defects=("UnparseableMessage",), parser="raw", headers_only=False)
    text = decode_bytes(raw, None).replace("\x00", "")
    return ParsedMail(message_id=header_message_id(raw), in_reply_to=(), references=(),
                      thread_index=None, subject="", from_addr=None, from_name="", reply_to=(),
                      to=(), cc=(), date=None, headers={}, text=text, html=None,
                      display_body=text, defects=("UnparseableMessage",), parser="raw")


# --- headers ------------------------------------------------------------------------


def _headers(msg: Message, codec: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Lowercased name -> decoded first value for every header, and -> raw first
    value (8-bit bytes read with `codec`) for the address headers and Date."""
    headers: dict[str, str] = {}
    raw: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = name.lower()
        if key not in headers:
            headers[key] = header_text(str(value), codec)
            if key in _RAW_KEPT:
                raw[key] = unescape_8bit(str(value), codec)
    return headers, raw


def _header_codec(msg: Message, data: bytes) -> str | None:
    """The codec for the raw 8-bit bytes of this message's header values; None when
    they have none (nearly all mail: encoded words or plain ASCII)."""
    fields = msg.raw_items()  # get() and values() give 8-bit values as U+FFFD
    samples = [b for _, v in fields if (b := escaped_bytes(str(v)))]
    if not samples:
        return None
    sender = next((str(v) for k, v in fields if k.lower() == "from"), "")
    found = salvage(sender)
    tld = found[1].rpartition(".")[2] if found else ""
    return header_codec(samples, _declared_charset(msg, data), tld)


_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([A-Za-z0-9_.:+-]{1,40})""", re.I)
_CHARSET_SCAN = 64 * 1024


def _declared_charset(msg: Message, data: bytes) -> str | None:
    """The charset the message declares for its text: the top Content-Type's, else the
    first a body part names. Read from the bytes, so the header block alone finds the
    same one as a whole parse does."""
    top = msg.get_content_charset()
    if top:
        return str(top)
    found = _CHARSET_PARAM.search(data, 0, _CHARSET_SCAN)
    return found[1].decode("ascii") if found else None


def _address_pairs(raw: dict[str, str]) -> dict[str, Any]:
    """(name, address) pairs per address header, read from its raw value (names decoded
    after the structure is read, so an encoded name hides no address or line break)."""
    return {name: _read_addresses(raw.get(name, "")) for name in _ADDRESS_HEADERS}


def _read_addresses(value: str) -> tuple[tuple[str, str], ...]:
    """The strict reading, else the one a mail client makes of a messy value."""
    pairs = _parsed_addresses(value[:_ADDRESS_HEADER_LIMIT])
    if any("@" in a for _, a in pairs) or not value.strip():
        return pairs
    found = salvage(value)
    return (found,) if found else ()


def _from_mailbox(msg: Message, codec: str | None) -> tuple[str, str] | None:
    """(name, address) of the From mailbox as a mail client shows it: the first From
    header that gives an address, read strictly, else repaired; names decoded."""
    values = [unescape_8bit(str(v), codec) for k, v in msg.raw_items() if k.lower() == "from"]
    found = pick_from(values, _read_addresses)
    if found is None:
        return None
    name = header_text(found[0])
    return ("" if name.lower() == found[1] else name), found[1]


@lru_cache(maxsize=4096)
def _parsed_addresses(value: str) -> tuple[tuple[str, str], ...]:
    """mail-parser's reading of an address header, remembered: the same values come
    back all day (the desk's address in To, each customer's From on all their mail),
    and reading one costs more than the rest of the header block."""
    return tuple(get_addresses(value, decode_names=True))


def _mailboxes(pairs: Any) -> list[tuple[str, str]]:
    """(name, address) pairs: names decoded, addresses lowercased, trailing dot dropped."""
    result = []
    for name, address in pairs or ():
        address = "".join(str(address).split()).rstrip(".").lower()
        if address and address.isprintable():  # an address with NUL or controls is none
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
    for part in islice(msg.walk(), _MAX_PARTS):
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
