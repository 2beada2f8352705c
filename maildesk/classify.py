"""Is a message machine-written, or bulk mail? (SPEC §2.3, §2.6)

Machine-written mail (auto-replies, bounces, reports) never triggers anything and
opens no ticket by default. Bulk and list mail, and mail from no-reply senders, is
written by people and handled as such, but never auto-answered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from maildesk.domain import Classification, ParsedMail

_DAEMON_LOCALS = frozenset({"mailer-daemon", "mailerdaemon", "postmaster"})
_NOREPLY_LOCAL = re.compile(r"(?:no|do[-_.]?not)[-_.]?reply(?:$|[-_.+])")
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})


def classify(
    mail: ParsedMail, envelope_from: str | None, desk_addresses: Iterable[str] = ()
) -> Classification:
    """Classify one message. `envelope_from` is the SMTP MAIL FROM ("" for the null
    sender); None when unknown (a file ingest), then Return-Path stands in for it."""
    bounce = _is_bounce(mail)
    automatic = (
        ("delivery status notification" if bounce else None)
        or _auto_submitted(mail)
        or _report(mail)
        or _auto_reply_headers(mail)
        or _null_sender(mail, envelope_from)
        or _daemon_sender(mail, envelope_from)
        or _our_loop(mail, desk_addresses)
    )
    return Classification(automatic=automatic, bulk=_bulk(mail), bounce=bounce)


def _is_bounce(mail: ParsedMail) -> bool:
    if mail.dsn is not None:
        return True
    ctype, params = _content_type(mail)
    return ctype == "multipart/report" and params.get("report-type") == "delivery-status"


def _auto_submitted(mail: ParsedMail) -> str | None:
    value = mail.header("Auto-Submitted")
    if value is None:
        return None
    keyword = value.split(";", 1)[0].strip().lower()
    return None if keyword == "no" else f"Auto-Submitted: {keyword}"


def _report(mail: ParsedMail) -> str | None:
    """Other reports (read receipts, abuse feedback) are machine-written too."""
    ctype, params = _content_type(mail)
    if ctype != "multipart/report":
        return None
    return f"multipart/report ({params.get('report-type') or 'no report-type'})"


def _auto_reply_headers(mail: ParsedMail) -> str | None:
    for name in ("X-Autoreply", "X-Autorespond"):
        if mail.header(name) is not None:
            return f"{name} present"
    if _precedence(mail) == "auto_reply":
        return "Precedence: auto_reply"
    return None


def _null_sender(mail: ParsedMail, envelope_from: str | None) -> str | None:
    if envelope_from is not None:
        return "empty envelope sender" if envelope_from.strip() in ("", "<>") else None
    return_path = mail.header("Return-Path")
    if return_path is not None and "".join(return_path.split()) == "<>":
        return "Return-Path: <>"
    return None


def _daemon_sender(mail: ParsedMail, envelope_from: str | None) -> str | None:
    # A bare "From: MAILER-DAEMON" is no address to the parser: read its words then.
    words = [] if mail.from_addr else re.findall(r"[^\s<>()\"]+", mail.header("From") or "")
    for address in (mail.from_addr, envelope_from, *words):
        if address and _local_part(address) in _DAEMON_LOCALS:
            return f"sender {address.strip().strip('<>').lower()}"
    return None


def _our_loop(mail: ParsedMail, desk_addresses: Iterable[str]) -> str | None:
    loop = (mail.header("X-Loop") or "").lower()
    if loop and any(address.lower() in loop for address in desk_addresses if address):
        return "X-Loop: ours"
    return None


def _bulk(mail: ParsedMail) -> str | None:
    precedence = _precedence(mail)
    if precedence in _BULK_PRECEDENCE:
        return f"Precedence: {precedence}"
    if mail.header("List-Id") is not None:
        return "List-Id present"
    if mail.from_addr and _NOREPLY_LOCAL.match(_local_part(mail.from_addr)):
        return f"no-reply sender {mail.from_addr}"
    return None


def _precedence(mail: ParsedMail) -> str:
    value = (mail.header("Precedence") or "").split(";", 1)[0].split()
    return value[0].lower() if value else ""


def _local_part(address: str) -> str:
    """The lowercased local part without a +tag: "MAILER-DAEMON+x@h" -> "mailer-daemon"."""
    local = address.strip().strip("<>").rpartition("@")[0] or address.strip().strip("<>")
    return local.split("+", 1)[0].lower()


def _content_type(mail: ParsedMail) -> tuple[str, dict[str, str]]:
    """The media type and lowercased parameters of the top-level Content-Type."""
    kind, *rest = (mail.header("Content-Type") or "").split(";")
    params: dict[str, str] = {}
    for param in rest:
        name, _, value = param.partition("=")
        params[name.strip().lower()] = value.strip().strip('"').lower()
    return kind.strip().lower(), params
