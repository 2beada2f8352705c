"""What an operator watches (SPEC §6): JSON log lines, /healthz through a database outage
and a failing mailbox, the metrics. Real daemons (`maildesk serve`), a real SMTP client,
the local PostgreSQL behind a TCP proxy the test stops and starts, a real Dovecot."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk import logs
from maildesk.config import ConfigError, load_settings
from tests.dovecot import Dovecot, serving
from tests.helpers import write_config
from tests.tcp_proxy import TcpProxy
from tests.test_imap import mailbox_toml
from tests.test_serve import Daemon, free_port, message, processed, wait_for


def with_metrics(d: Daemon) -> str:
    """Give the daemon a metrics listener; its HOST:PORT."""
    listen = f"127.0.0.1:{free_port()}"
    d.config.write_text(d.config.read_text() + f'\n[metrics]\nlisten = "{listen}"\n')
    return listen


def get(listen: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{listen}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_json_log_lines_parse_and_carry_the_ids(own_daemon: Daemon) -> None:
    d = own_daemon
    d.config.write_text(d.config.read_text() + '\n[log]\nformat = "json"\n')
    listen = with_metrics(d)
    d.start()
    code, _ = d.send(message(frm="Lou <lou@customer.example>", msgid="<log1@customer.example>"))
    assert code == 250
    [ack] = wait_for("the ack", lambda: d.mails_to("lou@customer.example"))
    ticket = processed(d.desk(), "log1@customer.example")
    status, text = get(listen, "/metrics")
    assert d.stop() == 0

    lines = d.log().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON event
    assert len(events) > 5
    for e in events:
        assert {"time", "level", "logger", "message"} <= set(e), e
        assert e["time"].endswith("Z") and e["level"] in ("debug", "info", "warning", "error")
    about = [e for e in events if e.get("message_id") == "log1@customer.example"]
    received = next(e for e in about if e["logger"] == "maildesk.intake.smtp")
    stored = next(e for e in about if e["logger"] == "maildesk.pipeline")
    assert received["inbox"] == stored["inbox"] and isinstance(received["inbox"], int)
    assert stored["ticket"] == ticket and "ticket" not in received
    sent = next(e for e in events if e["logger"] == "maildesk.outbound.sender"
                and e.get("message_id") == ack["Message-ID"].strip("<>"))
    assert sent["ticket"] == ticket and isinstance(sent["outbox"], int)
    assert "sent to lou@customer.example" in sent["message"]

    # and the metrics of SPEC §6, with those an operator alerts on
    assert status == 200
    for name in ("maildesk_messages_received_total", "maildesk_messages_processed_total",
                 "maildesk_messages_failed_total", "maildesk_tickets{",
                 "maildesk_outbox_backlog ", "maildesk_sla_breaches_total",
                 "maildesk_processing_latency_seconds_bucket",
                 "maildesk_outbox_failed_messages 0.0", "maildesk_outbox_failed_total",
                 "maildesk_scheduler_leader 1.0", "maildesk_database_up 1.0"):  # SQLite: leads
        assert name in text, name


@pytest.mark.postgres
def test_healthz_fails_while_postgresql_is_unreachable_and_recovers(
    own_daemon: Daemon, pg_url: str
) -> None:
    proxy = TcpProxy()
    host_part, _, dbname = pg_url.rpartition("/")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{dbname}"
    d = own_daemon
    d.config.write_text(d.config.read_text().replace(
        f'url = "sqlite:///{d.folder}/maildesk.db"', f'url = "{url}"'))
    assert url in d.config.read_text()
    listen = with_metrics(d)
    proxy.start()
    try:
        d.start()
        assert get(listen, "/healthz") == (200, "ok\n")
        assert d.send(message(msgid="<pg1@customer.example>"))[0] == 250

        proxy.stop()  # the database is gone, as far as the daemon can tell
        status, body = wait_for("/healthz to fail",
                                lambda: (s := get(listen, "/healthz"))[0] == 503 and s)
        assert body.startswith("unhealthy\n") and "database unreachable" in body
        code, text = d.send(message(msgid="<pg2@customer.example>"))
        assert code == 451 and b"try again later" in text  # nothing accepted, nothing lost
        assert "maildesk_database_up 0.0" in get(listen, "/metrics")[1]

        proxy.start()  # back: the daemon recovers by itself
        wait_for("/healthz to recover", lambda: get(listen, "/healthz") == (200, "ok\n"),
                 timeout=30)
        assert d.send(message(msgid="<pg3@customer.example>"))[0] == 250
        desk = d.desk()
        wait_for("the message after the outage", lambda: processed(desk, "pg3@customer.example"))
        assert processed(desk, "pg1@customer.example")
        desk.db.dispose()
        assert d.stop() == 0
    finally:
        d.kill()
        proxy.stop()


@pytest.fixture
def own_dovecot() -> Iterator[Dovecot]:
    yield from serving()


@pytest.mark.dovecot
def test_healthz_fails_once_a_mailbox_has_failed_for_alert_after_and_recovers(
    own_daemon: Daemon, own_dovecot: Dovecot
) -> None:
    d = own_daemon
    text = d.config.read_text().replace('secret = "', 'alert_after = "3s"\nsecret = "', 1)
    d.config.write_text(text + mailbox_toml("hosted", own_dovecot, tls="none",
                                            processed="Done", poll="1s"))
    listen = with_metrics(d)
    d.start()
    wait_for("the mailbox connected", lambda: "mailbox hosted: connected" in d.log(),
             timeout=20)
    assert get(listen, "/healthz") == (200, "ok\n")

    own_dovecot.stop()
    wait_for("the failure noticed", lambda: "mailbox hosted: connection lost" in d.log()
             or "mailbox hosted: cannot connect" in d.log(), timeout=20)
    assert get(listen, "/healthz")[0] == 200  # failing, but not yet for alert_after
    status, body = wait_for("/healthz to fail",
                            lambda: (s := get(listen, "/healthz"))[0] == 503 and s, timeout=20)
    assert "mailbox hosted: failing since" in body

    own_dovecot.start()
    wait_for("/healthz to recover", lambda: get(listen, "/healthz") == (200, "ok\n"),
             timeout=30)
    assert "mailbox hosted: reconnected" in d.log()
    assert d.stop() == 0


def test_the_log_table_is_checked_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILDESK_LOG_LEVEL", raising=False)
    bad = write_config(tmp_path, "sqlite:///x.db", '\n[log]\nformat = "xml"\nlevel = "loud"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(bad)
    assert "log.format: must be one of 'text' or 'json', got 'xml'" in e.value.problems
    assert any(p.startswith("log.level: must be one of 'debug'") for p in e.value.problems)
    good = write_config(tmp_path, "sqlite:///x.db", '\n[log]\nlevel = "Warning"\n')
    assert (load_settings(good).log.format, load_settings(good).log.level) == ("text", "warning")
    monkeypatch.setenv("MAILDESK_LOG_LEVEL", "DEBUG")
    assert load_settings(good).log.level == "debug"


def test_an_event_with_a_traceback_is_one_line_in_both_formats() -> None:
    logger = logging.getLogger("maildesk.test_operations")
    for formatter in (logs.TextFormatter(logs.TEXT_FORMAT), logs.JsonFormatter()):
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logger.exception("inbox %s: failed", 7, extra=logs.about(inbox=7, ticket=None))
        finally:
            logger.removeHandler(handler)
        [line] = out.getvalue().splitlines()
        assert "Traceback" in line and "ValueError: boom" in line
        if isinstance(formatter, logs.JsonFormatter):
            event = json.loads(line)
            assert event["message"] == "inbox 7: failed" and event["inbox"] == 7
            assert "ticket" not in event and event["exception"].count("\n") > 2
