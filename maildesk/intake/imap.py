"""IMAP intake: every `[[mailboxes]]` entry polled by a thread of its own (SPEC §2.1, §5, §6).

Per mailbox and folder the database keeps a checkpoint (UIDVALIDITY, last UID).
A round fetches the UIDs above it with BODY.PEEK[] in batches (bounded by
count and bytes), commits the raw bytes *and* the new checkpoint in one
transaction, and only then moves the messages to `processed_folder` or flags
them \\Seen. The order makes crashes harmless:

* before the commit: nothing is stored, nothing is flagged; fetched again.
* between commit and MOVE: the messages are still in the folder, at or below
  the checkpoint. The sweep that runs on every (re)connect fetches what is
  still waiting there; the commit recognises it (Message-ID + content hash)
  and stores nothing twice, and the MOVE/flag happens then.

The same sweep is the first sync of a new folder and the re-scan after a
UIDVALIDITY change: with `processed_folder`, everything in the folder is
waiting mail; without it, the unseen messages are (as in Zammad or osTicket,
so pointing the desk at an existing mailbox does not import years of read
mail). New mail above the checkpoint is taken whatever its flags.

With IDLE the thread waits for the server's EXISTS and fetches at once; it
still ends and re-issues the IDLE every `poll_interval` (at most every 10
minutes, well within the 29-minute limit) and looks for new mail then, in case
a push got lost. Without IDLE it polls every `poll_interval`. A failure
closes the session; the thread reconnects with backoff (see imap_health) and
the sweep catches up on what arrived meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from maildesk import metrics
from maildesk.config import Mailbox, Settings
from maildesk.domain import Source
from maildesk.identity import identity
from maildesk.intake.imap_batches import FetchGuard, plan_batches
from maildesk.intake.imap_health import Backoff, Failure, MailboxHealth, send_alert
from maildesk.intake.imap_session import ImapError, ImapSession, Selected
from maildesk.logs import about
from maildesk.store import Database, StoreUnavailable, inbox, mailboxes
from maildesk.store.inbox import utcnow
from maildesk.store.mailboxes import Checkpoint, CheckpointMoved, MailboxLock

log = logging.getLogger(__name__)

IDLE_RENEW = 10 * 60.0  # re-issue IDLE long before the 29-minute limit (RFC 2177)
LOCK_RETRY = 10.0  # a standby node looks for a free mailbox this often
MAX_BATCH_BYTES = 16 * 1024 * 1024  # with batch_size, bounds the memory of one batch
PLAN_WINDOW = 5000  # UIDs whose sizes are looked up at a time
# Test hook, never set in production: SIGKILL the process right after a batch is
# committed and before it is moved/flagged (and before the worker hears of it), to
# prove that such a crash loses and doubles nothing (tests/test_imap.py).
CRASH_HOOK_ENV = "MAILDESK_TEST_CRASH_AFTER_COMMIT"

Wake = Callable[[], None]


class ImapIntake:
    """All IMAP pollers of the daemon: `start()`, `reload(settings)`, `stop(timeout)`."""

    def __init__(self, settings: Settings, db: Database, wake: Wake, *,
                 idle_renew: float = IDLE_RENEW) -> None:
        self.settings = settings
        self.db = db
        self.wake = wake
        self.idle_renew = idle_renew
        self.pollers: dict[str, MailboxPoller] = {}

    def start(self) -> None:
        for mailbox in self.settings.mailboxes:
            self._start(mailbox)

    def _start(self, mailbox: Mailbox) -> None:
        if mailbox.tls == "none" and mailbox.host not in ("localhost", "127.0.0.1", "::1"):
            log.warning("mailbox %s: tls = none: password and mail cross the network "
                        "unencrypted", mailbox.name)
        poller = MailboxPoller(mailbox, self.settings, self.db, self.wake, self.idle_renew)
        self.pollers[mailbox.name] = poller
        poller.start()

    def reload(self, settings: Settings) -> None:
        """Restart the pollers whose `[[mailboxes]]` entry changed; keep the others
        connected (they only pick up the new desk settings, e.g. operators)."""
        self.settings = settings
        wanted = {m.name: m for m in settings.mailboxes}
        for name, poller in list(self.pollers.items()):
            if wanted.get(name) != poller.mailbox:
                poller.stop(timeout=10.0)
                del self.pollers[name]
                log.info("mailbox %s: %s", name, "reconfigured" if name in wanted else "removed")
            else:
                poller.settings = settings
        for name, mailbox in wanted.items():
            if name not in self.pollers:
                self._start(mailbox)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every poller; IDLE waits are sliced, so this takes about a second."""
        deadline = time.monotonic() + timeout
        for poller in self.pollers.values():
            poller.stop_event.set()
        for poller in self.pollers.values():
            poller.join(max(0.0, deadline - time.monotonic()))
        self.pollers.clear()

    def failures(self) -> dict[str, Failure]:
        """Mailbox name → its failure episode, for the mailboxes failing now (/healthz)."""
        found = {name: p.health.failure for name, p in self.pollers.items()}
        return {name: f for name, f in found.items() if f is not None}

    def states(self) -> dict[str, bool]:
        """Mailbox name → connected now (for health checks)."""
        return {name: p.health.failure is None and p.health.connected_once
                for name, p in self.pollers.items()}


