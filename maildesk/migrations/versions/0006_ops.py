"""ticket list indexes: (status, merged_into, id) and (queue, merged_into, id)

`maildesk tickets list --status S` / `--queue Q` reads its page from one of these in id
order and counts its total from the index alone; they replace the single-column indexes
on status and queue, which they cover.

Revision ID: 0006_ops
Revises: 0005_sla
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_ops"
down_revision: str | None = "0005_sla"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_ticket_status_list", "ticket", ["status", "merged_into", "id"])
    op.create_index("ix_ticket_queue_list", "ticket", ["queue", "merged_into", "id"])
    op.drop_index("ix_ticket_status", table_name="ticket")
    op.drop_index("ix_ticket_queue", table_name="ticket")


def downgrade() -> None:
    op.create_index("ix_ticket_queue", "ticket", ["queue"])
    op.create_index("ix_ticket_status", "ticket", ["status"])
    op.drop_index("ix_ticket_queue_list", table_name="ticket")
    op.drop_index("ix_ticket_status_list", table_name="ticket")
