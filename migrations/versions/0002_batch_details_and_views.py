"""Batch details, the NUL-escaped record column, and the reporting views.

Revision ID: 0002
Revises: 0001
Created: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from etl.load import migration_steps as steps
from etl.load.types import LongText, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def batch_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("created", UtcDateTime(), nullable=True),
        sa.Column("window_start", UtcDateTime(), nullable=True),
        sa.Column("window_end", UtcDateTime(), nullable=True),
        sa.Column("throttle", LongText, nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=True),
        sa.Column("total_count", sa.Integer(), nullable=True),
        sa.Column("completed_count", sa.Integer(), nullable=True),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("webhook_url", LongText, nullable=True),
        sa.Column("details_synced_at", UtcDateTime(), nullable=True),
    ]


# Plain SQL that every supported database runs. Calls marked removed are left out.
BATCH_PROGRESS = """
CREATE VIEW batch_progress AS
SELECT
    b.batch_id,
    b.agent_id,
    b.created,
    b.window_start,
    b.window_end,
    b.paused,
    b.ended_at,
    b.total_count,
    b.completed_count,
    COUNT(c.id) AS calls,
    SUM(CASE WHEN c.status = 'FUTURE' THEN 1 ELSE 0 END) AS future,
    SUM(CASE WHEN c.status = 'PENDING' THEN 1 ELSE 0 END) AS pending,
    SUM(CASE WHEN c.status = 'SUCCESS' THEN 1 ELSE 0 END) AS success,
    SUM(CASE WHEN c.status = 'EXPIRED' THEN 1 ELSE 0 END) AS expired,
    SUM(CASE WHEN c.status = 'ERROR' THEN 1 ELSE 0 END) AS error,
    SUM(CASE WHEN c.status NOT IN ('FUTURE', 'PENDING', 'SUCCESS', 'EXPIRED', 'ERROR')
        THEN 1 ELSE 0 END) AS other_status,
    1.0 * SUM(CASE WHEN c.status IN ('SUCCESS', 'EXPIRED', 'ERROR') THEN 1 ELSE 0 END)
        / NULLIF(COALESCE(b.total_count, COUNT(c.id)), 0) AS completed_share,
    b.last_synced_at,
    b.removed_at
FROM scheduled_batches b
LEFT JOIN scheduled_calls c ON c.batch_id = b.batch_id AND c.removed_at IS NULL
GROUP BY
    b.batch_id, b.agent_id, b.created, b.window_start, b.window_end, b.paused, b.ended_at,
    b.total_count, b.completed_count, b.last_synced_at, b.removed_at
"""

SCHEDULED_CALL_REPORT = """
CREATE VIEW scheduled_call_report AS
SELECT
    c.id AS scheduled_call_id,
    c.batch_id,
    c.agent_id,
    c.call_key,
    c.call_id,
    c.status,
    c.error,
    c.medium_type,
    m.direction,
    m.to_address,
    m.from_address,
    m.sip_username,
    m.sip_password_set,
    m.input_sample_rate,
    m.output_sample_rate,
    m.client_buffer_size_ms,
    m.media_idle_timeout,
    c.metadata,
    c.template_context,
    c.first_seen_at,
    c.updated_at,
    c.removed_at
FROM scheduled_calls c
LEFT JOIN scheduled_call_media m ON m.scheduled_call_id = c.id
"""


def upgrade() -> None:
    steps.add_columns("scheduled_batches", *batch_columns())
    steps.add_columns("scheduled_calls", sa.Column("nul_escaped_record", LongText, nullable=True))
    steps.create_view("batch_progress", BATCH_PROGRESS)
    steps.create_view("scheduled_call_report", SCHEDULED_CALL_REPORT)


def downgrade() -> None:
    op.execute("DROP VIEW scheduled_call_report")
    op.execute("DROP VIEW batch_progress")
    with op.batch_alter_table("scheduled_calls") as batch_op:
        batch_op.drop_column("nul_escaped_record")
    with op.batch_alter_table("scheduled_batches") as batch_op:
        for column in reversed(batch_columns()):
            batch_op.drop_column(column.name)