class LockLost(Exception):
    """The PostgreSQL connection holding this node's mailbox lock is gone."""


class MailboxPoller:
    """One thread for one mailbox: lock, connect, sync, wait, and again."""

    def __init__(self, mailbox: Mailbox, settings: Settings, db: Database, wake: Wake,
                 idle_renew: float) -> None:
        self.mailbox = mailbox
        self.settings = settings
        self.db = db
        self.wake = wake
        self.idle_renew = idle_renew
        self.stop_event = threading.Event()
        self.health = MailboxHealth(mailbox)
        self.backoff = Backoff()
        self.lock = MailboxLock(db, mailbox.name)
        self.standby = False
        self.guard = FetchGuard(mailbox.name, mailbox.folder)
        self.thread = threading.Thread(target=self._run, name=f"imap-{mailbox.name}",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("mailbox %s: still busy after %.0fs; leaving it", self.mailbox.name,
                        timeout)

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        self.join(timeout)

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                try:
                    self._attempt()
                except Exception as exc:  # a bug must not end intake from this mailbox
                    log.exception("mailbox %s: unexpected error", self.mailbox.name)
                    self._failed("internal", f"{type(exc).__name__}: {exc}")
        finally:
            self.lock.release()

    def _attempt(self) -> None:
        try:
            if not self._hold_lock():
                return
            session = ImapSession.open(self.mailbox)
        except (ImapError, StoreUnavailable) as exc:
            self._failed(_kind(exc), str(exc))
            return
        try:
            self._serve(session)
        except (ImapError, StoreUnavailable) as exc:
            session.close(polite=False)  # before the backoff: hold no dead socket
            self._failed(_kind(exc), str(exc))
        except (CheckpointMoved, LockLost) as exc:
            session.close(polite=False)
            log.warning("mailbox %s: %s; starting over", self.mailbox.name, exc)
            self.stop_event.wait(1.0)
        except BaseException:
            session.close(polite=False)
            raise
        else:
            session.close()

    def _hold_lock(self) -> bool:
        """Multi-node: only the node holding the mailbox's lock polls it (SPEC §5)."""
        if self.lock.acquire():
            if self.standby:
                log.info("mailbox %s: lock acquired, taking over polling", self.mailbox.name)
            self.standby = False
            return True
        if not self.standby:
            log.info("mailbox %s: polled by another node; standing by", self.mailbox.name)
        self.standby = True
        self.stop_event.wait(LOCK_RETRY)
        return False

    def _failed(self, kind: str, message: str) -> None:
        """Record the failure, alert when due, and wait out the backoff (interruptibly)."""
        delay = self.backoff.next()
        self.health.down(kind, message, utcnow(), delay)
        wake_at = time.monotonic() + delay
        alert_tried = False
        while not self.stop_event.is_set():
            due = self.health.alert_due(utcnow(), self.settings.desk.alert_after)
            if due == 0 and not alert_tried:
                alert_tried = True  # when the database refuses it, retry at the next failure
                self._alert()
                continue
            remaining = wake_at - time.monotonic()
            if remaining <= 0:
                return
            self.stop_event.wait(min(remaining, due) if due else remaining)

    def _alert(self) -> None:
        try:
            send_alert(self.db, self.settings, self.health, utcnow())
        except StoreUnavailable as exc:
            log.warning("mailbox %s: cannot queue the alert yet: %s", self.mailbox.name, exc)

    # --- one connected session ------------------------------------------------------------

    def _serve(self, session: ImapSession) -> None:
        """Sync, then wait for news, until stopped. The mailbox counts as up (and the
        backoff restarts) only once a whole round has worked: a failure right after
        login (database down, MOVE refused) stays one failure episode, with one log
        line, a growing backoff and, in time, the alert."""
        m = self.mailbox
        selected = session.select()
        if m.processed_folder:
            session.ensure_folder(m.processed_folder)
        use_idle = m.idle and session.can_idle
        cp = self._checkpoint(session, selected)
        self._sweep(session, cp)
        healthy = False
        while not self.stop_event.is_set():
            if not self.lock.held():
                raise LockLost("lost the mailbox lock (database connection gone)")
            cp = self._pull_new(session, cp)
            if not healthy:
                healthy = True
                self.health.up(f"folder {m.folder}, UIDVALIDITY {selected.uidvalidity}, "
                               f"{'IDLE' if use_idle else 'polling'}", utcnow())
                self.backoff.reset()
            if self.guard.retry_due():
                self._sweep(session, cp)
            if self.stop_event.is_set():
                break
            if use_idle:  # ended every poll_interval too: a safety net for missed pushes
                session.idle(min(self.idle_renew, m.poll_interval.total_seconds()),
                             self.stop_event)
            elif not self.stop_event.wait(m.poll_interval.total_seconds()):
                session.noop()

    def _checkpoint(self, session: ImapSession, selected: Selected) -> Checkpoint:
        """The stored checkpoint, or a new one at the top of the folder when there is none
        or UIDVALIDITY changed; the sweep then takes what is waiting below it."""
        m = self.mailbox
        cp = mailboxes.get_checkpoint(self.db, m.name, m.folder)
        if cp is not None and cp.uidvalidity == selected.uidvalidity:
            return cp
        top = (selected.uidnext - 1 if selected.uidnext
               else max(session.uids_after(0), default=0))
        if cp is None:
            log.info("mailbox %s: first sync of %s", m.name, m.folder)
        else:
            log.warning("mailbox %s: UIDVALIDITY of %s changed from %d to %d: re-scanning; "
                        "messages already stored are skipped", m.name, m.folder,
                        cp.uidvalidity, selected.uidvalidity)
        self.guard.reset()
        return mailboxes.reset_checkpoint(self.db, m.name, m.folder,
                                          Checkpoint(selected.uidvalidity, top))

    def _sweep(self, session: ImapSession, cp: Checkpoint) -> None:
        """Messages at or below the checkpoint still waiting in the folder: a first sync,
        a re-scan, leftovers of a crash between commit and MOVE, earlier fetch failures."""
        waiting = [u for u in session.uids_upto(
            cp.last_uid, unseen_only=self.mailbox.processed_folder is None)
            if not self.guard.skip(u)]
        if waiting:
            log.info("mailbox %s: %d message(s) waiting in %s", self.mailbox.name,
                     len(waiting), self.mailbox.folder)
        for chunk in self._batches(session, waiting):
            self._import(session, cp, chunk, advance=False)
            if self.stop_event.is_set():
                return

    def _pull_new(self, session: ImapSession, cp: Checkpoint) -> Checkpoint:
        """Everything above the checkpoint, batch by batch; the checkpoint follows.

        It searches again until nothing new turns up: the server announces mail
        that arrives during a FETCH or MOVE in that command's response, not in
        the IDLE that follows, so only an empty SEARCH right before IDLE is safe."""
        while not self.stop_event.is_set():
            uids = session.uids_after(cp.last_uid)
            if not uids:
                break
            for chunk in self._batches(session, uids):
                cp = self._import(session, cp, chunk, advance=True)
                if self.stop_event.is_set():
                    break
        return cp

    def _batches(self, session: ImapSession, uids: Sequence[int]) -> Iterator[list[int]]:
        for i in range(0, len(uids), PLAN_WINDOW):
            window = list(uids[i:i + PLAN_WINDOW])
            sizes = session.sizes(window) if len(window) > 1 else {}
            yield from plan_batches(window, sizes, self.mailbox.batch_size, MAX_BATCH_BYTES)

    # --- one batch ------------------------------------------------------------------------

    def _import(self, session: ImapSession, cp: Checkpoint, uids: list[int], *,
                advance: bool) -> Checkpoint:
        """Fetch, commit (with the checkpoint), and only then move or flag.

        The checkpoint passes UIDs that could not be fetched: they stay in the
        folder, below it, where the sweep retries them (see imap_batches)."""
        m = self.mailbox
        fetched = self.guard.fetch(session, [u for u in uids if not self.guard.skip(u)])
        done = sorted(fetched.raw)
        rows = [self._row(uid, fetched.raw[uid]) for uid in done]
        top = max(uids) if advance else None
        if not rows and top is None:
            return cp
        ids = mailboxes.commit_batch(self.db, m.name, m.folder, cp, rows, last_uid=top)
        stored = [(uid, row, i) for uid, row, i in zip(done, rows, ids, strict=True) if i]
        if stored and os.environ.get(CRASH_HOOK_ENV) == "1":
            os.kill(os.getpid(), signal.SIGKILL)  # test hook, see CRASH_HOOK_ENV
        if stored:
            metrics.mailbox_fetched.labels(m.name).inc(len(stored))
            metrics.received.labels(Source.IMAP.value).inc(len(stored))
            self.wake()
        for uid, row, inbox_id in stored:
            log.info("mailbox %s: UID %d <%s> stored as inbox %d", m.name, uid,
                     row.message_id or "", inbox_id,
                     extra=about(inbox=inbox_id, message_id=row.message_id, mailbox=m.name))
        if len(stored) < len(done):
            log.info("mailbox %s: %d message(s) already stored, not stored again",
                     m.name, len(done) - len(stored))
        session.mark_done(done)
        return Checkpoint(cp.uidvalidity, max(cp.last_uid, top)) if top else cp

    def _row(self, uid: int, raw: bytes) -> inbox.Incoming:
        m = self.mailbox
        message_id, digest = identity(raw)
        return inbox.new_row(raw, source=Source.IMAP, message_id=message_id,
                             content_hash=digest, origin=f"{m.name}/{m.folder}/{uid}")


def _kind(exc: ImapError | StoreUnavailable) -> str:
    return exc.kind if isinstance(exc, ImapError) else "database"
