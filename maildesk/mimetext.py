"""Decoding the text that MIME carries: charsets, header words, file names, HTML.

Standard library only, and linear time on any input: message content is hostile.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import mimetypes
import re
import unicodedata
from html import unescape

_CONTROLS = dict.fromkeys([*range(32), 127], " ")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_FILENAME_BAD = re.compile(r'[<>:"|?*]')
_MAX_FILENAME_BYTES = 200
# controls, format (bidi overrides), surrogates, private use, unassigned, line breaks
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_CHARSET_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "latin_1": "cp1252",
                      "euc_kr": "cp949", "shift_jis": "cp932"}
_HTML_DROPPED = [(re.compile("<!--"), re.compile("-->"))] + [
    (re.compile(rf"<{tag}\b", re.I), re.compile(rf"</{tag}\s*>", re.I))
    for tag in ("script", "style", "title")
]
_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9]*)[^<>]*>|<[!?][^<>]*>")
_BLOCK_TAGS = frozenset({"address", "article", "blockquote", "br", "dd", "div", "dl", "dt",
                         "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
                         "ol", "p", "pre", "section", "table", "tr", "ul"})
_MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only: same names on every host


def header_text(raw: str) -> str:
    """A raw header value as one line of text: 8-bit bytes and RFC 2047 words decoded."""
    value = unescape_8bit(raw)
    if "=?" in value:
        value = decode_words(value)
    return " ".join(value.translate(_CONTROLS).split())


def unescape_8bit(value: str) -> str:
    """Turn the parser's surrogate-escaped 8-bit bytes back into text."""
    if value.isascii():
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return decode_bytes(data, None)


def decode_words(value: str) -> str:
    """RFC 2047 encoded words, in linear time (email.header.decode_header is quadratic).
    Adjacent words are joined as bytes, so a character split across two survives."""
    parts: list[str] = []
    run: list[bytes] = []
    run_charset = ""
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap, pos = value[pos:match.start()], match.end()
        data, charset = _word_bytes(match[2], match[3]), match[1].split("*")[0].lower()
        adjacent = bool(run) and not gap.strip()
        if run and (not adjacent or data is None or charset != run_charset):
            parts.append(decode_bytes(b"".join(run), run_charset))
            run = []
        if data is None:
            parts.append(gap + match[0])
            continue
        if not adjacent:
            parts.append(gap)
        run.append(data)
        run_charset = charset
    if run:
        parts.append(decode_bytes(b"".join(run), run_charset))
    parts.append(value[pos:])
    return "".join(parts)


def _word_bytes(encoding: str, text: str) -> bytes | None:
    try:
        data = text.encode("ascii")
        if encoding in "bB":
            return base64.b64decode(data + b"=" * (-len(data) % 4))
        return binascii.a2b_qp(data, header=True)
    except (ValueError, binascii.Error):
        return None


@functools.lru_cache(maxsize=128)
def _codec(charset: str | None) -> str | None:
    """The Python codec for a MIME charset name, widened to the superset senders mean."""
    if not charset:
        return None
    try:
        codec = codecs.lookup(charset.strip().strip('"')).name
    except (LookupError, ValueError):
        return None  # X-UNKNOWN, x-mac-cyrillic, ...: the caller tries UTF-8
    return _CHARSET_SUPERSETS.get(codec.replace("-", "_"), codec)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Declared charset, else UTF-8, else the declared one with U+FFFD, else Latin-1."""
    codec = _codec(charset)
    for encoding, errors in ((codec, "strict"), ("utf-8", "strict"), (codec, "replace")):
        if encoding:
            try:
                return data.decode(encoding, errors)
            except (LookupError, UnicodeError):
                pass
    return data.decode("latin-1")


def safe_filename(name: str, content_type: str) -> str:
    """One harmless path component: no separators, controls, dot runs or leading dots,
    at most 200 UTF-8 bytes with the extension kept; a typed default when empty."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _INVISIBLE)
    name = re.sub(r"\.{2,}", ".", _FILENAME_BAD.sub("_", name)).strip().lstrip(".")
    name = name.rstrip(". ")
    if not name:
        default = ".txt" if content_type.startswith("text/") else ".bin"
        return "attachment" + (_MIME_TYPES.guess_extension(content_type) or default)
    stem, dot, ext = name.rpartition(".")
    if not stem or len(ext.encode()) > 20:
        stem, dot, ext = name, "", ""
    budget = _MAX_FILENAME_BYTES - len(ext.encode()) - len(dot)
    stem = stem.encode()[:budget].decode("utf-8", "ignore").rstrip(". ") or "attachment"
    return stem + dot + ext


def html_to_text(html: str) -> str:
    """Readable text from HTML: scripts, styles and comments dropped, blocks on lines.
    A linear scan: html.parser is quadratic on unclosed tags ("<a<a<a...")."""
    for start, end in _HTML_DROPPED:
        html = _drop_between(html, start, end)
    text = _TAG.sub(_tag_break, " ".join(html.split()))
    lines = (" ".join(line.split()) for line in unescape(text).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _drop_between(html: str, start: re.Pattern[str], end: re.Pattern[str]) -> str:
    kept: list[str] = []
    pos = 0
    while match := start.search(html, pos):
        kept.append(html[pos:match.start()])
        closing = end.search(html, match.end())
        if closing is None:
            return "".join(kept)  # never closed: a browser drops the rest too
        pos = closing.end()
    kept.append(html[pos:])
    return "".join(kept)


def _tag_break(match: re.Match[str]) -> str:
    return "\n" if (match[1] or "").lower() in _BLOCK_TAGS else ""
