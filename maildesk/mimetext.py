"""Decoding the text that MIME carries: charsets, header words, file names, HTML.

Linear time on any input: message content is hostile. Standard library only, except
`header_codec`, which asks charset-normalizer (imported then) when raw 8-bit header bytes
are neither UTF-8 nor in a charset the message declares.
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
# Windows opens a device, not a file, for these names with any extension ("CON.txt")
_WINDOWS_DEVICE = re.compile(r"(?:con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])(?:\.|$)", re.I)
# controls, format (bidi overrides), surrogates, private use, unassigned, line breaks
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Labels that lie: senders write the superset and label it with the subset's name.
_CHARSET_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "iso8859_1": "cp1252",
                      "euc_kr": "cp949", "shift_jis": "cp932",
                      "iso8859_9": "cp1254", "tis_620": "cp874", "iso8859_11": "cp874",
                      "big5": "big5hkscs", "iso8859_8": "cp1255", "iso8859_6": "cp1256"}
_HTML_DROPPED = [(re.compile("<!--"), re.compile("-->"))] + [
    (re.compile(rf"<{tag}\b", re.I), re.compile(rf"</{tag}\s*>", re.I))
    for tag in ("script", "style", "title")
]
_TAG = re.compile(r"</?([a-zA-Z][a-zA-Z0-9]*)[^<>]*>|<[!?][^<>]*>")
# How HTML breaks lines, as a browser shows it: a block starts a line (Gmail writes every
# line as a <div>), a paragraph-like block also leaves a blank line, and a <br> ends one.
_BLOCK_TAGS = frozenset({"address", "article", "dd", "div", "dl", "dt", "footer", "header",
                         "li", "section", "tr"})
_PARAGRAPH_TAGS = frozenset({"blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol",
                             "p", "pre", "table", "ul"})
_HARD, _PARAGRAPH, _SOFT = "\x01", "\x02", "\x03"  # markers between tags and line breaks
_BREAKS = re.compile(" ?(?:[\x01\x02\x03] ?)+")  # spaces are single by then: linear
_SPACES = re.compile(" {2,}")
_CELL_TAGS = frozenset({"td", "th"})
_MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only: same names on every host


def header_text(raw: str, codec: str | None = None) -> str:
    """A raw header value as one line of text: 8-bit bytes (read with `codec`, see
    `header_codec`) and RFC 2047 words decoded."""
    value = unescape_8bit(raw, codec)
    if "=?" in value:
        value = decode_words(value)
    return " ".join(value.translate(_CONTROLS).split())


def unescape_8bit(value: str, codec: str | None = None) -> str:
    """Turn the parser's surrogate-escaped 8-bit bytes back into text: UTF-8 when they
    are (one header may be UTF-8 while another is not), else `codec` (`header_codec`)."""
    if value.isascii():
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return decode_bytes(data, codec)


def escaped_bytes(value: str) -> bytes | None:
    """The raw bytes of a value with surrogate-escaped 8-bit bytes; None when it has none."""
    if value.isascii():
        return None
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


_DETECT_BYTES = 4096
_LATIN_HIGH_PERCENT = 30  # of the letters, at most, in Latin-script text
_DETECT_WINDOW = 0.06  # a guess this much messier than the best one is still a candidate
# Among guesses about as good (short header text fits several legacy charsets), the one
# whose script mail most often comes in; a country's own charsets first (`tld_hint`).
_GUESS_ORDER = ("cp1252", "gb18030", "cp932", "cp1251", "koi8_r", "cp949", "big5",
                "cp1250", "cp1253", "cp1254", "cp1257", "cp1255", "cp1256", "cp874")
_TLD_CODECS = {
    "cn": ("gb18030",), "jp": ("cp932", "euc_jp"), "kr": ("cp949",), "tw": ("big5",),
    "hk": ("big5", "gb18030"), "ru": ("cp1251", "koi8_r"), "ua": ("cp1251", "koi8_u"),
    "by": ("cp1251",), "bg": ("cp1251",), "gr": ("cp1253",), "tr": ("cp1254",),
    "pl": ("cp1250",), "cz": ("cp1250",), "sk": ("cp1250",), "hu": ("cp1250",),
    "il": ("cp1255",), "th": ("cp874",),
}


def header_codec(samples: list[bytes], declared: str | None, tld: str = "") -> str:
    """The codec to read a message's raw 8-bit header bytes with (RFC 6532 or a legacy
    charset without encoded words): UTF-8 when they are that, else the charset the
    message declares for its text (widened, see `_codec`) when they read in it, else the
    charset of the sender's country (`tld`) when they read in it, else what a detector
    (charset-normalizer) makes of them, else windows-1252."""
    data = b"\n".join(s for s in samples if not _reads(s, "utf-8"))[:_DETECT_BYTES]
    if not data:
        return "utf-8"
    for codec in (_codec(declared), *_TLD_CODECS.get(tld.lower(), ())):
        if codec and _reads(data, codec):
            return codec
    if _latin_looking(data) and _reads(data, "cp1252"):
        return "cp1252"
    return _guess(data) or "cp1252"


def _latin_looking(data: bytes) -> bool:
    """Are the 8-bit bytes accents among ASCII letters ("J\xfcrgen", "caf\xe9"), as in
    Latin-script text, not the whole words of Cyrillic, Greek or CJK text?"""
    high = sum(1 for b in data if b >= 0x80)
    letters = high + sum(1 for b in data if b < 0x80 and chr(b).isalpha())
    return high * 100 < letters * _LATIN_HIGH_PERCENT


def _reads(data: bytes, codec: str) -> bool:
    try:
        text = data.decode(codec)
    except (LookupError, UnicodeError):
        return False
    return not any(unicodedata.category(c) in ("Cc", "Co") for c in text if c not in "\t\n")


def _guess(data: bytes) -> str | None:
    from charset_normalizer import from_bytes

    guesses = [g for g in from_bytes(data) if not g.encoding.startswith("utf_")]
    if not guesses:
        return None
    best = min(g.chaos for g in guesses)
    near = [_codec(g.encoding) or g.encoding for g in guesses if g.chaos <= best + _DETECT_WINDOW]
    ranked = sorted(near, key=lambda c: _GUESS_ORDER.index(c) if c in _GUESS_ORDER else 99)
    return ranked[0]


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
    no Windows device name (`CON.txt` becomes `_CON.txt`), at most 200 UTF-8 bytes with
    the extension kept; a typed default when empty."""
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
    name = stem + dot + ext
    return "_" + name if _WINDOWS_DEVICE.match(name) else name


