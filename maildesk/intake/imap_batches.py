"""Fetching in bounded batches, and keeping one bad message from blocking a mailbox.

A message the server cannot hand out shows up in two ways. Some servers
answer NO for it: the session then asks for each UID alone and reports the
bad one. Dovecot, for an unreadable file, answers BYE and drops the
connection. Then every UID of the batch becomes a suspect; after the
reconnect, suspects are fetched one at a time, so the next drop names the
culprit. Either way the message is logged once, left in the folder (never
moved or flagged, since nothing was committed) and retried a few times later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from maildesk import metrics
from maildesk.intake.imap_session import Fetched, ImapError, ImapSession

log = logging.getLogger(__name__)

RETRY_EVERY = 15 * 60.0  # seconds between retries of an unfetchable message
MAX_TRIES = 3  # then it is left alone until the daemon restarts


def plan_batches(uids: Sequence[int], sizes: dict[int, int], max_count: int,
                 max_bytes: int) -> Iterator[list[int]]:
    """Cut `uids` into batches of at most `max_count` messages and `max_bytes` bytes
    (a single larger message goes alone), so memory stays bounded."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if batch and (len(batch) >= max_count or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


@dataclass
class _Bad:
    reason: str
    tries: int
    last_try: float


class FetchGuard:
    """Per mailbox, across reconnects: suspects, unfetchable UIDs, and their retries."""

    def __init__(self, mailbox: str, folder: str) -> None:
        self.mailbox = mailbox
        self.folder = folder
        self.suspects: set[int] = set()
        self.bad: dict[int, _Bad] = {}

    def reset(self) -> None:
        """UIDVALIDITY changed: old UIDs mean nothing any more."""
        self.suspects.clear()
        self.bad.clear()

    def skip(self, uid: int, now: float | None = None) -> bool:
        """Leave `uid` out of this round (unfetchable, and no retry due)?"""
        bad = self.bad.get(uid)
        if bad is None:
            return False
        now = time.monotonic() if now is None else now
        return bad.tries >= MAX_TRIES or now - bad.last_try < RETRY_EVERY

    def retry_due(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return any(not self.skip(uid, now) for uid in self.bad)

    def fetch(self, session: ImapSession, uids: Sequence[int]) -> Fetched:
        """Fetch `uids`, suspects one at a time; raises ImapError when the connection drops."""
        normal = [u for u in uids if u not in self.suspects]
        raw: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        if normal:
            try:
                got = session.fetch(normal)
            except ImapError as exc:
                if exc.kind == "lost":
                    self.suspects.update(normal)
                raise
            raw.update(got.raw)
            failed.update(got.failed)
        for uid in (u for u in uids if u in self.suspects):
            try:
                got = session.fetch([uid])
            except ImapError as exc:
                if exc.kind == "lost":
                    self.suspects.discard(uid)
                    self._failed(uid, f"the server dropped the connection: {exc}")
                raise
            self.suspects.discard(uid)
            raw.update(got.raw)
            failed.update(got.failed)
        for uid, reason in failed.items():
            self._failed(uid, reason)
        for uid in raw:
            self.bad.pop(uid, None)
        return Fetched(raw, failed)

    def _failed(self, uid: int, reason: str) -> None:
        metrics.mailbox_errors.labels(self.mailbox, "fetch").inc()
        bad = self.bad.get(uid)
        if bad is None:
            self.bad[uid] = _Bad(reason, 1, time.monotonic())
            log.error("mailbox %s: cannot fetch UID %d in %s; skipped and left in the folder "
                      "(retried up to %d times, every %.0f min): %s", self.mailbox, uid,
                      self.folder, MAX_TRIES - 1, RETRY_EVERY / 60, reason)
            return
        bad.tries += 1
        bad.last_try = time.monotonic()
        bad.reason = reason
        if bad.tries >= MAX_TRIES:
            log.error("mailbox %s: UID %d in %s still cannot be fetched; left in the folder "
                      "until the next restart: %s", self.mailbox, uid, self.folder, reason)
