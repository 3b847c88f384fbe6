"""Created calls and their outcomes, per-stream run records, call identity by definition.

- `calls` and `call_metadata`: the Call records a batch created (SCHEMA.md, "calls").
- `etl_stream_runs`: each run's counts per batch and stream; `rejected_records.stream`.
- `scheduled_calls.definition_digest` and `record_digest`: identical definitions are told
  apart by their state, and an unchanged record is known by its digest. Existing rows get
  their definition digest from their call key; their record digest is unknown (''), so the
  first run after this migration reads every record once in full.
- Views: `batch_progress.completed_share` is the API's completed count over its total (a
  filtered batch stores only some of its calls), and `scheduled_call_outcomes` joins every
  scheduled call to its call.

Revision ID: 0004
Revises: 0003
Created: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from etl.load import migration_steps as steps
from etl.load.types import JsonDocument, LongText, UtcDateTime, key_text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = key_text(64)
Name = key_text(255)
MetadataKey = key_text(500)
Seconds = sa.Numeric(20, 9)
COUNTS = ("pages", "fetched", "inserted", "updated", "unchanged", "removed", "rejected")

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
    1.0 * COALESCE(
        b.completed_count,
        SUM(CASE WHEN c.status IN ('SUCCESS', 'EXPIRED', 'ERROR') THEN 1 ELSE 0 END)
    ) / NULLIF(COALESCE(b.total_count, COUNT(c.id)), 0) AS completed_share,
    b.last_synced_at,
    b.removed_at
FROM scheduled_batches b
LEFT JOIN scheduled_calls c ON c.batch_id = b.batch_id AND c.removed_at IS NULL
GROUP BY
    b.batch_id, b.agent_id, b.created, b.window_start, b.window_end, b.paused, b.ended_at,
    b.total_count, b.completed_count, b.last_synced_at, b.removed_at
"""

SCHEDULED_CALL_OUTCOMES = """
CREATE VIEW scheduled_call_outcomes AS
SELECT
    c.id AS scheduled_call_id,
    c.batch_id,
    c.agent_id,
    c.status,
    c.error,
    c.call_id,
    c.medium_type,
    m.to_address,
    k.created_at,
    k.joined_at,
    k.ended_at,
    k.end_reason,
    k.billed_duration_seconds,
    k.billing_status,
    k.short_summary,
    c.removed_at,
    k.removed_at AS call_removed_at
FROM scheduled_calls c
LEFT JOIN scheduled_call_media m ON m.scheduled_call_id = c.id
LEFT JOIN calls k ON k.call_id = c.call_id
"""


