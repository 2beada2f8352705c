"""live tickets by creation time: `maildesk report --since DATE` reads only its period

Without it the report's `merged_into IS NULL AND created_at >= ?` read every ticket of
the desk, however short the period asked for (SQLite took the merged_into index, whose
NULL range is every live ticket: a million for last week's figures). (merged_into,
created_at) is one index range for both conditions, and replaces the index on merged_into
alone, which it covers.

Revision ID: 0007_scale
Revises: 0006_ops
Create Date: 2026-12-01 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_scale"
down_revision: str | None = "0006_ops"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_ticket_live_created", "ticket", ["merged_into", "created_at"])
    op.drop_index("ix_ticket_merged_into", table_name="ticket")


def downgrade() -> None:
    op.create_index("ix_ticket_merged_into", "ticket", ["merged_into"])
    op.drop_index("ix_ticket_live_created", table_name="ticket")
