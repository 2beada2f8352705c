"""How one IMAP mailbox is doing, told once per change (SPEC §6).

A mailbox that cannot connect or log in is retried with exponential backoff
(1 s, 2 s, 4 s … capped at 5 minutes). Each failed attempt is counted in
`maildesk_mailbox_errors`; the log gets one line when the state changes (up →
down, a different kind of failure, down → up), never one per attempt; and once
it has been failing for `desk.alert_after`, one mail goes to `desk.operators`
for the whole episode.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid

from maildesk import metrics
from maildesk.config import Mailbox, Settings
from maildesk.store import Database, mailboxes

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0


class Backoff:
    """1 s, 2 s, 4 s … up to 5 minutes; back to 1 s after a success."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_MAX) -> None:
        self.first, self.cap, self.delay = first, cap, 0.0

    def next(self) -> float:
        self.delay = self.first if self.delay == 0 else min(self.cap, self.delay * 2)
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


@dataclass
class Failure:
    kind: str
    message: str
    since: datetime
    attempts: int = 1
    alerted: bool = False


class MailboxHealth:
    """Up/down state of one mailbox, its metrics, and its log lines."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.connected_once = False
        self.failure: Failure | None = None
        metrics.mailbox_up.labels(mailbox.name).set(0)

    @property
    def where(self) -> str:
        m = self.mailbox
        return f"{m.username}@{m.host}:{m.port} ({m.tls})"

    def up(self, detail: str, now: datetime) -> None:
        metrics.mailbox_up.labels(self.mailbox.name).set(1)
        failure, self.failure = self.failure, None
        if failure is not None:
            log.info("mailbox %s: reconnected to %s after %s down (%d failed attempts); %s",
                     self.mailbox.name, self.where, _ago(now - failure.since),
                     failure.attempts, detail)
        elif not self.connected_once:
            log.info("mailbox %s: connected to %s; %s", self.mailbox.name, self.where, detail)
        self.connected_once = True

    def down(self, kind: str, message: str, now: datetime, retry_in: float) -> None:
        metrics.mailbox_up.labels(self.mailbox.name).set(0)
        metrics.mailbox_errors.labels(self.mailbox.name, kind).inc()
        failure = self.failure
        if failure is not None and failure.kind == kind:
            failure.attempts += 1
            failure.message = message
            return
        if failure is None:
            self.failure = Failure(kind, message, now)
        else:
            failure.kind, failure.message = kind, message
            failure.attempts += 1
        what = _WHAT.get(kind, kind)
        log.error("mailbox %s: %s (%s): %s; retrying in %.0fs, then with backoff up to %.0fs",
                  self.mailbox.name, what, self.where, message, retry_in, BACKOFF_MAX)

    def alert_due(self, now: datetime, after: timedelta) -> float | None:
        """Seconds until the alert is due (0: now); None when none is pending."""
        failure = self.failure
        if failure is None or failure.alerted:
            return None
        return max(0.0, (failure.since + after - now).total_seconds())


_WHAT = {
    "connect": "cannot connect",
    "login": "login failed",
    "credentials": "no usable password",
    "tls": "TLS failed",
    "folder": "folder unusable",
    "lost": "connection lost",
    "protocol": "unexpected server response",
    "database": "database unavailable",
    "internal": "internal error",
}


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def send_alert(db: Database, settings: Settings, health: MailboxHealth, now: datetime) -> None:
    """Queue the one alert of this failure episode (raises StoreUnavailable: try again)."""
    failure = health.failure
    if failure is None or failure.alerted:
        return
    desk = settings.desk
    name = health.mailbox.name
    if not desk.operators:
        log.warning("mailbox %s: failing for %s, but desk.operators is empty: no alert mailed",
                    name, _ago(now - failure.since))
    else:
        msg = alert_message(settings, health.mailbox, failure, now)
        mailboxes.queue_alert(
            db, recipients=desk.operators, envelope_from=desk.address,
            message_id=str(msg["Message-ID"]).strip("<>"), raw=msg.as_bytes(), now=now,
        )
        log.warning("mailbox %s: failing since %s; alert queued for %s", name,
                    failure.since.isoformat(timespec="seconds"), ", ".join(desk.operators))
    failure.alerted = True


def alert_message(settings: Settings, mailbox: Mailbox, failure: Failure,
                  now: datetime) -> EmailMessage:
    desk = settings.desk
    since = failure.since.isoformat(timespec="seconds")
    msg = EmailMessage()
    msg["From"] = formataddr((desk.name, desk.address))
    msg["To"] = ", ".join(desk.operators)
    msg["Subject"] = f"maildesk: mailbox {mailbox.name} failing since {since}"
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid("alert", domain=desk.message_id_domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Loop"] = desk.address
    wrap = textwrap.TextWrapper(width=72, subsequent_indent="      ")
    msg.set_content("\n".join([
        textwrap.fill(f"The IMAP mailbox {mailbox.name!r} has not worked since {since} "
                      f"({_ago(now - failure.since)}, {failure.attempts} failed attempts).", 72),
        "",
        f"  server:  {mailbox.host}:{mailbox.port}, tls {mailbox.tls}",
        f"  user:    {mailbox.username}",
        f"  folder:  {mailbox.folder}",
        f"  problem: {_WHAT.get(failure.kind, failure.kind)}",
        wrap.fill(f"  error:   {failure.message}"),
        "",
        "maildesk keeps retrying, at least every 5 minutes, and logs when it",
        "recovers. Mail waiting in this mailbox is not lost: it is fetched once",
        "the mailbox works again. This is the only alert for this failure;",
        "another one follows only after a recovery.",
        "",
    ]))
    return msg
