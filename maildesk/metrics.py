"""Prometheus metrics (SPEC §6): the only importer of prometheus-client.

Counters are process-wide; the daemon serves them with /healthz on
`metrics.listen`. Gauges that describe the database (tickets by status,
outbox backlog and failed messages, follow-ups waiting, database up) are filled
by the daemon at scrape time; `maildesk_scheduler_leader` by the scheduler.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry()

received = Counter(
    "maildesk_messages_received", "Messages committed to the inbox", ["source"], registry=REGISTRY
)
processed = Counter(
    "maildesk_messages_processed", "Messages processed, by resulting state", ["state"],
    registry=REGISTRY,
)
failed = Counter("maildesk_messages_failed", "Messages parked as failed", registry=REGISTRY)
latency = Histogram(
    "maildesk_processing_latency_seconds", "From inbox commit to ticket commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)
smtp_rejected = Counter(
    "maildesk_smtp_rejected", "SMTP commands refused", ["code"], registry=REGISTRY
)
outbox_sent = Counter("maildesk_outbox_sent", "Outgoing messages delivered", registry=REGISTRY)
outbox_failed = Counter(
    "maildesk_outbox_failed", "Outgoing messages given up (5xx or too old)", registry=REGISTRY
)
outbox_backlog = Gauge(
    "maildesk_outbox_backlog", "Outgoing messages waiting to be sent", registry=REGISTRY
)
outbox_failed_messages = Gauge(
    "maildesk_outbox_failed_messages",
    "Outgoing messages given up and not retried since (maildesk outbox list --state failed)",
    registry=REGISTRY,
)
follow_ups = Gauge(
    "maildesk_followups_waiting",
    "Messages stored from their headers whose body and outgoing mail are still to do",
    registry=REGISTRY,
)
tickets = Gauge("maildesk_tickets", "Tickets by status", ["status"], registry=REGISTRY)
sla_breaches = Counter(
    "maildesk_sla_breaches", "SLA due times passed unmet (breach mail queued)", registry=REGISTRY
)
sla_reminders = Counter(
    "maildesk_sla_reminders", "SLA reminders queued ahead of a due time", registry=REGISTRY
)
sla_auto_closed = Counter(
    "maildesk_sla_auto_closed", "Pending tickets solved for want of a customer reply",
    registry=REGISTRY,
)
scheduler_leader = Gauge(
    "maildesk_scheduler_leader",
    "1 while this node runs the scheduled jobs (SLA scan, auto-close, digest), else 0",
    registry=REGISTRY,
)
database_up = Gauge(
    "maildesk_database_up", "1 when the last look at the database (scrape, /healthz) worked",
    registry=REGISTRY,
)
mailbox_up = Gauge(
    "maildesk_mailbox_up", "1 when the IMAP mailbox is connected and logged in", ["mailbox"],
    registry=REGISTRY,
)
mailbox_errors = Counter(
    "maildesk_mailbox_errors", "IMAP connection or login failures", ["mailbox", "kind"],
    registry=REGISTRY,
)
mailbox_fetched = Counter(
    "maildesk_mailbox_fetched", "Messages fetched from IMAP and committed", ["mailbox"],
    registry=REGISTRY,
)


def exposition() -> tuple[str, bytes]:
    """Content type and body of a scrape, in the Prometheus text format."""
    return CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
