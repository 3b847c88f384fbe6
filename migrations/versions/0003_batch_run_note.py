"""etl_batch_runs.note: why a batch was skipped, locked or found removed (not an error).

Revision ID: 0003
Revises: 0002
Created: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from etl.load import migration_steps as steps
from etl.load.types import LongText

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    steps.add_columns("etl_batch_runs", sa.Column("note", LongText, nullable=True))
    # Before this revision a skipped, locked or removed batch kept its reason in `error`.
    op.execute(
        "UPDATE etl_batch_runs SET note = error, error = NULL "
        "WHERE status IN ('skipped', 'locked', 'removed') AND error IS NOT NULL"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE etl_batch_runs SET error = note "
        "WHERE status IN ('skipped', 'locked', 'removed') AND error IS NULL"
    )
    with op.batch_alter_table("etl_batch_runs") as batch_op:
        batch_op.drop_column("note")