def html_to_text(html: str) -> str:
    """Readable text from HTML: scripts, styles and comments dropped, blocks on lines.
    A linear scan: html.parser is quadratic on unclosed tags ("<a<a<a...")."""
    for start, end in _HTML_DROPPED:
        html = _drop_between(html, start, end)
    html = " ".join(html.translate(_NO_MARKERS).split())
    text = _BREAKS.sub(_line_breaks, _SPACES.sub(" ", _TAG.sub(_tag_break, html)))
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


_NO_MARKERS = dict.fromkeys(map(ord, _HARD + _PARAGRAPH + _SOFT))


def _tag_break(match: re.Match[str]) -> str:
    name = (match[1] or "").lower()
    if name == "br":
        return _HARD
    if name in _PARAGRAPH_TAGS:
        return _PARAGRAPH
    return _SOFT if name in _BLOCK_TAGS else " " if name in _CELL_TAGS else ""


def _line_breaks(match: re.Match[str]) -> str:
    """The line breaks a run of tags between two pieces of text makes: one for any block
    or <br>, one more for each <br> after the first tag of the run (`a<br><br>b`, an
    empty `<div><br></div>`; a <br> that just ends a block adds none), and at least a
    blank line around a paragraph."""
    run = match[0].replace(" ", "")
    newlines = 1 + run[1:].count(_HARD)
    return "\n" * (max(newlines, 2) if _PARAGRAPH in run else newlines)
