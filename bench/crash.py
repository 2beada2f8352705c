"""Crash bench (issue 13): `maildesk serve` killed with SIGKILL every ~2 s under load.

    python bench/crash.py [-n 10000] [--imap 2000] [--transport maildir|smarthost|both]
                          [--kill-every 2.0] [--clients 4] [--agent-every 10] [--json]

SMTP clients that retry on 4xx and lost connections (as an MTA does) send `-n` messages,
a private Dovecot holds `--imap` more for the daemon's IMAP intake, and one thread in
`--agent-every` gets an agent's reply that the desk relays; meanwhile the daemon is
killed at random moments (uniform 0.5-1.5 × `--kill-every` seconds apart) and restarted.
The outgoing mail goes to a Maildir, or through the smarthost transport to an aiosmtpd
capture server in a process of its own. At the end it prints, per transport, what was
lost or doubled: messages that got a 250 (or were in the mailbox) on no ticket or twice,
threads split across tickets, acknowledgements, notifications and relays written more or
less than once, and outgoing mail written or delivered more or less than once; and the
daemon's peak RSS. Exit 1 when any of those is not 0. The scenario: tests/crash_run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.crash_run import Load, lines, run  # noqa: E402
from tests.dovecot import dovecot_missing, remove, start_dovecot  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-n", "--messages", type=int, default=10_000, help="messages over SMTP")
    p.add_argument("--imap", type=int, default=2_000, help="messages through IMAP (0: none)")
    p.add_argument("--transport", choices=("maildir", "smarthost", "both"), default="both")
    p.add_argument("--kill-every", type=float, default=2.0, help="mean seconds between kills")
    p.add_argument("--clients", type=int, default=4, help="parallel SMTP connections")
    p.add_argument("--kills-after-load", type=int, default=3,
                   help="kills while the backlog drains, once all mail is in")
    p.add_argument("--agent-every", type=int, default=10,
                   help="one thread in N gets an agent's reply")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--daemon-repo", type=Path,
                   help="run the daemon from this checkout (e.g. an older commit, to compare)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    p.add_argument("--json", action="store_true", help="one JSON line per transport")
    args = p.parse_args()
    if args.imap and dovecot_missing():
        print(f"bench/crash.py: {dovecot_missing()} (or run with --imap 0)", file=sys.stderr)
        return 2
    load = Load(smtp=args.messages, imap=args.imap, agent_every=args.agent_every,
                kill_every=args.kill_every, clients=args.clients, seed=args.seed,
                kills_after_load=args.kills_after_load,
                settle_timeout=1800)
    say = (lambda _: None) if args.json else (lambda line: print(line, flush=True))
    transports = ["maildir", "smarthost"] if args.transport == "both" else [args.transport]
    server = start_dovecot("dovecot-crash-") if args.imap else None
    bad = False
    work_root = Path(tempfile.mkdtemp(prefix="maildesk-crash-"))
    try:
        for transport in transports:
            result = run(work_root / transport, transport, load, server, say,
                         args.daemon_repo)
            failures = result.failures()
            bad = bad or bool(failures)
            if args.json:
                print(json.dumps({**result.as_dict(), "load_average": os.getloadavg(),
                                  "failures": failures}), flush=True)
            else:
                for line in lines(result):
                    print(line, flush=True)
                print(f"  {'FAILED: ' + ', '.join(failures) if failures else 'ok'}; "
                      f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
                      flush=True)
    finally:
        if server is not None:
            remove(server)
        if args.keep:
            print(f"work folder: {work_root}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(work_root, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
