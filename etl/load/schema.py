"""The reporting tables (../shared/SCHEMA.md is the contract) as SQLAlchemy Core tables.

Alembic migrations create and change these; a test compares the two with Alembic's
autogenerate on every database, so they cannot drift apart. Columns beyond the contract serve
the job itself: digests let a re-run skip an unchanged record without writing it.

Every table and column carries a comment, so that whoever browses the database (psql,
a BI tool's catalog) reads what each one means without this repository. Databases
without comments (SQLite) ignore them.
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
    Column("batch_id", Id, primary_key=True, comment="Ultravox batchId"),
    Column("agent_id", LongText, nullable=False, comment="the agent that owns the batch"),
    Column("first_seen_at", UtcDateTime, nullable=False, comment="first run that saw the batch"),
    Column(
        "last_synced_at",
        UtcDateTime,
        comment="end of the last complete listing of its scheduled calls",
    ),
    Column(
        "removed_at",
        UtcDateTime,
        comment="when the API stopped having the batch (404, or gone from its agent's list)",
    ),
    # From GET …/scheduled_batches/{batch_id}; never the webhook secret.
    Column("created", UtcDateTime, comment="when the batch was created"),
    Column("window_start", UtcDateTime, comment="start of the window its calls are placed in"),
    Column("window_end", UtcDateTime, comment="end of the window its calls are placed in"),
    Column("throttle", LongText, comment="the batch's throttle setting, as sent"),
    Column("paused", Boolean, comment="whether the batch is paused"),
    Column("total_count", Integer, comment="the API's count of the batch's scheduled calls"),
    Column("completed_count", Integer, comment="the API's count of calls done with"),
    Column("ended_at", UtcDateTime, comment="when the batch ended; null while it runs"),
    Column("webhook_url", LongText, comment="the batch's webhook URL (never its secret)"),
    Column(
        "details_synced_at",
        UtcDateTime,
        comment="when the columns from created on were last read from the API",
    ),
    comment="One row per scheduled call batch the job knows.",
)

_RUN_COUNTS = tuple(name for name in SUMMED_COUNT_NAMES if name != "pages")
"""The counts a run record adds up (as calls_<name>): etl_runs has no pages column."""

_COUNT_MEANINGS = {
    "pages": "pages read",
    "fetched": "records fetched",
    "inserted": "rows inserted: records seen for the first time",
    "updated": "rows whose fields changed",
    "unchanged": "records listed unchanged (no row rewritten)",
    "removed": "rows marked removed: absent from a complete listing",
    "rejected": "records that did not fit the schema (see rejected_records)",
    "api_total": "the API's total for the listing",
}
"""What each count of etl.domain.StreamCounts means, for the run tables' column comments."""

etl_runs = Table(
    "etl_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True, comment="the run"),
    Column("started_at", UtcDateTime, nullable=False, comment="when the run started"),
    Column("finished_at", UtcDateTime, comment="when it ended; null while it runs"),
    Column(
        "status",
        LongText,
        nullable=False,
        comment="running, succeeded, partial, failed, or abandoned (the process died)",
    ),
    Column("batches_ok", Integer, nullable=False, default=0, comment="batches synced"),
    Column("batches_failed", Integer, nullable=False, default=0, comment="batches failed"),
    *(
        Column(
            f"calls_{name}",
            Integer,
            nullable=False,
            default=0,
            comment=f"{_COUNT_MEANINGS[name]}, over the run's batches and streams",
        )
        for name in _RUN_COUNTS
    ),
    Column("error", LongText, comment="why the run as a whole failed or stopped"),
    comment="One row per run of the job: what it did, from start to end.",
)


def _count_columns() -> list[Column[Any]]:
    """The per-listing counts of etl.domain.StreamCounts, one column each."""
    return [
        *(
            Column(name, Integer, nullable=False, default=0, comment=_COUNT_MEANINGS[name])
            for name in SUMMED_COUNT_NAMES
        ),
        Column("api_total", Integer, comment=_COUNT_MEANINGS["api_total"]),
    ]


