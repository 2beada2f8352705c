"""inbox_raw: a message's bytes apart from its inbox row, which processing updates

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox_raw",
        sa.Column("inbox_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("inbox_id"),
    )
    op.execute("INSERT INTO inbox_raw (inbox_id, raw) SELECT id, raw FROM inbox")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("raw")


def downgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE inbox SET raw = (SELECT raw FROM inbox_raw WHERE inbox_id = inbox.id)")
    with op.batch_alter_table("inbox") as batch:
        batch.alter_column("raw", existing_type=sa.LargeBinary(), nullable=False)
    op.drop_table("inbox_raw")
