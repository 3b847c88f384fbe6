"""Initial schema: the reporting tables of SCHEMA.md, run records and rejected records.

Revision ID: 0001
Revises:
Created: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from etl.load import migration_steps as steps
from etl.load.types import JsonDocument, LongText, UtcDateTime, key_text

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Indexed text: TEXT, or VARCHAR(n) on a database that cannot index TEXT (MySQL).
Id = key_text(64)
Name = key_text(255)
MetadataKey = key_text(500)


def upgrade() -> None:
    steps.create_table(
        "etl_runs",
        sa.Column("run_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("status", LongText, nullable=False),
        sa.Column("batches_ok", sa.Integer(), nullable=False),
        sa.Column("batches_failed", sa.Integer(), nullable=False),
        sa.Column("calls_fetched", sa.Integer(), nullable=False),
        sa.Column("calls_inserted", sa.Integer(), nullable=False),
        sa.Column("calls_updated", sa.Integer(), nullable=False),
        sa.Column("calls_unchanged", sa.Integer(), nullable=False),
        sa.Column("calls_removed", sa.Integer(), nullable=False),
        sa.Column("calls_rejected", sa.Integer(), nullable=False),
        sa.Column("error", LongText, nullable=True),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_etl_runs")),
    )
    steps.create_table(
        "scheduled_batches",
        sa.Column("batch_id", Id, nullable=False),
        sa.Column("agent_id", LongText, nullable=False),
        sa.Column("first_seen_at", UtcDateTime(), nullable=False),
        sa.Column("last_synced_at", UtcDateTime(), nullable=True),
        sa.Column("removed_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_scheduled_batches")),
    )
    steps.create_table(
        "etl_batch_runs",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", Id, nullable=False),
        sa.Column("agent_id", LongText, nullable=False),
        sa.Column("status", LongText, nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("fetched", sa.Integer(), nullable=False),
        sa.Column("inserted", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("api_total", sa.Integer(), nullable=True),
        sa.Column("error", LongText, nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.run_id"],
            name=op.f("fk_etl_batch_runs_run_id_etl_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "batch_id", name=op.f("pk_etl_batch_runs")),
    )
    steps.create_table(
        "rejected_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", LongText, nullable=False),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("reason", LongText, nullable=False),
        sa.Column("payload", JsonDocument, nullable=True),
        sa.Column("rejected_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["etl_runs.run_id"], name=op.f("fk_rejected_records_run_id_etl_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_records")),
    )
    steps.create_index(op.f("ix_rejected_records_run_id"), "rejected_records", ["run_id"])

    steps.create_table(
        "scheduled_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", Id, nullable=False),
        sa.Column("agent_id", LongText, nullable=False),
        sa.Column("call_key", Id, nullable=False),
        sa.Column("call_id", Id, nullable=True),
        sa.Column("status", Name, nullable=False),
        sa.Column("error", LongText, nullable=True),
        sa.Column("medium_type", LongText, nullable=False),
        sa.Column("metadata", JsonDocument, nullable=True),
        sa.Column("template_context", JsonDocument, nullable=True),
        sa.Column("experimental_settings", JsonDocument, nullable=True),
        sa.Column("first_seen_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("removed_at", UtcDateTime(), nullable=True),
        sa.Column("call_hash", LongText, nullable=False),
        sa.Column("detail_hash", LongText, nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["scheduled_batches.batch_id"],
            name=op.f("fk_scheduled_calls_batch_id_scheduled_batches"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_calls")),
        sa.UniqueConstraint(
            "batch_id", "call_key", name=op.f("uq_scheduled_calls_batch_id_call_key")
        ),
        sa.UniqueConstraint("call_id", name=op.f("uq_scheduled_calls_call_id")),
    )
    steps.create_index(
        op.f("ix_scheduled_calls_batch_id_status"), "scheduled_calls", ["batch_id", "status"]
    )

    steps.create_table(
        "scheduled_call_data_messages",
        sa.Column("scheduled_call_id", sa.Integer(), nullable=False),
        sa.Column("message", Name, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["scheduled_call_id"],
            ["scheduled_calls.id"],
            name=op.f("fk_scheduled_call_data_messages_scheduled_call_id_scheduled_calls"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "scheduled_call_id", "message", name=op.f("pk_scheduled_call_data_messages")
        ),
    )
    steps.create_table(
        "scheduled_call_media",
        sa.Column("scheduled_call_id", sa.Integer(), nullable=False),
        sa.Column("medium_type", LongText, nullable=False),
        sa.Column("direction", LongText, nullable=True),
        sa.Column("to_address", LongText, nullable=True),
        sa.Column("from_address", LongText, nullable=True),
        sa.Column("sip_username", LongText, nullable=True),
        sa.Column("sip_password_set", sa.Boolean(), nullable=True),
        sa.Column("input_sample_rate", sa.Integer(), nullable=True),
        sa.Column("output_sample_rate", sa.Integer(), nullable=True),
        sa.Column("client_buffer_size_ms", sa.Integer(), nullable=True),
        sa.Column("media_idle_timeout", LongText, nullable=True),
        sa.Column("dtmf_handling", JsonDocument, nullable=True),
        sa.Column("additional_params", JsonDocument, nullable=True),
        sa.Column("extra", JsonDocument, nullable=True),
        sa.ForeignKeyConstraint(
            ["scheduled_call_id"],
            ["scheduled_calls.id"],
            name=op.f("fk_scheduled_call_media_scheduled_call_id_scheduled_calls"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("scheduled_call_id", name=op.f("pk_scheduled_call_media")),
    )
    steps.create_table(
        "scheduled_call_metadata",
        sa.Column("scheduled_call_id", sa.Integer(), nullable=False),
        sa.Column("key", MetadataKey, nullable=False),
        sa.Column("value", LongText, nullable=False),
        sa.ForeignKeyConstraint(
            ["scheduled_call_id"],
            ["scheduled_calls.id"],
            name=op.f("fk_scheduled_call_metadata_scheduled_call_id_scheduled_calls"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "scheduled_call_id", "key", name=op.f("pk_scheduled_call_metadata")
        ),
    )
    steps.create_index(op.f("ix_scheduled_call_metadata_key"), "scheduled_call_metadata", ["key"])

    steps.create_table(
        "scheduled_call_status_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scheduled_call_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("from_status", LongText, nullable=True),
        sa.Column("to_status", LongText, nullable=False),
        sa.Column("call_id", LongText, nullable=True),
        sa.Column("error", LongText, nullable=True),
        sa.Column("observed_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.run_id"],
            name=op.f("fk_scheduled_call_status_changes_run_id_etl_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["scheduled_call_id"],
            ["scheduled_calls.id"],
            name=op.f("fk_scheduled_call_status_changes_scheduled_call_id_scheduled_calls"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_call_status_changes")),
    )
    steps.create_index(
        op.f("ix_scheduled_call_status_changes_scheduled_call_id"),
        "scheduled_call_status_changes",
        ["scheduled_call_id"],
    )


def downgrade() -> None:
    # Dropping a table drops its indexes (MySQL refuses to drop one a foreign key needs).
    op.drop_table("scheduled_call_status_changes")
    op.drop_table("scheduled_call_metadata")
    op.drop_table("scheduled_call_media")
    op.drop_table("scheduled_call_data_messages")
    op.drop_table("scheduled_calls")
    op.drop_table("rejected_records")
    op.drop_table("etl_batch_runs")
    op.drop_table("scheduled_batches")
    op.drop_table("etl_runs")
