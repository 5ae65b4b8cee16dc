"""broadcasts: mail-magazine issues, subscriber tags, and the claim's index that puts them last

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailer.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_FIRST = "state IN ('pending', 'sending') AND kind != 'broadcast'"


def upgrade() -> None:
    op.create_table(
        "broadcasts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body_text", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("audience", sa.String(length=200), nullable=False),
        sa.Column("archive", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("at", mailer.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", mailer.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", mailer.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", mailer.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("audience_upto", sa.Integer(), nullable=True),
        sa.Column("audience_next", sa.Integer(), nullable=True),
        sa.Column("audience_written", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_broadcasts_state", "broadcasts", ["state"])
    op.create_table(
        "subscriber_tags",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"]),
        sa.PrimaryKeyConstraint("subscriber_id", "tag"),
    )
    op.create_index("ix_subscriber_tags_tag", "subscriber_tags", ["tag"])
    op.create_index(
        "ix_deliveries_claimable_first",
        "deliveries",
        ["available_at"],
        sqlite_where=sa.text(_FIRST),
        postgresql_where=sa.text(_FIRST),
    )
    op.create_index(
        "ix_deliveries_broadcast",
        "deliveries",
        ["broadcast_id", "state"],
        sqlite_where=sa.text("broadcast_id IS NOT NULL"),
        postgresql_where=sa.text("broadcast_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_broadcast", table_name="deliveries")
    op.drop_index("ix_deliveries_claimable_first", table_name="deliveries")
    op.drop_index("ix_subscriber_tags_tag", table_name="subscriber_tags")
    op.drop_table("subscriber_tags")
    op.drop_index("ix_broadcasts_state", table_name="broadcasts")
    op.drop_table("broadcasts")
