"""business times on the ticket: `maildesk report` over years of tickets

The report's business-time medians walked a calendar for every ticket it counted
(~45 µs a ticket: 38 s for a million). maildesk.deadlines now records them when they
happen, beside the due times. Tickets of older releases have them NULL, and the report
computes those as before.

Revision ID: 0008_report_times
Revises: 0007_scale
Create Date: 2026-12-01 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_report_times"
down_revision: str | None = "0007_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ticket", sa.Column("first_response_business", sa.Float(), nullable=True))
    op.add_column("ticket", sa.Column("resolution_business", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ticket") as batch:
        batch.drop_column("resolution_business")
        batch.drop_column("first_response_business")
