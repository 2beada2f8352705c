"""Requester and subject from messy mail, as a mail client shows them (SPEC §2.1, §2.3).

Each kind of header mess is built here byte by byte and run through the real pipeline
(parse, thread, store) on a real database: the ticket's subject and requester are what
a user would see in `tickets list`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from maildesk.config import load_settings
from maildesk.parse import parse_headers, parse_message
from maildesk.thread import generic_keys, subject_key
from tests.helpers import CORPUS, Desk, message


def _ticket(desk: Desk, raw: bytes) -> tuple[str, str, str]:
    """(subject, requester, thread reason of the first entry) of the ticket raw opens."""
    outcome = desk.ingest(raw)
    assert outcome.ticket_id is not None, outcome
    ticket = desk.ticket(outcome.ticket_id)
    return ticket.subject, ticket.requester, desk.entries(ticket.id)[0].thread_reason


# --- where the header block starts -------------------------------------------------------

MBOX = (b"From ann@example.com  Mon Jun  3 10:00:00 2024\n"
        b"Return-Path: <ann@example.com>\nFrom: Ann Example <ann@example.com>\n"
        b"Subject: Printer jam\nMessage-ID: <mbox1@example.com>\n\nIt jams.\n>From here on.\n")


@pytest.mark.parametrize(("name", "raw"), [
    ("mbox-from-line", MBOX),
    ("mbox-from-line-crlf", MBOX.replace(b"\n", b"\r\n")),
    ("escaped-from-line", b">" + MBOX),
    ("stray-tool-line", b"Forwarded by MailRelay 2.1 on behalf of ann\n" + MBOX.split(b"\n", 1)[1]),
    ("blank-line-above", b"\n" + MBOX.split(b"\n", 1)[1]),
    ("two-stray-lines", b"=== message 1 ===\n\n" + MBOX),
], ids=lambda v: v if isinstance(v, str) else "")
def test_the_header_block_after_lines_above_it_is_read(config_path: Path, name: str,
                                                       raw: bytes) -> None:
    desk = Desk.open(config_path)
    subject, requester, _ = _ticket(desk, raw)
    assert (subject, requester) == ("Printer jam", "ann@example.com")
    head = parse_headers(raw)
    assert head is not None and head.message_id == "mbox1@example.com"


def test_ingest_accepts_an_mbox_from_line(tmp_path: Path, config_path: Path) -> None:
    from maildesk.cli import main

    eml = tmp_path / "pipe.eml"
    eml.write_bytes(MBOX)
    assert main(["ingest", "--config", str(config_path), str(eml)]) == 0
    assert main(["ingest", "--queue", "--config", str(config_path), str(eml)]) == 0
    desk = Desk.open(config_path)
    [ticket] = desk.tickets()
    assert (ticket.subject, ticket.requester) == ("Printer jam", "ann@example.com")


# --- raw 8-bit header values ---------------------------------------------------------------

def _eight_bit(subject: str, name: str, charset: str, declared: str | None,
               domain: str = "example.com") -> bytes:
    ctype = f"Content-Type: text/plain; charset={declared}\n" if declared else ""
    body = "Hello." if declared is None else subject
    return (f"From: {name} <sender@{domain}>\nSubject: {subject}\nMIME-Version: 1.0\n"
            f"{ctype}\n{body}\n").encode(charset)


EIGHT_BIT = [
    ("gb2312", "发票问题请帮忙", "张伟", "gb2312", "gb2312"),
    ("gbk-labelled-gb2312", "关于訂單的問題", "王芳", "gbk", "gb2312"),  # traditional: GBK only
    ("gb18030", "请帮忙查看订单", "李娜", "gb18030", "gb18030"),
    ("shift_jis", "請求書についての質問", "田中", "shift_jis", "shift_jis"),
    ("windows-1251", "Вопрос по счёту", "Иван Петров", "cp1251", "windows-1251"),
    ("windows-1252", "Résumé – “quoted”", "Müller", "cp1252", "windows-1252"),
    ("windows-1252-labelled-latin1", "Invoice – €20 “paid”", "Zoë", "cp1252", "iso-8859-1"),
    ("windows-1250", "Dotaz na fakturu – Łukasz", "Wróbel", "cp1250", "windows-1250"),
    ("koi8-r", "Вопрос по счёту", "Иван Петров", "koi8_r", "koi8-r"),
    ("euc-kr", "송장에 대한 질문", "김철수", "euc_kr", "euc-kr"),
]


@pytest.mark.parametrize(("name", "subject", "sender", "codec", "declared"), EIGHT_BIT,
                         ids=[e[0] for e in EIGHT_BIT])
def test_raw_8bit_headers_in_the_charset_the_message_declares(
    config_path: Path, name: str, subject: str, sender: str, codec: str, declared: str,
) -> None:
    raw = _eight_bit(subject, sender, codec, declared)
    mail = parse_message(raw)
    assert (mail.subject, mail.from_name) == (subject, sender)
    assert parse_headers(raw) is not None and parse_headers(raw).subject == subject  # type: ignore[union-attr]
    desk = Desk.open(config_path)
    assert _ticket(desk, raw)[:2] == (subject, "sender@example.com")


@pytest.mark.parametrize(("subject", "sender", "codec", "domain"), [
    ("关于发票的问题，请尽快回复", "张伟", "gbk", "example.cn"),
    ("請求書についての質問です", "田中", "shift_jis", "example.jp"),
    ("Вопрос по счёту номер сорок два", "Иван Петров", "koi8_r", "example.ru"),
    ("Вопрос по счёту номер сорок два", "Иван Петров", "cp1251", "example.com"),
    ("Café déjà payé, où est ma commande ?", "Jürgen", "cp1252", "example.com"),
    ("Größe der Rechnung", "Jörg Müller", "cp1252", "example.de"),
], ids=["gbk-cn", "sjis-jp", "koi8-ru", "cp1251-guessed", "cp1252-guessed", "latin-de"])
def test_raw_8bit_headers_without_a_declared_charset(subject: str, sender: str, codec: str,
                                                     domain: str) -> None:
    """No charset anywhere: the sender's country, else a guess; never Latin-1 mojibake."""
    mail = parse_message(_eight_bit(subject, sender, codec, None, domain))
    assert (mail.subject, mail.from_name) == (subject, sender)


