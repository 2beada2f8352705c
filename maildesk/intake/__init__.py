"""Intake: the ways mail reaches the inbox (SMTP listener, IMAP pollers)."""
