"""Broken mail for fuzzing: mutations of real messages and extreme cases.

Used by tests/test_fuzz.py (the short form, for CI) and bench/fuzz.py (the full form),
which feed them to `tests/fuzz_harness.Harness`.

- `MUTATIONS`: named ways to break a real message (`corpus_messages()`, the shared
  corpus): truncation, duplicated and missing headers, broken MIME boundaries, random
  bytes in headers, wrong and unknown charsets, NUL bytes, ... Each is a plain function
  of the message and a `random.Random`, so a seed repeats it and hypothesis can drive it.
- `EXTREMES`: the named hostile messages (10,000 parts, 200 KB header lines and
  subjects, 1,000-deep message/rfc822, a 20 MB single-line body, ...), built on demand.
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable

from maildesk import addresses
from tests.helpers import CORPUS, SECRET

Mutation = Callable[[bytes, random.Random], bytes]

def corpus_messages() -> dict[str, bytes]:
    """Relative path -> bytes of every message of the shared corpus."""
    files = sorted(p for p in CORPUS.rglob("*")
                   if p.is_file() and p.suffix != ".md" and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"mail corpus not found at {CORPUS} (set MAILDESK_CORPUS)")
    return {p.relative_to(CORPUS).as_posix(): p.read_bytes() for p in files}


# --- mutations of one message ---------------------------------------------------------------

_EOL = re.compile(rb"\r?\n")
_HEADER_NAMES = (b"From", b"To", b"Cc", b"Subject", b"Message-ID", b"In-Reply-To",
                 b"References", b"Date", b"Reply-To", b"Sender", b"Content-Type",
                 b"Content-Transfer-Encoding", b"MIME-Version", b"Auto-Submitted",
                 b"Thread-Index", b"Content-Disposition")
_CHARSETS = (b"utf-8", b"utf-16", b"utf-32", b"utf-7", b"iso-2022-jp", b"shift_jis",
             b"koi8-r", b"windows-1252", b"iso-8859-8-i", b"gb2312", b"big5", b"ascii",
             b"x-mac-cyrillic", b"x-unknown", b"unknown-8bit", b"", b"\"", b"utf-8''",
             b"foo\x00bar", b"\xff\xfe", b"utf-8\r\n x", b"=?utf-8?q?x?=", b"a" * 300,
             b"cp65001", b"latin-1", b"hz-gb-2312", b"rot13", b"base64", b"zlib", b"idna",
             b"punycode", b"undefined", b"utf_8_sig", b"uu", b"bz2", b"hex")


def _split(raw: bytes) -> tuple[list[bytes], bytes, bytes]:
    """Header lines (folded ones kept together), the separator, and the body."""
    match = re.search(rb"\r?\n\r?\n", raw)
    head, sep, body = (raw[:match.start()], raw[match.start():match.end()],
                       raw[match.end():]) if match else (raw, b"", b"")
    lines: list[bytes] = []
    for line in _EOL.split(head):
        if lines and line[:1] in (b" ", b"\t"):
            lines[-1] += b"\r\n" + line
        else:
            lines.append(line)
    return lines, sep or b"\r\n\r\n", body


def _join(lines: list[bytes], sep: bytes, body: bytes) -> bytes:
    return b"\r\n".join(lines) + sep + body


def _pick(lines: list[bytes], rnd: random.Random) -> int:
    return rnd.randrange(len(lines)) if lines else 0


def _random_bytes(rnd: random.Random, n: int) -> bytes:
    alphabet = rnd.choice((bytes(range(256)), b"\x00\r\n\t \x1b\x7f\x85", b"=?<>@,;:\"\\()",
                           "é漢字\u202e\u2028".encode()))
    return bytes(rnd.choice(alphabet) for _ in range(n))


def truncate(raw: bytes, rnd: random.Random) -> bytes:
    return raw[:rnd.randrange(len(raw) + 1)]


def truncate_in_header(raw: bytes, rnd: random.Random) -> bytes:
    lines, _, _ = _split(raw)
    head = b"\r\n".join(lines)
    return head[:rnd.randrange(len(head) + 1)]


def duplicate_header(raw: bytes, rnd: random.Random) -> bytes:
    lines, sep, body = _split(raw)
    if not lines:
        return raw
    i = _pick(lines, rnd)
    copy = lines[i]
    if rnd.random() < 0.5:  # the second copy says something else
        name = copy.partition(b":")[0]
        copy = name + b": " + _random_bytes(rnd, rnd.randrange(1, 80))
    lines.insert(rnd.randrange(len(lines) + 1), copy)
    return _join(lines, sep, body)


def add_header(raw: bytes, rnd: random.Random) -> bytes:
    """A second (or first) copy of a header that matters, with a hostile value."""
    lines, sep, body = _split(raw)
    name = rnd.choice(_HEADER_NAMES)
    value = rnd.choice((_random_bytes(rnd, rnd.randrange(1, 200)), b"", b" ", b"<>", b"<@>",
                        b"=?utf-8?b?" + base64.b64encode(_random_bytes(rnd, 40)) + b"?=",
                        b'"\\" <@', b"undisclosed-recipients:;", b"a@b@c", b"<a@b> (c"))
    lines.insert(rnd.randrange(len(lines) + 1), name + b": " + value)
    return _join(lines, sep, body)


def drop_header(raw: bytes, rnd: random.Random) -> bytes:
    lines, sep, body = _split(raw)
    wanted = rnd.choice(_HEADER_NAMES).lower() + b":"
    kept = [line for line in lines if not line.lower().startswith(wanted)]
    if len(kept) == len(lines) and lines:
        del kept[_pick(kept, rnd)]
    return _join(kept, sep, body)


def drop_all_headers(raw: bytes, rnd: random.Random) -> bytes:
    _, _, body = _split(raw)
    return body if rnd.random() < 0.5 else b"\r\n" + body


def break_boundary(raw: bytes, rnd: random.Random) -> bytes:
    found = re.findall(rb'boundary="?([^";\r\n]+)"?', raw, re.I)
    if not found:
        return raw
    boundary = rnd.choice(found)
    how = rnd.randrange(7)
    if how == 0:  # the closing delimiter never comes
        return raw.replace(b"--" + boundary + b"--", b"")
    if how == 1:  # the parameter names another boundary
        return raw.replace(b"boundary=\"" + boundary, b"boundary=\"x" + boundary, 1)
    if how == 2:  # an empty boundary
        return raw.replace(b"boundary=\"" + boundary + b"\"", b"boundary=\"\"", 1)
    if how == 3:  # delimiter lines mangled at random
        return raw.replace(b"--" + boundary, b"--" + boundary[:rnd.randrange(len(boundary))])
    if how == 4:  # no parameter at all
        return re.sub(rb';?\s*boundary="?[^";\r\n]+"?', b"", raw, count=1, flags=re.I)
    if how == 5:  # one delimiter line is cut off mid-part
        cut = raw.rfind(b"--" + boundary)
        return raw[:cut + rnd.randrange(len(boundary) + 2)]
    return raw.replace(boundary, boundary * 20)  # a 1,400-character boundary


def random_header_bytes(raw: bytes, rnd: random.Random) -> bytes:
    lines, sep, body = _split(raw)
    if not lines:
        return raw
    i = _pick(lines, rnd)
    line = lines[i]
    at = rnd.randrange(len(line) + 1)
    lines[i] = line[:at] + _random_bytes(rnd, rnd.randrange(1, 60)) + line[at:]
    return _join(lines, sep, body)


def eight_bit_headers(raw: bytes, rnd: random.Random) -> bytes:
    """Raw 8-bit (non-UTF-8) text in From and Subject."""
    lines, sep, body = _split(raw)
    text = rnd.choice(("Jürgen Müller", "Ремонт принтера", "修理してください", "Ελένη"))
    data = text.encode(rnd.choice(("latin-1", "koi8-r", "shift_jis", "iso-8859-7",
                                   "utf-8", "utf-16")), errors="replace")
    lines = [b"Subject: " + data if line.lower().startswith(b"subject:") else line
             for line in lines]
    lines.append(b"From: " + data + b" <" + data + b"@example.org>")
    return _join(lines, sep, body)


def wrong_charset(raw: bytes, rnd: random.Random) -> bytes:
    charset = rnd.choice(_CHARSETS)
    replaced = re.sub(rb'charset="?[^";\s]*"?', b'charset="' + charset + b'"', raw,
                      flags=re.I)
    if replaced == raw:  # no charset to mislabel: declare one
        lines, sep, body = _split(raw)
        lines.append(b'Content-Type: text/plain; charset="' + charset + b'"')
        replaced = _join(lines, sep, body)
    return replaced


def encoded_word_charset(raw: bytes, rnd: random.Random) -> bytes:
    """Subject and From names as RFC 2047 words in wrong, unknown or broken charsets."""
    lines, sep, body = _split(raw)
    charset = rnd.choice(_CHARSETS).replace(b"?", b"")
    payload = rnd.choice((base64.b64encode(_random_bytes(rnd, 30)), b"@@@", b"",
                          base64.b64encode("Ünïcödé".encode("utf-16"))))
    word = b"=?" + charset + b"?" + rnd.choice((b"B", b"Q", b"X")) + b"?" + payload + b"?="
    lines = [line for line in lines if not line.lower().startswith((b"subject:", b"from:"))]
    lines += [b"Subject: " + word + b" " + word, b"From: " + word + b" <x@example.org>"]
    return _join(lines, sep, body)


def nul_bytes(raw: bytes, rnd: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rnd.randrange(1, 20)):
        data.insert(rnd.randrange(len(data) + 1), 0)
    return bytes(data)


def random_body_bytes(raw: bytes, rnd: random.Random) -> bytes:
    lines, sep, body = _split(raw)
    at = rnd.randrange(len(body) + 1)
    return _join(lines, sep, body[:at] + _random_bytes(rnd, rnd.randrange(1, 2000)) + body[at:])


def line_endings(raw: bytes, rnd: random.Random) -> bytes:
    how = rnd.randrange(3)
    lf = raw.replace(b"\r\n", b"\n")
    if how == 0:
        return lf.replace(b"\n", b"\r")  # old Mac: bare CR only
    if how == 1:
        return b"".join(line + rnd.choice((b"\n", b"\r\n", b"\r", b"\n\r"))
                        for line in lf.split(b"\n"))
    return lf.replace(b"\n", b"\r\r\n")


def bad_transfer_encoding(raw: bytes, rnd: random.Random) -> bytes:
    cte = rnd.choice((b"base64", b"quoted-printable", b"x-uuencode", b"8bit", b"bogus",
                      b"binary"))
    replaced = re.sub(rb"(?im)^(content-transfer-encoding:)[^\r\n]*", rb"\1 " + cte, raw)
    if replaced == raw:
        lines, sep, body = _split(raw)
        lines.append(b"Content-Transfer-Encoding: " + cte)
        replaced = _join(lines, sep, body + b"\r\n=ZZ=\r\n!!!==\r\nbegin 644 x\r\n")
    return replaced


def mbox_from_line(raw: bytes, rnd: random.Random) -> bytes:
    return rnd.choice((b"From MAILER-DAEMON Tue Dec  1 10:00:00 2026\n", b"From \n", b"\n\n",
                       b">From x@y\r\n")) + raw


def as_reply(raw: bytes, rnd: random.Random) -> bytes:
    """Make it thread: a ticket tag, a reply address, or references to other tickets."""
    lines, sep, body = _split(raw)
    ticket = rnd.randrange(1, 40)
    how = rnd.randrange(3)
    if how == 0:
        lines.append(b"Subject: Re: [MD#%d] " % ticket + _random_bytes(rnd, 10))
    elif how == 1:
        to = addresses.reply_address("support@example.com", SECRET, ticket)
        lines.insert(0, b"To: " + to.encode())
    else:
        refs = b" ".join(b"<%d.%d@customer.example>" % (rnd.randrange(50), i) for i in range(30))
        lines += [b"References: " + refs, b"In-Reply-To: <%d@x>" % rnd.randrange(50)]
    return _join(lines, sep, body)


def from_agent(raw: bytes, rnd: random.Random) -> bytes:
    """Agent mail: unverified, or to the agent's own reply address, with commands."""
    lines, sep, body = _split(raw)
    agent = rnd.choice(("alice@agents.example.com", "bob@agents.example.com"))
    lines = [line for line in lines if not line.lower().startswith((b"from:", b"to:"))]
    lines.insert(0, b"From: Alice <" + agent.encode() + b">")
    ticket = rnd.randrange(1, 40)
    to = (addresses.agent_reply_address("support@example.com", SECRET, ticket, agent)
          if rnd.random() < 0.7 else "support@example.com")
    lines.insert(1, b"To: " + to.encode())
    commands = rnd.choice((b"#status solved\r\n", b"#assignee me\r\n#priority urgent\r\n",
                           b"#bogus\r\n", b"#tags " + _random_bytes(rnd, 20) + b"\r\n",
                           b"#merge 1\r\n", b"#note\r\n", b""))
    if b"multipart" not in b"\r\n".join(lines).lower():
        body = commands + body
    return _join(lines, sep, body)


