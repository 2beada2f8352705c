"""`python -m maildesk.cli`: the `maildesk` command."""

from maildesk.cli import run

run()