def test_utf8_and_legacy_headers_in_one_message() -> None:
    mail = parse_message(b"From: J\xfcrgen <j@example.com>\nSubject: caf\xc3\xa9\n\nx\n")
    assert (mail.subject, mail.from_name) == ("café", "Jürgen")


@pytest.mark.parametrize(("word", "text"), [
    ("=?gb2312?B?" + __import__("base64").b64encode("訂單問題".encode("gbk")).decode() + "?=",
     "訂單問題"),
    ("=?iso-8859-1?Q?=80_20_=93paid=94?=", "€ 20 “paid”"),
    ("=?ks_c_5601-1987?B?" + __import__("base64").b64encode("똠방각하".encode("cp949")).decode()
     + "?=", "똠방각하"),
], ids=["gb2312-is-gbk", "latin1-is-cp1252", "euc-kr-is-cp949"])
def test_lying_charset_labels_in_encoded_words(word: str, text: str) -> None:
    mail = parse_message(f"From: a@example.com\nSubject: {word}\n\nx\n".encode())
    assert mail.subject == text


# --- From values that are not clean addresses ---------------------------------------------

FROMS = [
    ("name-and-bare-address", b"From: Test test@example.com\n", "test@example.com"),
    ("space-in-local-part", b"From: John <john smith@example.com>\n", "johnsmith@example.com"),
    ("cfws-around-dots", b"From: john . smith @ example.com\n", "john.smith@example.com"),
    ("trailing-dot", b"From: john@example.com.\n", "john@example.com"),
    ("trailing-dot-in-brackets", b"From: John <john@example.com.>\n", "john@example.com"),
    ("never-closed", b"From: Bob Smith <bob@example.com\n", "bob@example.com"),
    ("second-from-when-first-is-junk", b"From: junk\nFrom: Real <real@example.com>\n",
     "real@example.com"),
    ("two-addresses-no-comma", b"From: tim@example.com concierge@example.com\n",
     "tim@example.com"),
    ("encoded-name-hiding-crlf",
     b"From: =?utf-8?q?Evil=0D=0ABcc=3A_x=40evil.example?= <carol@example.com>\n",
     "carol@example.com"),
    ("encoded-name-hiding-an-address",
     b"From: =?utf-8?b?Qm9iIDxib2JAZXZpbC5leGFtcGxlPg0K?= <carol@example.com>\n",
     "carol@example.com"),
    ("obsolete-space-before-colon", b"From  : John Doe <jdoe@example.com>\n", "jdoe@example.com"),
]


@pytest.mark.parametrize(("name", "header", "requester"), FROMS, ids=[f[0] for f in FROMS])
def test_from_values_that_are_not_clean_addresses(config_path: Path, name: str, header: bytes,
                                                  requester: str) -> None:
    raw = header + b"Subject: Order 42\nMessage-ID: <" + name.encode() + b"@x.example>\n\nHi\n"
    desk = Desk.open(config_path)
    subject, got, reason = _ticket(desk, raw)
    assert (subject, got) == ("Order 42", requester)
    assert "requester" not in reason  # read from From: no fallback note
    mail = parse_message(raw)
    assert "\n" not in mail.from_name and "\r" not in mail.from_name
    outbox = desk.db  # the acknowledgement goes to the requester, not to anyone else
    from maildesk.store import outbox as outbox_store

    acks = [o for o in outbox_store.list_items(outbox) if o.template == "ack"]
    assert [list(o.recipients) for o in acks] == [[requester]]


