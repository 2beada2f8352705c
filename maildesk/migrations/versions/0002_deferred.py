"""deferred: messages stored from their headers, whose body and outgoing mail are to do

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deferred",
        sa.Column("inbox_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("new_ticket", sa.Boolean(), nullable=False),
        sa.Column("reply_templates", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("notify", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("inbox_id"),
    )


def downgrade() -> None:
    op.drop_table("deferred")
