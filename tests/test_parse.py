"""parse.py against the shared corpus of real and broken mail, and hostile messages.

The corpus is `shared/corpus` next to the repository (MAILDESK_CORPUS overrides it).
Without it these tests fail: a missing corpus must never pass silently.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from maildesk import parse
from maildesk.domain import ParsedMail
from maildesk.identity import content_hash, header_message_id
from maildesk.mimetext import decode_bytes, html_to_text, safe_filename
from maildesk.parse import parse_headers, parse_message

CORPUS = Path(
    os.environ.get("MAILDESK_CORPUS")
    or Path(__file__).resolve().parents[2] / "shared" / "corpus"
)
FALLBACK_FILES = {  # mail-parser 4.8.0 raises AttributeError on these (PARSE-BASELINE.md)
    "stalwart-mail-parser/malformed/001.eml",
    "stalwart-mail-parser/malformed/003.eml",
    "stalwart-mail-parser/malformed/013.eml",
}
# file -> (recipient, action, status) of an RFC 3464 report; None: not a DSN at all
BOUNCES: dict[str, tuple[str, str, str] | None] = {
    "mailbox-full.eml": ("user@aol.com", "failed", "5.2.2"),
    "office365.eml": ("noname@example.com", "failed", "5.1.10"),
    "zed.eml": ("asdfasdfasdfasdfasdfasdfewrqertrtyrthsfgdfgadfqeadvxzvz@gmail.com",
                "failed", "5.1.1"),
    "delayed.eml": ("foo@example.com", "failed", "4.0.0"),
    "delayed-broken.eml": ("demo@example.com", "failed", "4.2.2"),
    "no-mx.eml": ("user@example.com", "delayed", "4.4.4"),
    "broken-mime.eml": None,  # plain-text bounces: automatic mail, but no DSN to read
    "gmail-invalid-address.eml": None,
    "gmail-no-dns.eml": None,
}


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.fail(f"mail corpus not found at {CORPUS}; set MAILDESK_CORPUS to shared/corpus")
    files = sorted(p for p in CORPUS.rglob("*")
                   if p.is_file() and p.suffix != ".md" and not p.name.startswith("."))
    if not files:
        pytest.fail(f"mail corpus at {CORPUS} holds no messages")
    return files


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[bytes, ParsedMail | BaseException]]:
    """Every corpus file, parsed once: relative path -> (raw, mail or the exception)."""
    parsed: dict[str, tuple[bytes, ParsedMail | BaseException]] = {}
    for path in _corpus_files():
        raw = path.read_bytes()
        try:
            result: ParsedMail | BaseException = parse_message(raw)
        except Exception as exc:
            result = exc
        parsed[path.relative_to(CORPUS).as_posix()] = (raw, result)
    return parsed


def _mails(corpus: dict[str, tuple[bytes, ParsedMail | BaseException]]) -> dict[str, ParsedMail]:
    return {name: m for name, (_, m) in corpus.items() if isinstance(m, ParsedMail)}


def _check_invariants(name: str, mail: ParsedMail) -> list[str]:
    problems = []
    ids = [mail.message_id or "x", *mail.in_reply_to, *mail.references]
    if any(c in i for i in ids for c in "<> \t\r\n"):
        problems.append(f"{name}: message id with <> or whitespace: {ids}")
    if any("@" not in i for i in (*mail.in_reply_to, *mail.references)):
        problems.append(f"{name}: reference without @")
    addresses = [a for a in (mail.from_addr, *mail.to, *mail.cc, *mail.reply_to) if a]
    if any(a != a.lower() or a != a.strip() for a in addresses):
        problems.append(f"{name}: address not normalised: {addresses}")
    texts = [mail.subject, mail.from_name, *mail.headers.values()]
    if any(not isinstance(t, str) or "\r" in t or "\n" in t for t in texts):
        problems.append(f"{name}: header text with CR/LF or not str")
    if any(k != k.lower() for k in mail.headers):
        problems.append(f"{name}: header name not lowercased")
    if not all(isinstance(t, str) for t in (mail.text, mail.display_body)):
        problems.append(f"{name}: text is not str")
    if mail.date is not None and mail.date.tzinfo is None:
        problems.append(f"{name}: naive date {mail.date}")
    stored = "".join([mail.subject, mail.from_name, mail.text, mail.display_body,
                      mail.html or "", *mail.headers.values(),
                      *(a.filename for a in mail.attachments)])
    try:  # everything must be storable as UTF-8, and in PostgreSQL text columns
        stored.encode()
    except UnicodeEncodeError as exc:
        problems.append(f"{name}: not encodable as UTF-8: {exc}")
    if "\x00" in stored:
        problems.append(f"{name}: NUL in stored text")
    return problems


HEADER_FIELDS = ("message_id", "in_reply_to", "references", "thread_index", "subject",
                 "from_addr", "from_name", "sender_addr", "reply_to", "to", "cc", "date",
                 "headers")


def test_the_header_block_alone_gives_every_header_field_of_a_whole_parse(
        corpus: dict[str, tuple[bytes, ParsedMail | BaseException]]) -> None:
    """Processing threads and stores from parse_headers and reads the body later
    (pipeline.py): both must agree on every field threading and rules look at."""
    differ = []
    for name, (raw, whole) in corpus.items():
        assert isinstance(whole, ParsedMail), name
        head = parse_headers(raw)
        if head is None:
            continue
        assert head.headers_only and not head.text and not head.attachments, name
        differ += [f"{name}: {field}: {getattr(head, field)!r} != {getattr(whole, field)!r}"
                   for field in HEADER_FIELDS if getattr(head, field) != getattr(whole, field)]
    assert not differ, "\n".join(differ[:10])
    assert not parse_message(next(iter(corpus.values()))[0]).headers_only


def test_header_block_edges() -> None:
    body = b"\r\n\r\nFrom: nobody in the body\r\n"
    head = parse_headers(b"From: a@x.example\r\nSubject: hi\r\n" + body)
    assert head is not None and head.from_addr == "a@x.example" and head.subject == "hi"
    no_body = parse_headers(b"From: a@x.example\nSubject: only headers\n")
    assert no_body is not None and no_body.subject == "only headers"
    huge = b"X-Filler: " + b"a" * 300_000 + b"\r\n\r\nbody"
    assert parse_headers(huge) is None  # only a whole parse copes with that


def test_every_corpus_file_parses(corpus: dict[str, tuple[bytes, ParsedMail | BaseException]]
                                  ) -> None:
    problems = [f"{name}: raised {result!r}" for name, (_, result) in corpus.items()
                if not isinstance(result, ParsedMail)]
    for name, mail in _mails(corpus).items():
        problems += _check_invariants(name, mail)
    assert not problems, "\n".join(problems)


def test_the_stdlib_fallback_reads_the_whole_corpus_too() -> None:
    problems = []
    for path in _corpus_files():
        name = path.relative_to(CORPUS).as_posix()
        try:
            mail = parse._parse_with_stdlib(path.read_bytes())
        except Exception as exc:
            problems.append(f"{name}: raised {exc!r}")
            continue
        assert mail.parser == "email"
        problems += _check_invariants(name, mail)
    assert not problems, "\n".join(problems)


def test_only_the_known_malformed_files_need_the_fallback(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]],
) -> None:
    fell_back = {name for name, mail in _mails(corpus).items() if mail.parser != "mail-parser"}
    assert fell_back == FALLBACK_FILES
    for name in FALLBACK_FILES:
        mail = _mails(corpus)[name]
        assert mail.parser == "email" and mail.text.strip() and mail.defects


def test_attachment_names_stay_inside_their_folder(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]], tmp_path: Path,
) -> None:
    folder = tmp_path.resolve()
    seen = 0
    for name, mail in _mails(corpus).items():
        for attachment in mail.attachments:
            seen += 1
            target = (folder / attachment.filename).resolve()
            assert target.parent == folder, (name, attachment.filename)
            assert _is_safe_name(attachment.filename), (name, attachment.filename)
            target.write_bytes(b"")
    assert seen > 50  # the corpus is full of attachments: the walk must find them


def _is_safe_name(name: str) -> bool:
    return (bool(name) and not name.startswith(".") and ".." not in name
            and not any(c in name for c in "/\\\x00\r\n")
            and len(name.encode()) <= 200)


def test_hostile_attachment_names_are_made_safe(tmp_path: Path) -> None:
    names = ["../../etc/passwd", "..\\..\\boot.ini", "evil\x00.exe", ".htaccess",
             "a" * 500 + ".pdf", "=?utf-8?q?line=0D=0Abreak.txt?=", "\u202etxt.exe", "...",
             "Ünïcödé 文件.doc", "=?utf-8?q?=2E=2E=2Fup.txt?="]
    parts = "".join(
        f'--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; '
        f'filename="{n}"\n\nx\n' for n in names)
    raw = (f'From: a@example.com\nContent-Type: multipart/mixed; boundary="b"\n\n{parts}'
           '--b\nContent-Type: application/pdf\nContent-Disposition: attachment; '
           "filename*=utf-8''..%2F..%2Fx%E2%80%AE.pdf\n\nx\n--b--\n").encode()
    got = [a.filename for a in parse_message(raw).attachments]
    assert len(got) == len(names) + 1
    assert all(_is_safe_name(n) for n in got), got
    assert got[0] == "passwd" and got[1] == "boot.ini" and got[3] == "htaccess"
    assert got[4].endswith(".pdf") and len(got[4].encode()) == 200
    assert got[5] == "line break.txt" and got[6] == "txt.exe"  # no CR/LF, no RTL override
    assert got[8] == "Ünïcödé 文件.doc" and got[9] == "up.txt" and got[10] == "x.pdf"
    assert safe_filename("", "image/png") == "attachment.png"
    assert safe_filename("", "text/x-weird") == "attachment.txt"
    # Windows devices, whatever the extension or case (found by tests/test_abuse.py)
    assert [safe_filename(n, "text/plain") for n in (
        "CON.txt", "nul.tar.gz", "LPT1", "com9.log", "aux", "console.txt", "auxiliary.doc")] == [
        "_CON.txt", "_nul.tar.gz", "_LPT1", "_com9.log", "_aux", "console.txt", "auxiliary.doc"]
    for n in got:
        (tmp_path / n).write_bytes(b"")


def test_message_ids_from_the_header_block_match_the_parser(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]],
) -> None:
    mismatches = [(name, header_message_id(raw), mail.message_id)
                  for name, (raw, mail) in corpus.items() if isinstance(mail, ParsedMail)
                  and header_message_id(raw) != mail.message_id]
    assert not mismatches


def test_unknown_charsets_still_give_text(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]],
) -> None:
    mails = _mails(corpus)
    assert "Test test. Hi. Waving." in mails["mikel-mail/plain_emails/raw_email10.eml"].text
    assert "Dear Colleague" in mails["php-mime-mail-parser/issue230"].text
    assert decode_bytes("café".encode(), "X-UNKNOWN") == "café"
    assert decode_bytes(b"caf\xe9", "x-mac-cyrillic") == "café"  # not UTF-8: Latin-1
    assert decode_bytes(b"\xff\xfe", "utf-8") == "\ufffd\ufffd"
    assert "すみません" in mails["mikel-mail/multi_charset/japanese_iso_2022.eml"].text
    assert "次の受信者" in mails["php-mime-mail-parser/failure.eml"].text  # gb2312 read as GB18030


def test_a_duplicated_subject_gives_the_first(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]],
) -> None:
    mail = _mails(corpus)["mikel-mail/mime_emails/raw_email_with_binary_encoded.eml"]
    assert mail.subject == "Testing outlook"


@pytest.mark.parametrize("name", sorted(BOUNCES))
def test_bounces_give_delivery_reports(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]], name: str,
) -> None:
    mail = _mails(corpus)[f"mailgun-flanker/bounce/{name}"]
    expected = BOUNCES[name]
    if expected is None:
        assert mail.dsn is None
        return
    assert mail.dsn is not None
    status = mail.dsn.statuses[0]
    assert (status.recipient, status.action, status.status) == expected
    assert status.is_hard_bounce == expected[2].startswith("5")


def test_every_bounce_in_the_corpus_is_in_the_table() -> None:
    folder = CORPUS / "mailgun-flanker" / "bounce"
    assert {p.name for p in _corpus_files() if p.parent == folder} == set(BOUNCES)


def test_a_bounce_names_the_message_that_bounced(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]],
) -> None:
    mails = _mails(corpus)
    dsn = mails["mailgun-flanker/bounce/mailbox-full.eml"].dsn  # text/rfc822-headers
    assert dsn is not None and dsn.original_message_id == "4E326A95.3010907@example.com"
    dsn = mails["mailgun-flanker/bounce/zed.eml"].dsn  # message/rfc822
    assert dsn is not None and dsn.original_message_id == "20090708054735.GC7578@example.com"
    dsn = mails["mikel-mail/multipart_report_emails/multi_address_bounce1.eml"].dsn
    assert dsn is not None and len(dsn.statuses) == 5
    assert all(s.is_hard_bounce for s in dsn.statuses)


def test_a_forwarded_bounce_is_not_a_bounce(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]],
) -> None:
    bounce = corpus["mailgun-flanker/bounce/zed.eml"][0].decode("latin-1")
    raw = ('From: customer@example.org\nSubject: Fwd: bounce\n'
           'Content-Type: multipart/mixed; boundary="f"\n\n--f\nContent-Type: text/plain\n\n'
           'Why did this bounce?\n--f\nContent-Type: message/rfc822\n'
           f'Content-Disposition: attachment\n\n{bounce}\n--f--\n').encode("latin-1")
    mail = parse_message(raw)
    assert mail.dsn is None
    assert mail.display_body.startswith("Why did this bounce?")
    assert any(a.content_type == "message/rfc822" and a.filename == "attachment.eml"
               for a in mail.attachments)


def test_headers_addresses_and_ids() -> None:
    raw = (b"From: =?utf-8?q?J=C3=B6rg?= <Joerg@Example.COM>\n"
           b"To: alice@example.com <bob@example.net>, \"Doe, Jane\" <JANE@example.org>\n"
           b"Cc: undisclosed-recipients:;\n"
           b"Subject: =?utf-8?b?SGVsbG8g?= =?utf-8?b?V8O2cmxk?= \xe2\x9c\x93\n"
           b"Message-ID: no-at-sign\n"
           b"In-Reply-To: <a@x> (comment)\n"
           b"References: <a@x>\n <b\n @y> <local> <a@x>\n"
           b"Date: Tue, 1 Jul 2025 10:00:00 +0200\n\nHi\n")
    mail = parse_message(raw)
    assert mail.parser == "mail-parser"
    assert (mail.from_addr, mail.from_name) == ("joerg@example.com", "Jörg")
    assert mail.to == ("bob@example.net", "jane@example.org")  # no forged alice@
    assert mail.cc == ()
    assert mail.subject == "Hello Wörld ✓"
    assert mail.message_id == "no-at-sign"
    assert mail.in_reply_to == ("a@x",)
    assert mail.references == ("a@x", "b@y")
    assert mail.date == datetime.fromisoformat("2025-07-01T08:00:00+00:00")
    assert header_message_id(raw) == "no-at-sign"


def test_header_injection_is_flattened() -> None:
    raw = (b"From: a@example.com\nSubject: =?utf-8?q?Hi=0D=0ABcc:_victim@example.com?=\n"
           b"X-Odd: =?utf-8?b?AAECAw==?=\n\nbody\n")
    mail = parse_message(raw)
    assert mail.subject == "Hi Bcc: victim@example.com"
    assert not any(ord(c) < 32 for c in mail.header("X-Odd") or "")


def test_eight_bit_headers_become_text() -> None:
    mail = parse_message(b"From: J\xfcrgen <j@example.com>\nSubject: caf\xc3\xa9\n\nx\n")
    assert (mail.subject, mail.from_name) == ("café", "Jürgen")


def test_html_only_mail_gets_text() -> None:
    raw = (b"From: a@example.com\nContent-Type: text/html; charset=utf-8\n\n"
           b"<html><style>p{}</style><p>Hello&nbsp;<b>there</b></p><div>line 2</div></html>")
    mail = parse_message(raw)
    assert mail.html is not None and mail.text == "Hello there\n\nline 2"


def test_display_body_drops_quotes_and_signature(
    corpus: dict[str, tuple[bytes, ParsedMail | BaseException]],
) -> None:
    mails = _mails(corpus)
    replies = {name: mail.display_body for name, mail in mails.items()
               if name.startswith("mailgun-talon/standard_replies/")}
    bottom_posted = "mailgun-talon/standard_replies/thunderbird.eml"  # an inline reply
    assert replies.pop(bottom_posted) == "> Hi \nHello"
    assert len(replies) == 11 and set(replies.values()) == {"Hello"}, replies


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff" * 5000,
    b"Subject: no body",
    b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i)
             for i in range(3000)),
    b"From: a@b.c\nSubject: " + b"\n ".join(b"=?utf-8?q?ab=C3=A9?=" for _ in range(60000)),
    b"From: a@b.c\nTo: " + b",\n ".join(b"u%d@example.org" % i for i in range(60000)),
    b"From: a@b.c\nContent-Type: text/html\n\n" + b"<a" * 200000,
    b"From: a@b.c\n\nOn " + b"word " * 100000,
    b"From: a@b.c\n\n" + b" " * 3_000_000 + b"x",
], ids=["empty", "binary", "headers-only", "deep-nesting", "huge-subject", "huge-to",
        "unclosed-tags", "long-line", "spaces"])
def test_hostile_messages_parse_fast(raw: bytes) -> None:
    started = time.perf_counter()
    mail = parse_message(raw)
    content_hash(raw)
    header_message_id(raw)
    assert isinstance(mail.subject, str) and isinstance(mail.text, str)
    assert time.perf_counter() - started < 5  # linear: well under a second on a laptop


def test_content_hash_ignores_transport() -> None:
    smtp = (b"Received: from mx.example.org by desk\r\nReturn-Path: <a@example.com>\r\n"
            b"From: a@example.com\r\nTo: support@example.com\r\nSubject: Help\r\n"
            b"Message-ID: <1@example.com>\r\n\r\nMy printer \r\nis on fire.\r\n")
    imap = (b"Delivered-To: support@example.com\nX-Spam-Score: 0\nFrom: a@example.com\n"
            b"To:  support@example.com\nSubject: Help\nMessage-ID:\n <1@example.com>\n\n"
            b"My printer\nis on fire.\n\n")
    assert content_hash(smtp) == content_hash(imap)
    assert content_hash(smtp) != content_hash(smtp.replace(b"fire", b"ice"))
    assert content_hash(smtp) != content_hash(smtp.replace(b"Subject: Help", b"Subject: Hi"))
    assert len(content_hash(b"")) == 64


def test_html_to_text_is_plain() -> None:
    assert html_to_text("<p>a &lt; b</p><!-- x --><script>bad()</script>c") == "a < b\n\nc"


def test_a_sign_off_is_the_writers_text() -> None:
    text = "Hello,\nThanks, that fixed it. But now the scanner fails too.\nIt says error 42.\n"
    mail = parse_message(b"From: c@x.example\nSubject: s\n\n" + text.encode())
    assert "error 42" in mail.display_body
    signed = parse_message(b"From: c@x.example\nSubject: s\n\nIt works.\n\nThanks,\nCarol\n")
    assert signed.display_body == "It works.\n\nThanks,\nCarol"


def test_long_lines_keep_their_text_and_the_quote_below_still_goes() -> None:
    line = "Details: " + "x" * 900 + " and then some words " * 30
    raw = ("From: carol@customer.example\nSubject: long\nContent-Type: text/plain\n\nHello,\n"
           + line + "\n\nOn Mon, 2 Nov 2026, Bob <bob@example.com> wrote:\n> old\n")
    mail = parse_message(raw.encode())
    assert line.strip() in mail.display_body and "old" not in mail.display_body


@pytest.mark.parametrize("body", [
    "On " + "x" * 200_000 + " wrote:\n> q\n",
    ("> " + "a" * 200_000 + "\n") * 3 + "answer\n",
    "Am " + "schrieb x " * 20_000 + ":\n",
    "From: " + "a " * 100_000 + "\nSent: x\nTo: y\n",
    ("-- \n" + "Sent from my " + "i" * 200_000 + "\n") * 2,
    ("On Mon, Bob wrote:\n> q\na\n" * 20_000),
    "\n".join(["> q", "a"] * 50_000),
], ids=["attribution", "quoted", "schrieb", "header", "mobile", "inline", "alternating"])
def test_trimming_is_linear_on_hostile_text(body: str) -> None:
    from maildesk.reply_text import written_text

    started = time.perf_counter()
    written_text(body)
    assert time.perf_counter() - started < 5  # linear: a fraction of a second alone


@pytest.mark.parametrize("html", [
    "<div" * 100_000,
    "<blockquote type=cite>" * 50_000,
    '<div class="gmail_quote">' + "<div>" * 50_000,
    "<div style='" + "border-top:solid " * 20_000 + "'>",
], ids=["unclosed", "nested-cite", "nested-gmail", "style"])
def test_html_quote_removal_is_linear(html: str) -> None:
    from maildesk.reply_text import without_quoted_html

    started = time.perf_counter()
    without_quoted_html(html)
    assert time.perf_counter() - started < 5  # linear: a fraction of a second alone
