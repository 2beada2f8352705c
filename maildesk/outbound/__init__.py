"""Outbound mail: render (templates, headers) -> compose (outbox rows, in the ticket
change's transaction) -> react (who gets what) -> sender -> transports (Maildir, SMTP)."""
