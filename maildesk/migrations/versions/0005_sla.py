"""service levels: the ticket's SLA clock, its pauses, and the scheduled mail sent once

Revision ID: 0005_sla
Revises: 0003
Create Date: 2026-12-02 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005_sla"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sqlmodel.sql.sqltypes.UTCDateTime
_TEXT = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    with op.batch_alter_table("ticket") as batch:
        batch.add_column(sa.Column("sla_policy", _TEXT(), nullable=True))
        batch.add_column(sa.Column("next_response_from", _TIME(), nullable=True))
        batch.add_column(sa.Column("next_response_at", _TIME(), nullable=True))
        batch.add_column(sa.Column("next_response_met", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("next_response_breached", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("paused_since", _TIME(), nullable=True))
        batch.add_column(sa.Column("sla_next_at", _TIME(), nullable=True))
    with op.batch_alter_table("ticket") as batch:
        batch.alter_column("next_response_met", server_default=None)
        batch.alter_column("next_response_breached", server_default=None)
        batch.create_index("ix_ticket_sla_next_at", ["sla_next_at"], unique=False)
        batch.create_index("ix_ticket_status_paused_since", ["status", "paused_since"],
                           unique=False)
    # A ticket already waiting when this runs: its pause starts now, as if it just began.
    op.execute("UPDATE ticket SET paused_since = updated_at"
               " WHERE status IN ('pending', 'solved') AND merged_into IS NULL")

    op.create_table(
        "sla_pause",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("started_at", _TIME(), nullable=False),
        sa.Column("ended_at", _TIME(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sla_pause") as batch:
        batch.create_index("ix_sla_pause_ticket_id", ["ticket_id"], unique=False)

    op.create_table(
        "sla_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("target", _TEXT(length=32), nullable=False),
        sa.Column("due_at", _TIME(), nullable=False),
        sa.Column("kind", _TEXT(length=16), nullable=False),
        sa.Column("recipients", _TEXT(), nullable=False),
        sa.Column("created_at", _TIME(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ticket_id", "target", "due_at", "kind"),
    )
    op.create_table(
        "digest_mail",
        sa.Column("agent", _TEXT(), nullable=False),
        sa.Column("day", _TEXT(length=10), nullable=False),
        sa.Column("tickets", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME(), nullable=False),
        sa.PrimaryKeyConstraint("agent", "day"),
    )


def downgrade() -> None:
    op.drop_table("digest_mail")
    op.drop_table("sla_mail")
    with op.batch_alter_table("sla_pause") as batch:
        batch.drop_index("ix_sla_pause_ticket_id")
    op.drop_table("sla_pause")
    with op.batch_alter_table("ticket") as batch:
        batch.drop_index("ix_ticket_status_paused_since")
        batch.drop_index("ix_ticket_sla_next_at")
        for column in ("sla_next_at", "paused_since", "next_response_breached",
                       "next_response_met", "next_response_at", "next_response_from",
                       "sla_policy"):
            batch.drop_column(column)