etl_batch_runs = Table(
    "etl_batch_runs",
    metadata,
    Column(
        "run_id",
        Integer,
        ForeignKey("etl_runs.run_id", ondelete="CASCADE"),
        primary_key=True,
        comment="the run (etl_runs)",
    ),
    Column("batch_id", Id, primary_key=True, comment="the batch"),
    Column("agent_id", LongText, nullable=False, comment="the agent that owns the batch"),
    Column(
        "status",
        LongText,
        nullable=False,
        comment="running, succeeded, failed, locked, skipped, removed, or abandoned",
    ),
    *_count_columns(),  # the sums over the batch's streams
    Column("error", LongText, comment="why the batch failed"),
    Column("note", LongText, comment="why it was skipped, locked or found removed; not an error"),
    Column("started_at", UtcDateTime, nullable=False, comment="when the run took the batch up"),
    Column("finished_at", UtcDateTime, comment="when it was done with it"),
    comment="One row per batch of a run: its outcome and counts, over its streams.",
)

etl_stream_runs = Table(
    "etl_stream_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, comment="the run (etl_runs)"),
    Column("batch_id", Id, primary_key=True, comment="the batch"),
    Column(
        "stream",
        Name,
        primary_key=True,
        comment="what was listed: scheduled_calls, or calls (the created calls)",
    ),
    *_count_columns(),
    Column("note", LongText, comment="why the stream was not listed this run"),
    # Deleted with its batch's record, which is written first.
    ForeignKeyConstraint(
        ["run_id", "batch_id"],
        ["etl_batch_runs.run_id", "etl_batch_runs.batch_id"],
        ondelete="CASCADE",
    ),
    comment="One row per stream of a batch of a run: its counts.",
)

scheduled_calls = Table(
    "scheduled_calls",
    metadata,
    Column(
        "id",
        Integer,
        primary_key=True,
        autoincrement=True,
        comment="surrogate key, stable for the life of the row",
    ),
    Column(
        "batch_id",
        Id,
        ForeignKey("scheduled_batches.batch_id"),
        nullable=False,
        comment="the batch",
    ),
    Column("agent_id", LongText, nullable=False, comment="the agent that owns the batch"),
    Column(
        "call_key",
        Digest,
        nullable=False,
        comment="identity in its batch: digest of the definition, #occurrence",
    ),
    # NULLs never collide in a UNIQUE constraint (on every supported database), so this is
    # "unique where not null" without a partial index.
    Column(
        "call_id",
        Id,
        unique=True,
        comment="Ultravox callId, null until the call is placed; joins calls.call_id",
    ),
    Column(
        "status",
        Name,
        nullable=False,
        comment="FUTURE, PENDING, SUCCESS, EXPIRED, ERROR; a later value as sent",
    ),
    Column("error", LongText, comment="the API's error text"),
    Column(
        "medium_type",
        LongText,
        nullable=False,
        comment="webRtc, twilio, serverWebSocket, telnyx, plivo, exotel, sip, or as sent",
    ),
    Column("metadata", JsonDocument, comment="metadata as sent"),
    Column("template_context", JsonDocument, comment="templateContext as sent"),
    Column("experimental_settings", JsonDocument, comment="experimentalSettings as sent"),
    Column("first_seen_at", UtcDateTime, nullable=False, comment="first run that saw the call"),
    Column("updated_at", UtcDateTime, nullable=False, comment="when a field last changed"),
    Column(
        "removed_at",
        UtcDateTime,
        comment="set when absent from a complete listing; cleared if it comes back",
    ),
    Column(
        "call_hash", LongText, nullable=False, comment="digest of the stored fields (job's own)"
    ),
    Column(
        "detail_hash",
        LongText,
        nullable=False,
        comment="digest of the child rows' fields (job's own)",
    ),
    # PostgreSQL text and jsonb cannot hold U+0000, nor any database a lone surrogate. A
    # record that has one is stored with each replaced by U+FFFD, and here, exactly as sent
    # (secrets removed), as ASCII JSON text in which they are escapes (\u0000, \ud800):
    # json.loads() of it gives the record back.
    Column(
        "nul_escaped_record",
        LongText,
        comment="the record as sent, as ASCII JSON, where it held U+0000 or a lone surrogate",
    ),
    # The digest of the call's definition (the call key without its occurrence number):
    # identical definitions are told apart by their state, see etl.load.scheduled_calls.
    Column(
        "definition_digest",
        Digest,
        nullable=False,
        comment="digest of the definition: call_key without its occurrence (job's own)",
    ),
    # The digest of the whole record as sent (secrets removed): equal means unchanged.
    Column(
        "record_digest",
        Digest,
        nullable=False,
        comment="digest of the record as sent: equal means unchanged (job's own)",
    ),
    UniqueConstraint("batch_id", "call_key"),
    Index(None, "batch_id", "status"),
    Index(None, "batch_id", "definition_digest"),
    Index(None, "batch_id", "record_digest"),
    comment="One row per scheduled call of a batch.",
)


