"""The reporting tables (../shared/SCHEMA.md is the contract) as SQLAlchemy Core tables.

Alembic migrations create and change these; a test compares the two with Alembic's
autogenerate so they cannot drift apart. Columns beyond the contract serve the job itself:
`call_hash` and `detail_hash` let a re-run skip an unchanged call without writing it.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

from etl.load.dialect import JsonDocument, UtcDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

scheduled_batches = Table(
    "scheduled_batches",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("agent_id", Text, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("last_synced_at", UtcDateTime),
    Column("removed_at", UtcDateTime),
    # From GET …/scheduled_batches/{batch_id}; never the webhook secret.
    Column("created", UtcDateTime),
    Column("window_start", UtcDateTime),
    Column("window_end", UtcDateTime),
    Column("throttle", Text),
    Column("paused", Boolean),
    Column("total_count", Integer),
    Column("completed_count", Integer),
    Column("ended_at", UtcDateTime),
    Column("webhook_url", Text),
    Column("details_synced_at", UtcDateTime),
)

etl_runs = Table(
    "etl_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("status", Text, nullable=False),
    Column("batches_ok", Integer, nullable=False, default=0),
    Column("batches_failed", Integer, nullable=False, default=0),
    Column("calls_fetched", Integer, nullable=False, default=0),
    Column("calls_inserted", Integer, nullable=False, default=0),
    Column("calls_updated", Integer, nullable=False, default=0),
    Column("calls_unchanged", Integer, nullable=False, default=0),
    Column("calls_removed", Integer, nullable=False, default=0),
    Column("calls_rejected", Integer, nullable=False, default=0),
    Column("error", Text),
)

etl_batch_runs = Table(
    "etl_batch_runs",
    metadata,
    Column("run_id", Integer, ForeignKey("etl_runs.run_id", ondelete="CASCADE"), primary_key=True),
    Column("batch_id", Text, primary_key=True),
    Column("agent_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("pages", Integer, nullable=False, default=0),
    Column("fetched", Integer, nullable=False, default=0),
    Column("inserted", Integer, nullable=False, default=0),
    Column("updated", Integer, nullable=False, default=0),
    Column("unchanged", Integer, nullable=False, default=0),
    Column("removed", Integer, nullable=False, default=0),
    Column("rejected", Integer, nullable=False, default=0),
    Column("api_total", Integer),
    Column("error", Text),
    Column("note", Text),  # why a batch was skipped, locked or found removed; not an error
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
)

scheduled_calls = Table(
    "scheduled_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", Text, ForeignKey("scheduled_batches.batch_id"), nullable=False),
    Column("agent_id", Text, nullable=False),
    Column("call_key", Text, nullable=False),
    # NULLs never collide in a UNIQUE constraint (SQLite and PostgreSQL alike), so this is
    # "unique where not null" without a partial index.
    Column("call_id", Text, unique=True),
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("medium_type", Text, nullable=False),
    Column("metadata", JsonDocument),
    Column("template_context", JsonDocument),
    Column("experimental_settings", JsonDocument),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("removed_at", UtcDateTime),
    Column("call_hash", Text, nullable=False),
    Column("detail_hash", Text, nullable=False),
    # PostgreSQL text and jsonb cannot hold U+0000, nor any database a lone surrogate. A
    # record that has one is stored with each replaced by U+FFFD, and here, exactly as sent
    # (secrets removed), as ASCII JSON text in which they are escapes (\u0000, \ud800):
    # json.loads() of it gives the record back.
    Column("nul_escaped_record", Text),
    UniqueConstraint("batch_id", "call_key"),
    Index(None, "batch_id", "status"),
)

scheduled_call_media = Table(
    "scheduled_call_media",
    metadata,
    Column(
        "scheduled_call_id",
        Integer,
        ForeignKey("scheduled_calls.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("medium_type", Text, nullable=False),
    Column("direction", Text),
    Column("to_address", Text),
    Column("from_address", Text),
    Column("sip_username", Text),
    Column("sip_password_set", Boolean),
    Column("input_sample_rate", Integer),
    Column("output_sample_rate", Integer),
    Column("client_buffer_size_ms", Integer),
    Column("media_idle_timeout", Text),
    Column("dtmf_handling", JsonDocument),
    Column("additional_params", JsonDocument),
    Column("extra", JsonDocument),
)

scheduled_call_data_messages = Table(
    "scheduled_call_data_messages",
    metadata,
    Column(
        "scheduled_call_id",
        Integer,
        ForeignKey("scheduled_calls.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("message", Text, primary_key=True),
    Column("enabled", Boolean, nullable=False),
)

scheduled_call_metadata = Table(
    "scheduled_call_metadata",
    metadata,
    Column(
        "scheduled_call_id",
        Integer,
        ForeignKey("scheduled_calls.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    # Not on value: PostgreSQL btree entries are capped near 2.7 kB and values may be long.
    Index(None, "key"),
)

scheduled_call_status_changes = Table(
    "scheduled_call_status_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "scheduled_call_id",
        Integer,
        ForeignKey("scheduled_calls.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("run_id", Integer, ForeignKey("etl_runs.run_id"), nullable=False),
    Column("from_status", Text),
    Column("to_status", Text, nullable=False),
    Column("call_id", Text),
    Column("error", Text),
    Column("observed_at", UtcDateTime, nullable=False),
)

rejected_records = Table(
    "rejected_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("etl_runs.run_id"), nullable=False, index=True),
    Column("batch_id", Text, nullable=False),
    Column("page", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", JsonDocument),
    Column("rejected_at", UtcDateTime, nullable=False),
)