def _counts() -> list[sa.Column[int]]:
    return [
        *(sa.Column(name, sa.Integer(), nullable=False) for name in COUNTS),
        sa.Column("api_total", sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    steps.drop_view("batch_progress")
    steps.drop_view("scheduled_call_report")

    backfill_stream_runs = not steps.has_table("etl_stream_runs")
    steps.create_table(
        "etl_stream_runs",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", Id, nullable=False),
        sa.Column("stream", Name, nullable=False),
        *_counts(),
        sa.Column("note", LongText, nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id", "batch_id"],
            ["etl_batch_runs.run_id", "etl_batch_runs.batch_id"],
            name=op.f("fk_etl_stream_runs_run_id_etl_batch_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "batch_id", "stream", name=op.f("pk_etl_stream_runs")),
    )
    if backfill_stream_runs:  # before this revision a batch's counts were its scheduled calls'
        counts = ", ".join((*COUNTS, "api_total"))
        op.execute(
            f"INSERT INTO etl_stream_runs (run_id, batch_id, stream, {counts}) "  # noqa: S608
            f"SELECT run_id, batch_id, 'scheduled_calls', {counts} FROM etl_batch_runs "
            "WHERE pages > 0"
        )
    steps.add_columns("rejected_records", sa.Column("stream", LongText, nullable=True))
    op.execute("UPDATE rejected_records SET stream = 'scheduled_calls' WHERE stream IS NULL")

    steps.add_columns(
        "scheduled_calls",
        sa.Column("definition_digest", Id, nullable=True),
        sa.Column("record_digest", Id, nullable=True),
    )
    _backfill_digests()
    with op.batch_alter_table("scheduled_calls") as batch_op:
        batch_op.alter_column("definition_digest", existing_type=Id, nullable=False)
        batch_op.alter_column("record_digest", existing_type=Id, nullable=False)
    steps.create_index(
        op.f("ix_scheduled_calls_batch_id_definition_digest"),
        "scheduled_calls",
        ["batch_id", "definition_digest"],
    )
    steps.create_index(
        op.f("ix_scheduled_calls_batch_id_record_digest"),
        "scheduled_calls",
        ["batch_id", "record_digest"],
    )

    steps.create_table(
        "calls",
        sa.Column("call_id", Id, nullable=False),
        sa.Column("batch_id", Id, nullable=False),
        sa.Column("agent_id", LongText, nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=True),
        sa.Column("joined_at", UtcDateTime(), nullable=True),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("end_reason", LongText, nullable=True),
        sa.Column("billed_duration_seconds", Seconds, nullable=True),
        sa.Column("billing_status", LongText, nullable=True),
        sa.Column("billed_side_input_tokens", sa.Integer(), nullable=True),
        sa.Column("billed_side_output_tokens", sa.Integer(), nullable=True),
        sa.Column("short_summary", LongText, nullable=True),
        sa.Column("summary", LongText, nullable=True),
        sa.Column("medium_type", LongText, nullable=True),
        sa.Column("first_speaker", LongText, nullable=True),
        sa.Column("initial_output_medium", LongText, nullable=True),
        sa.Column("language_hint", LongText, nullable=True),
        sa.Column("model", LongText, nullable=True),
        sa.Column("voice", LongText, nullable=True),
        sa.Column("max_duration_seconds", Seconds, nullable=True),
        sa.Column("recording_enabled", sa.Boolean(), nullable=True),
        sa.Column("sip_billed_duration_seconds", Seconds, nullable=True),
        sa.Column("sip_termination_reason", LongText, nullable=True),
        sa.Column("join_url_set", sa.Boolean(), nullable=True),
        sa.Column("metadata", JsonDocument, nullable=True),
        sa.Column("extra", JsonDocument, nullable=True),
        sa.Column("first_seen_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("removed_at", UtcDateTime(), nullable=True),
        sa.Column("record_digest", Id, nullable=False),
        sa.Column("nul_escaped_record", LongText, nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["scheduled_batches.batch_id"],
            name=op.f("fk_calls_batch_id_scheduled_batches"),
        ),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_calls")),
    )
    steps.create_index(op.f("ix_calls_batch_id"), "calls", ["batch_id"])
    steps.create_table(
        "call_metadata",
        sa.Column("call_id", Id, nullable=False),
        sa.Column("key", MetadataKey, nullable=False),
        sa.Column("value", LongText, nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["calls.call_id"],
            name=op.f("fk_call_metadata_call_id_calls"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("call_id", "key", name=op.f("pk_call_metadata")),
    )
    steps.create_index(op.f("ix_call_metadata_key"), "call_metadata", ["key"])

    steps.create_view("batch_progress", BATCH_PROGRESS)
    steps.create_view("scheduled_call_report", _revision_0002().SCHEDULED_CALL_REPORT)
    steps.create_view("scheduled_call_outcomes", SCHEDULED_CALL_OUTCOMES)


def _backfill_digests() -> None:
    """definition_digest from each call key (`<definition digest>#<occurrence>`)."""
    calls = sa.table(
        "scheduled_calls",
        sa.column("id", sa.Integer()),
        sa.column("call_key", LongText),
        sa.column("definition_digest", LongText),
        sa.column("record_digest", LongText),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(calls.c.id, calls.c.call_key).where(calls.c.definition_digest.is_(None))
    ).all()
    update = (
        sa.update(calls)
        .where(calls.c.id == sa.bindparam("row_id"))
        .values(definition_digest=sa.bindparam("definition"), record_digest="")
    )
    for start in range(0, len(rows), 10_000):
        chunk = rows[start : start + 10_000]
        bind.execute(
            update, [{"row_id": r.id, "definition": r.call_key.partition("#")[0]} for r in chunk]
        )


def _revision_0002() -> Any:
    """The views as revision 0002 created them."""
    return context.script.get_revision("0002").module


def downgrade() -> None:
    # Dropping a table drops its indexes (MySQL refuses to drop one a foreign key needs).
    op.execute("DROP VIEW scheduled_call_outcomes")
    op.execute("DROP VIEW scheduled_call_report")
    op.execute("DROP VIEW batch_progress")
    op.drop_table("call_metadata")
    op.drop_table("calls")
    with op.batch_alter_table("scheduled_calls") as batch_op:
        batch_op.drop_index(op.f("ix_scheduled_calls_batch_id_record_digest"))
        batch_op.drop_index(op.f("ix_scheduled_calls_batch_id_definition_digest"))
        batch_op.drop_column("record_digest")
        batch_op.drop_column("definition_digest")
    with op.batch_alter_table("rejected_records") as batch_op:
        batch_op.drop_column("stream")
    op.drop_table("etl_stream_runs")
    op.execute(_revision_0002().BATCH_PROGRESS)
    op.execute(_revision_0002().SCHEDULED_CALL_REPORT)
