"""etl_listing_pages: what the job remembers of each page it loaded (etl.load.page_memory).

Revision ID: 0005
Revises: 0004
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from etl.load import migration_steps as steps
from etl.load.types import LongText, key_text

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps.create_table(
        "etl_listing_pages",
        sa.Column("batch_id", key_text(64), nullable=False),
        sa.Column("stream", key_text(255), nullable=False),
        sa.Column("listing", key_text(255), nullable=False),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("digest", key_text(64), nullable=False),
        sa.Column("members", LongText, nullable=False),
        sa.PrimaryKeyConstraint(
            "batch_id", "stream", "listing", "page", name=op.f("pk_etl_listing_pages")
        ),
    )


def downgrade() -> None:
    op.drop_table("etl_listing_pages")