def _child_of(parent: str, parent_id: str, name: str) -> Column[Any]:
    return Column(
        name,
        Integer if parent_id == "id" else Id,
        ForeignKey(f"{parent}.{parent_id}", ondelete="CASCADE"),
        primary_key=True,
        comment=f"the row of {parent}",
    )


scheduled_call_media = Table(
    "scheduled_call_media",
    metadata,
    _child_of("scheduled_calls", "id", "scheduled_call_id"),
    Column("medium_type", LongText, nullable=False, comment="as in scheduled_calls"),
    Column("direction", LongText, comment="outgoing or incoming (twilio, telnyx, plivo, sip)"),
    Column("to_address", LongText, comment="the outgoing to: phone number or SIP URI, as sent"),
    Column("from_address", LongText, comment="the outgoing from: phone number or SIP URI"),
    Column("sip_username", LongText, comment="SIP user name"),
    Column(
        "sip_password_set",
        Boolean,
        comment="whether a SIP password was sent; the password is never stored",
    ),
    Column("input_sample_rate", Integer, comment="serverWebSocket inputSampleRate"),
    Column("output_sample_rate", Integer, comment="serverWebSocket outputSampleRate"),
    Column("client_buffer_size_ms", Integer, comment="serverWebSocket clientBufferSizeMs"),
    Column("media_idle_timeout", LongText, comment="mediaIdleTimeout, as sent"),
    Column("dtmf_handling", JsonDocument, comment="dtmfHandling, as sent"),
    Column("additional_params", JsonDocument, comment="the outgoing additionalParams"),
    Column(
        "extra",
        JsonDocument,
        comment="what no column holds: an unknown variant or field, shaped like the medium",
    ),
    comment="The medium of each scheduled call, flattened (1:1 with scheduled_calls).",
)

scheduled_call_data_messages = Table(
    "scheduled_call_data_messages",
    metadata,
    _child_of("scheduled_calls", "id", "scheduled_call_id"),
    Column(
        "message",
        Name,
        primary_key=True,
        comment="pong, state, transcript, clientToolInvocation, …, as sent",
    ),
    Column("enabled", Boolean, nullable=False, comment="the flag's value"),
    comment="One row per dataMessages flag sent (webRtc, serverWebSocket); absent: default.",
)

MetadataKey = key_text(METADATA_KEY_MAX_CHARACTERS)

scheduled_call_metadata = Table(
    "scheduled_call_metadata",
    metadata,
    _child_of("scheduled_calls", "id", "scheduled_call_id"),
    Column("key", MetadataKey, primary_key=True, comment="the metadata key"),
    Column("value", LongText, nullable=False, comment="a string as sent, anything else as JSON"),
    # Not on value: values may be long, and btree entries are capped (PostgreSQL ~2.7 kB).
    Index(None, "key"),
    comment="One row per metadata key of a scheduled call.",
)

