"""The reporting tables (../shared/SCHEMA.md is the contract) as SQLAlchemy Core tables.

Alembic migrations create and change these; a test compares the two with Alembic's
autogenerate on every database, so they cannot drift apart. Columns beyond the contract serve
the job itself: digests let a re-run skip an unchanged record without writing it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    Table,
    UniqueConstraint,
)

from etl.domain import (
    ID_MAX_LENGTH,
    METADATA_KEY_MAX_CHARACTERS,
    NAME_MAX_LENGTH,
    SUMMED_COUNT_NAMES,
)
from etl.load.types import JsonDocument, LongText, UtcDateTime, key_text

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = key_text(ID_MAX_LENGTH)
"""An Ultravox id (batchId, callId, agentId) or another key made of one."""
Name = key_text(NAME_MAX_LENGTH)
"""A short indexed name: a status, a data message, a stream."""
Digest = key_text(ID_MAX_LENGTH)
"""A digest (32 hex digits), or a call key (a digest and an occurrence number)."""
Seconds = Numeric(20, 9)
"""A duration in seconds, to the nanosecond the API's durations can carry."""

scheduled_batches = Table(
    "scheduled_batches",
    metadata,
    Column("batch_id", Id, primary_key=True),
    Column("agent_id", LongText, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("last_synced_at", UtcDateTime),
    Column("removed_at", UtcDateTime),
    # From GET …/scheduled_batches/{batch_id}; never the webhook secret.
    Column("created", UtcDateTime),
    Column("window_start", UtcDateTime),
    Column("window_end", UtcDateTime),
    Column("throttle", LongText),
    Column("paused", Boolean),
    Column("total_count", Integer),
    Column("completed_count", Integer),
    Column("ended_at", UtcDateTime),
    Column("webhook_url", LongText),
    Column("details_synced_at", UtcDateTime),
)

_RUN_COUNTS = tuple(name for name in SUMMED_COUNT_NAMES if name != "pages")
"""The counts a run record adds up (as calls_<name>): etl_runs has no pages column."""

etl_runs = Table(
    "etl_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    Column("status", LongText, nullable=False),
    Column("batches_ok", Integer, nullable=False, default=0),
    Column("batches_failed", Integer, nullable=False, default=0),
    *(Column(f"calls_{name}", Integer, nullable=False, default=0) for name in _RUN_COUNTS),
    Column("error", LongText),
)


def _count_columns() -> list[Column[Any]]:
    """The per-listing counts of etl.domain.StreamCounts, one column each."""
    return [
        *(Column(name, Integer, nullable=False, default=0) for name in SUMMED_COUNT_NAMES),
        Column("api_total", Integer),
    ]


etl_batch_runs = Table(
    "etl_batch_runs",
    metadata,
    Column("run_id", Integer, ForeignKey("etl_runs.run_id", ondelete="CASCADE"), primary_key=True),
    Column("batch_id", Id, primary_key=True),
    Column("agent_id", LongText, nullable=False),
    Column("status", LongText, nullable=False),
    *_count_columns(),  # the sums over the batch's streams
    Column("error", LongText),
    Column("note", LongText),  # why a batch was skipped, locked or found removed; not an error
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
)

etl_stream_runs = Table(
    "etl_stream_runs",
    metadata,
    Column("run_id", Integer, primary_key=True),
    Column("batch_id", Id, primary_key=True),
    Column("stream", Name, primary_key=True),
    *_count_columns(),
    Column("note", LongText),  # e.g. why the stream was not listed this run
    # Deleted with its batch's record, which is written first.
    ForeignKeyConstraint(
        ["run_id", "batch_id"],
        ["etl_batch_runs.run_id", "etl_batch_runs.batch_id"],
        ondelete="CASCADE",
    ),
)

scheduled_calls = Table(
    "scheduled_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("batch_id", Id, ForeignKey("scheduled_batches.batch_id"), nullable=False),
    Column("agent_id", LongText, nullable=False),
    Column("call_key", Digest, nullable=False),
    # NULLs never collide in a UNIQUE constraint (on every supported database), so this is
    # "unique where not null" without a partial index.
    Column("call_id", Id, unique=True),
    Column("status", Name, nullable=False),
    Column("error", LongText),
    Column("medium_type", LongText, nullable=False),
    Column("metadata", JsonDocument),
    Column("template_context", JsonDocument),
    Column("experimental_settings", JsonDocument),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("removed_at", UtcDateTime),
    Column("call_hash", LongText, nullable=False),
    Column("detail_hash", LongText, nullable=False),
    # PostgreSQL text and jsonb cannot hold U+0000, nor any database a lone surrogate. A
    # record that has one is stored with each replaced by U+FFFD, and here, exactly as sent
    # (secrets removed), as ASCII JSON text in which they are escapes (\u0000, \ud800):
    # json.loads() of it gives the record back.
    Column("nul_escaped_record", LongText),
    # The digest of the call's definition (the call key without its occurrence number):
    # identical definitions are told apart by their state, see etl.load.scheduled_calls.
    Column("definition_digest", Digest, nullable=False),
    # The digest of the whole record as sent (secrets removed): equal means unchanged.
    Column("record_digest", Digest, nullable=False),
    UniqueConstraint("batch_id", "call_key"),
    Index(None, "batch_id", "status"),
    Index(None, "batch_id", "definition_digest"),
    Index(None, "batch_id", "record_digest"),
)


def _child_of(parent: str, parent_id: str, name: str) -> Column[Any]:
    return Column(
        name,
        Integer if parent_id == "id" else Id,
        ForeignKey(f"{parent}.{parent_id}", ondelete="CASCADE"),
        primary_key=True,
    )


scheduled_call_media = Table(
    "scheduled_call_media",
    metadata,
    _child_of("scheduled_calls", "id", "scheduled_call_id"),
    Column("medium_type", LongText, nullable=False),
    Column("direction", LongText),
    Column("to_address", LongText),
    Column("from_address", LongText),
    Column("sip_username", LongText),
    Column("sip_password_set", Boolean),
    Column("input_sample_rate", Integer),
    Column("output_sample_rate", Integer),
    Column("client_buffer_size_ms", Integer),
    Column("media_idle_timeout", LongText),
    Column("dtmf_handling", JsonDocument),
    Column("additional_params", JsonDocument),
    Column("extra", JsonDocument),
)

scheduled_call_data_messages = Table(
    "scheduled_call_data_messages",
    metadata,
    _child_of("scheduled_calls", "id", "scheduled_call_id"),
    Column("message", Name, primary_key=True),
    Column("enabled", Boolean, nullable=False),
)

MetadataKey = key_text(METADATA_KEY_MAX_CHARACTERS)

scheduled_call_metadata = Table(
    "scheduled_call_metadata",
    metadata,
    _child_of("scheduled_calls", "id", "scheduled_call_id"),
    Column("key", MetadataKey, primary_key=True),
    Column("value", LongText, nullable=False),
    # Not on value: values may be long, and btree entries are capped (PostgreSQL ~2.7 kB).
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
    Column("from_status", LongText),
    Column("to_status", LongText, nullable=False),
    Column("call_id", LongText),
    Column("error", LongText),
    Column("observed_at", UtcDateTime, nullable=False),
)

calls = Table(
    "calls",
    metadata,
    Column("call_id", Id, primary_key=True),
    Column("batch_id", Id, ForeignKey("scheduled_batches.batch_id"), nullable=False, index=True),
    Column("agent_id", LongText),
    Column("created_at", UtcDateTime),
    Column("joined_at", UtcDateTime),
    Column("ended_at", UtcDateTime),
    Column("end_reason", LongText),
    Column("billed_duration_seconds", Seconds),
    Column("billing_status", LongText),
    Column("billed_side_input_tokens", Integer),
    Column("billed_side_output_tokens", Integer),
    Column("short_summary", LongText),
    Column("summary", LongText),
    Column("medium_type", LongText),
    Column("first_speaker", LongText),
    Column("initial_output_medium", LongText),
    Column("language_hint", LongText),
    Column("model", LongText),
    Column("voice", LongText),
    Column("max_duration_seconds", Seconds),
    Column("recording_enabled", Boolean),
    Column("sip_billed_duration_seconds", Seconds),
    Column("sip_termination_reason", LongText),
    Column("join_url_set", Boolean),  # whether the API sent a join URL (never the URL)
    Column("metadata", JsonDocument),
    Column("extra", JsonDocument),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("removed_at", UtcDateTime),
    Column("record_digest", Digest, nullable=False),
    Column("nul_escaped_record", LongText),
)

call_metadata = Table(
    "call_metadata",
    metadata,
    _child_of("calls", "call_id", "call_id"),
    Column("key", MetadataKey, primary_key=True),
    Column("value", LongText, nullable=False),
    Index(None, "key"),
)

etl_listing_pages = Table(
    "etl_listing_pages",
    metadata,
    # What the job remembers of each page of a listing it read to the end and loaded without
    # a rejected record: the digest of the page as it came, and the rows its records are, in
    # order. A page that comes again byte for byte costs a digest (see etl.load.page_memory).
    Column("batch_id", Id, primary_key=True),
    Column("stream", Name, primary_key=True),
    Column("listing", Name, primary_key=True),
    Column("page", Integer, primary_key=True),
    Column("digest", Digest, nullable=False),
    Column("members", LongText, nullable=False),
)

rejected_records = Table(
    "rejected_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("etl_runs.run_id"), nullable=False, index=True),
    Column("batch_id", LongText, nullable=False),
    Column("stream", LongText),  # the stream whose listing held the record
    Column("page", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("reason", LongText, nullable=False),
    Column("payload", JsonDocument),
    Column("rejected_at", UtcDateTime, nullable=False),
)