def automatic(raw: bytes, rnd: random.Random) -> bytes:
    lines, sep, body = _split(raw)
    lines.append(rnd.choice((b"Auto-Submitted: auto-replied", b"Precedence: bulk",
                             b"X-Autoreply: yes", b"List-Id: <list.example.org>",
                             b"Return-Path: <>", b"From: MAILER-DAEMON@example.org")))
    return _join(lines, sep, body)


def many_recipients(raw: bytes, rnd: random.Random) -> bytes:
    lines, sep, body = _split(raw)
    n = rnd.randrange(100, 5000)
    lines.append(b"Cc: " + b",\r\n ".join(b"u%d@example.org" % i for i in range(n)))
    return _join(lines, sep, body)


def long_header(raw: bytes, rnd: random.Random) -> bytes:
    lines, sep, body = _split(raw)
    name = rnd.choice((b"Subject", b"From", b"References", b"X-Long", b"Content-Type"))
    unit = rnd.choice((b"a", b"a ", b"<x@y> ", b"=?utf-8?q?=C3=A9?= ", b"\xc3\xa9", b";x=y"))
    lines.append(name + b": " + unit * (rnd.randrange(1000, 60_000) // len(unit)))
    return _join(lines, sep, body)


def swap_parts(raw: bytes, rnd: random.Random) -> bytes:
    """Content-Type headers traded around: multipart where text was, and the reverse."""
    ctype = rnd.choice((b"multipart/mixed", b"message/rfc822", b"multipart/report",
                        b"message/delivery-status", b"text/html", b"application/pdf",
                        b"multipart/alternative; boundary=", b"text/rfc822-headers"))
    return re.sub(rb"(?im)^content-type:[ \t]*[^;\r\n]*", b"Content-Type: " + ctype, raw,
                  count=rnd.randrange(1, 4))


MUTATIONS: dict[str, Mutation] = {f.__name__: f for f in (
    truncate, truncate_in_header, duplicate_header, add_header, drop_header,
    drop_all_headers, break_boundary, random_header_bytes, eight_bit_headers, wrong_charset,
    encoded_word_charset, nul_bytes, random_body_bytes, line_endings, bad_transfer_encoding,
    mbox_from_line, as_reply, from_agent, automatic, many_recipients, long_header,
    swap_parts)}


def mutate(raw: bytes, names: list[str], rnd: random.Random) -> bytes:
    for name in names:
        raw = MUTATIONS[name](raw, rnd)
    return raw


# --- the extreme cases ------------------------------------------------------------------

_HEAD = (b"From: Carol Customer <carol@customer.example>\r\nTo: support@example.com\r\n"
         b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n")


def parts_10k() -> bytes:
    parts = b"".join(
        b"--b\r\nContent-Type: %s\r\nContent-Disposition: %s\r\n\r\npart %d\r\n"
        % ((b"text/plain", b"inline", i) if i % 2 else
           (b"application/octet-stream", b'attachment; filename="f%d.bin"' % i, i))
        for i in range(10_000))
    return (_HEAD + b"Subject: ten thousand parts\r\nMessage-ID: <parts-10k@fuzz>\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n")


def header_line_200k() -> bytes:
    return (_HEAD + b"Subject: a long header line\r\nMessage-ID: <header-200k@fuzz>\r\n"
            b"X-Filler: " + b"x" * 200_000 + b"\r\n\r\nHello.\r\n")


def subject_200k() -> bytes:
    return (_HEAD + b"Message-ID: <subject-200k@fuzz>\r\nSubject: "
            + b"help " * 40_000 + b"\r\n\r\nHello.\r\n")


def subject_200k_encoded() -> bytes:
    words = b"\r\n ".join(b"=?utf-8?q?caf=C3=A9_?=" for _ in range(10_000))
    return _HEAD + b"Message-ID: <subject-enc@fuzz>\r\nSubject: " + words + b"\r\n\r\nHi.\r\n"


def from_200k() -> bytes:
    return (b"From: " + b"Carol " * 34_000 + b"<carol@customer.example>\r\n"
            b"To: support@example.com\r\nSubject: long from\r\nMessage-ID: <from-200k@fuzz>"
            b"\r\n\r\nHello.\r\n")


def nested_rfc822_1000() -> bytes:
    inner = (b"From: inner@customer.example\r\nSubject: innermost\r\n\r\nthe bottom\r\n")
    for i in range(1000):
        inner = (b"From: level%d@customer.example\r\nSubject: level %d\r\n"
                 b"Content-Type: message/rfc822\r\n\r\n" % (i, i)) + inner
    return (_HEAD + b"Subject: nested messages\r\nMessage-ID: <nested-1000@fuzz>\r\n"
            b"Content-Type: message/rfc822\r\n\r\n" + inner)


def nested_multipart_1000() -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n'
                       % (i, i) for i in range(1000))
    closing = b"".join(b"\r\n--n%d--" % i for i in reversed(range(1000)))
    return (_HEAD + b"Subject: nested multiparts\r\nMessage-ID: <nestmp-1000@fuzz>\r\n"
            + opening + b"Content-Type: text/plain\r\n\r\ndeep\r\n" + closing + b"\r\n")


def body_20mb_line() -> bytes:
    return (_HEAD + b"Subject: one long line\r\nMessage-ID: <body-20mb@fuzz>\r\n"
            b"Content-Type: text/plain\r\n\r\n" + b"word " * 4_000_000 + b"\r\n")


def body_20mb_html_line() -> bytes:
    return (_HEAD + b"Subject: one long html line\r\nMessage-ID: <html-20mb@fuzz>\r\n"
            b"Content-Type: text/html\r\n\r\n<p>" + b"<b>word</b> " * 1_750_000 + b"\r\n")


def quote_ladder() -> bytes:
    """Quote markers and attributions that a backtracking trimmer would choke on."""
    body = (b"> " * 5000 + b"x\r\n") * 20 + b"On " + b"Mon, " * 20_000 + b"wrote:\r\n"
    return _HEAD + b"Subject: quotes\r\nMessage-ID: <ladder@fuzz>\r\n\r\n" + body


EXTREMES: dict[str, Callable[[], bytes]] = {f.__name__: f for f in (
    parts_10k, header_line_200k, subject_200k, subject_200k_encoded, from_200k,
    nested_rfc822_1000, nested_multipart_1000, body_20mb_line, body_20mb_html_line,
    quote_ladder)}