scheduled_call_status_changes = Table(
    "scheduled_call_status_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True, comment="surrogate key"),
    Column(
        "scheduled_call_id",
        Integer,
        ForeignKey("scheduled_calls.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
        comment="the row of scheduled_calls",
    ),
    Column(
        "run_id",
        Integer,
        ForeignKey("etl_runs.run_id"),
        nullable=False,
        comment="the run that observed it",
    ),
    Column("from_status", LongText, comment="the status before; null at the first sighting"),
    Column("to_status", LongText, nullable=False, comment="the status observed"),
    Column("call_id", LongText, comment="callId as of this observation"),
    Column("error", LongText, comment="the error as of this observation"),
    Column("observed_at", UtcDateTime, nullable=False, comment="when the run observed it"),
    comment="One row per observed change of a scheduled call: status, callId or error.",
)

calls = Table(
    "calls",
    metadata,
    Column(
        "call_id",
        Id,
        primary_key=True,
        comment="Ultravox callId; joins scheduled_calls.call_id",
    ),
    Column(
        "batch_id",
        Id,
        ForeignKey("scheduled_batches.batch_id"),
        nullable=False,
        index=True,
        comment="the batch that created the call",
    ),
    Column("agent_id", LongText, comment="the agent"),
    Column("created_at", UtcDateTime, comment="created"),
    Column("joined_at", UtcDateTime, comment="joined; null: nobody joined"),
    Column("ended_at", UtcDateTime, comment="ended"),
    Column(
        "end_reason",
        LongText,
        comment="unjoined, hangup, agent_hangup, timeout, connection_error, system_error…",
    ),
    Column("billed_duration_seconds", Seconds, comment="billedDuration, in seconds"),
    Column("billing_status", LongText, comment="BILLING_STATUS_…, as sent"),
    Column("billed_side_input_tokens", Integer, comment="billedSideInputTokens"),
    Column("billed_side_output_tokens", Integer, comment="billedSideOutputTokens"),
    Column("short_summary", LongText, comment="filled in by Ultravox some time after the end"),
    Column("summary", LongText, comment="filled in by Ultravox some time after the end"),
    Column("medium_type", LongText, comment="as in scheduled_calls"),
    Column("first_speaker", LongText, comment="firstSpeaker"),
    Column("initial_output_medium", LongText, comment="initialOutputMedium"),
    Column("language_hint", LongText, comment="languageHint"),
    Column("model", LongText, comment="model"),
    Column("voice", LongText, comment="voice"),
    Column("max_duration_seconds", Seconds, comment="maxDuration, in seconds"),
    Column("recording_enabled", Boolean, comment="recordingEnabled"),
    Column("sip_billed_duration_seconds", Seconds, comment="sipDetails.billedDuration, seconds"),
    Column("sip_termination_reason", LongText, comment="sipDetails.terminationReason"),
    Column("join_url_set", Boolean, comment="whether the API sent a join URL (never the URL)"),
    Column("metadata", JsonDocument, comment="metadata as sent (key/value rows: call_metadata)"),
    Column(
        "extra",
        JsonDocument,
        comment="every other field of the record, secrets removed",
    ),
    Column("first_seen_at", UtcDateTime, nullable=False, comment="first run that saw the call"),
    Column("updated_at", UtcDateTime, nullable=False, comment="when a field last changed"),
    Column(
        "removed_at",
        UtcDateTime,
        comment="set when absent from a complete listing (e.g. deleted by retention)",
    ),
    Column(
        "record_digest",
        Digest,
        nullable=False,
        comment="digest of the record as sent: equal means unchanged (job's own)",
    ),
    Column(
        "nul_escaped_record",
        LongText,
        comment="the record as sent, as ASCII JSON, where it held U+0000 or a lone surrogate",
    ),
    comment="One row per call a batch created, with its outcome.",
)

call_metadata = Table(
    "call_metadata",
    metadata,
    _child_of("calls", "call_id", "call_id"),
    Column("key", MetadataKey, primary_key=True, comment="the metadata key"),
    Column("value", LongText, nullable=False, comment="a string as sent, anything else as JSON"),
    Index(None, "key"),
    comment="One row per metadata key of a created call.",
)

etl_listing_pages = Table(
    "etl_listing_pages",
    metadata,
    # What the job remembers of each page of a listing it read to the end and loaded without
    # a rejected record: the digest of the page as it came, and the rows its records are, in
    # order. A page that comes again byte for byte costs a digest (see etl.load.page_memory).
    Column("batch_id", Id, primary_key=True, comment="the batch"),
    Column("stream", Name, primary_key=True, comment="the stream whose listing held the page"),
    Column(
        "listing",
        Name,
        primary_key=True,
        comment="which listing: its filters (none: all) and the normalizer version",
    ),
    Column("page", Integer, primary_key=True, comment="the page of the listing, from 1"),
    Column("digest", Digest, nullable=False, comment="digest of the page as sent (job's own)"),
    Column(
        "members",
        LongText,
        nullable=False,
        comment="the rows its records are, in order, with their record digests (job's own)",
    ),
    comment=(
        "What the job remembers of each page of a listing it loaded whole: a page sent again "
        "byte for byte costs no lookups."
    ),
)

rejected_records = Table(
    "rejected_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True, comment="surrogate key"),
    Column(
        "run_id",
        Integer,
        ForeignKey("etl_runs.run_id"),
        nullable=False,
        index=True,
        comment="the run that met the record",
    ),
    Column("batch_id", LongText, nullable=False, comment="the batch whose listing held it"),
    Column("stream", LongText, comment="the stream whose listing held it"),
    Column("page", Integer, nullable=False, comment="the page of the listing, from 1"),
    Column("position", Integer, nullable=False, comment="its place on the page, from 0"),
    Column("reason", LongText, nullable=False, comment="why it did not fit the schema"),
    Column("payload", JsonDocument, comment="the record as sent, secrets removed"),
    Column("rejected_at", UtcDateTime, nullable=False, comment="when it was rejected"),
    comment="One row per record that did not fit the schema; the rest of its page loaded.",
)