@pytest.mark.parametrize(("headers", "requester", "note"), [
    (b"From: undisclosed\nSender: Desk Robot <robot@example.com>\nReply-To: r@example.com\n",
     "robot@example.com", "requester taken from Sender"),
    (b"From: (none)\nReply-To: Ann <ann@example.com>\n", "ann@example.com",
     "requester taken from Reply-To"),
], ids=["sender", "reply-to"])
def test_no_address_in_from_falls_back_to_sender_then_reply_to(
    config_path: Path, headers: bytes, requester: str, note: str,
) -> None:
    desk = Desk.open(config_path)
    raw = headers + b"Subject: Help me\n\nHi\n"
    subject, got, reason = _ticket(desk, raw)
    assert got == requester and note in reason


def test_the_envelope_sender_is_never_the_requester(config_path: Path) -> None:
    desk = Desk.open(config_path)
    outcome = desk.ingest(b"From: nobody\nSubject: Help me\n\nHi\n",
                          envelope_from="bounces+xyz@list.example")
    assert outcome.ticket_id is not None
    assert desk.ticket(outcome.ticket_id).requester != "bounces+xyz@list.example"


def test_corpus_from_values_as_a_mail_client_shows_them() -> None:
    cases = {
        "mikel-mail/plain_emails/raw_email_multiple_from.eml": "tim@powerupdev.com",
        "mikel-mail/rfc2822/example13.eml": "jdoe@machine.example",
        "mikel-mail/plain_emails/raw_email_trailing_dot.eml": "noreply@rubyforge.org",
        "mailgun-flanker/from-encoding.eml": "ingo@blank.pages.de",
        "mikel-mail/attachment_emails/attachment_pdf.eml": None,  # mbox From line: read past
    }
    for name, address in cases.items():
        mail = parse_message((CORPUS / name).read_bytes())
        if address is None:
            assert mail.from_addr and mail.subject, name
        else:
            assert mail.from_addr == address, name


# --- generic subjects never join by subject alone ------------------------------------------

GENERIC = {
    "en": ["your mail", "Help!", "(no subject)", "question", "hello", "test", "URGENT"],
    "de": ["Ihre Nachricht", "Hilfe", "(kein Betreff)", "Frage", "Hallo", "dringend"],
    "es": ["Su correo", "Ayuda", "(sin asunto)", "Pregunta", "Hola", "Urgente"],
    "fr": ["Votre message", "Aide", "(sans objet)", "Question", "Bonjour", "Urgent"],
    "it": ["La tua mail", "Aiuto", "(nessun oggetto)", "Domanda", "Ciao", "Urgente"],
    "pt": ["Sua mensagem", "Ajuda", "(sem assunto)", "Pergunta", "Olá", "Teste"],
    "nl": ["Uw bericht", "Hulp", "(geen onderwerp)", "Vraag", "Hallo", "Dringend"],
    "sv": ["Ditt meddelande", "Hjälp", "Fråga", "Hej"],
    "pl": ["Twoja wiadomość", "Pomoc", "Pytanie", "Pilne"],
    "ru": ["Ваше письмо", "Помощь", "Вопрос", "Срочно"],
}


@pytest.mark.parametrize("language", sorted(GENERIC))
def test_a_generic_subject_never_joins_by_subject_alone(config_path: Path,
                                                        language: str) -> None:
    desk = Desk.open(config_path)
    for n, subject in enumerate(GENERIC[language]):
        first = desk.ingest(message(subject=subject, msgid=f"<g{n}a@customer.example>"))
        again = desk.ingest(message(subject=f"Re: {subject}", msgid=f"<g{n}b@customer.example>"))
        assert first.ticket_id != again.ticket_id, subject
    specific = desk.ingest(message(subject="Printer on fire in room 4"))
    reply = desk.ingest(message(subject="AW: Printer on fire in room 4"))
    assert reply.ticket_id == specific.ticket_id  # a specific subject still joins


def test_generic_subjects_are_configurable(tmp_path: Path, db_url: str) -> None:
    from tests.helpers import write_config

    cfg = write_config(tmp_path, db_url, '\n[threading]\ngeneric_subjects = ["ticket"]\n')
    settings = load_settings(cfg)
    assert settings.threading.generic_subjects == ["ticket"]
    desk = Desk.open(cfg)
    assert desk.ingest(message(subject="Ticket")).ticket_id != desk.ingest(
        message(subject="Re: ticket")).ticket_id
    assert desk.ingest(message(subject="help")).ticket_id == desk.ingest(
        message(subject="Re: help")).ticket_id  # no longer in the list: joins
    assert generic_keys(["Re: [MD#1] Hilfe!"], "MD") == {subject_key("hilfe", "MD")}
