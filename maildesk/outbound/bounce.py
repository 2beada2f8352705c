"""Delivery status notifications for our own mail (SPEC §2.6).

Each outgoing message has its own envelope sender `bounces+<outbox id>-<token>@domain`,
so a bounce names the exact message that failed; threading has already put the report on
that message's ticket. Here a hard bounce (action failed, status 5.x.x) puts the failed
address on the suppression list, and the outbox row says what happened. Only addresses
the bounced message was really sent to are suppressed: a forged report cannot silence
anyone else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from maildesk import addresses
from maildesk.config import Settings
from maildesk.pipeline import Change
from maildesk.store import inbox, outbox

if TYPE_CHECKING:
    from maildesk.store.outbox import OutboxItem
    from maildesk.store.raw import Tx


def is_bounce(change: Change) -> bool:
    return change.mail.dsn is not None or change.classification.bounce


def handle(s: Tx, settings: Settings, change: Change) -> list[str]:
    row = bounced_message(s, settings, change)
    if row is None:
        return ["delivery report for no message of ours: nothing suppressed, never answered"]
    hard = [st for st in (change.mail.dsn.statuses if change.mail.dsn else ()) if st.is_hard_bounce]
    if not hard:
        return [f"delivery report for outbox {row.id}: no permanent failure, never answered"]
    sent_to = row.recipients
    failed = {st.recipient for st in hard if st.recipient in sent_to}
    status = ", ".join(sorted({st.status or "5.0.0" for st in hard}))
    why = f"bounced {status}: outbox {row.id}, inbox {change.inbox_id}"
    lines = []
    for addr in sorted(failed):
        added = outbox.suppress(s, addr, why, change.now)
        lines.append(f"suppressed {addr} ({why})" if added else f"{addr} already suppressed")
    outbox.mark_bounced(s, row.id, f"{status} reported by inbox {change.inbox_id}")
    return lines or [f"delivery report for outbox {row.id} names none of its recipients"]


def bounced_message(s: Tx, settings: Settings, change: Change) -> OutboxItem | None:
    """The outbox row a report is about: by VERP address first, else by Message-ID."""
    desk = settings.desk
    for rcpt in _recipients(s, change):
        outbox_id = addresses.outbox_from_bounce_address(rcpt, desk.address, desk.secret)
        row = outbox.by_id(s, outbox_id) if outbox_id is not None else None
        if row is not None:
            return row
    original = change.mail.dsn.original_message_id if change.mail.dsn else None
    return outbox.by_message_id(s, original) if original else None


def _recipients(s: Tx, change: Change) -> Iterable[str]:
    ids = [change.inbox_id] if change.inbox_id is not None else []
    found = [a for env in inbox.load_envelopes(s, ids).values() for a in env.envelope_to]
    for name in ("delivered-to", "x-original-to"):
        value = change.mail.header(name)
        if value:
            found.append(value.strip().strip("<>").lower())
    return dict.fromkeys([*found, *change.mail.to, *change.mail.cc])
