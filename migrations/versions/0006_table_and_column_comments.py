"""Comments on the reporting tables and their columns: what each one means, in the database.

Comments only: no table, column or index changes. A database that keeps no comments
(SQLite) is left alone. The text is that of etl.load.schema at this revision, frozen here
(a later change of a comment is a later migration); the drift test compares the two.

Revision ID: 0006
Revises: 0005
Created: 2026-12-01
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

# ruff: noqa: E501 - each comment on one line, word for word as etl.load.schema has it

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "scheduled_batches": (
        "One row per scheduled call batch the job knows.",
        {
            "batch_id": "Ultravox batchId",
            "agent_id": "the agent that owns the batch",
            "first_seen_at": "first run that saw the batch",
            "last_synced_at": "end of the last complete listing of its scheduled calls",
            "removed_at": "when the API stopped having the batch (404, or gone from its agent's list)",
            "created": "when the batch was created",
            "window_start": "start of the window its calls are placed in",
            "window_end": "end of the window its calls are placed in",
            "throttle": "the batch's throttle setting, as sent",
            "paused": "whether the batch is paused",
            "total_count": "the API's count of the batch's scheduled calls",
            "completed_count": "the API's count of calls done with",
            "ended_at": "when the batch ended; null while it runs",
            "webhook_url": "the batch's webhook URL (never its secret)",
            "details_synced_at": "when the columns from created on were last read from the API",
        },
    ),
    "scheduled_calls": (
        "One row per scheduled call of a batch.",
        {
            "id": "surrogate key, stable for the life of the row",
            "batch_id": "the batch",
            "agent_id": "the agent that owns the batch",
            "call_key": "identity in its batch: digest of the definition, #occurrence",
            "call_id": "Ultravox callId, null until the call is placed; joins calls.call_id",
            "status": "FUTURE, PENDING, SUCCESS, EXPIRED, ERROR; a later value as sent",
            "error": "the API's error text",
            "medium_type": "webRtc, twilio, serverWebSocket, telnyx, plivo, exotel, sip, or as sent",
            "metadata": "metadata as sent",
            "template_context": "templateContext as sent",
            "experimental_settings": "experimentalSettings as sent",
            "first_seen_at": "first run that saw the call",
            "updated_at": "when a field last changed",
            "removed_at": "set when absent from a complete listing; cleared if it comes back",
            "call_hash": "digest of the stored fields (job's own)",
            "detail_hash": "digest of the child rows' fields (job's own)",
            "nul_escaped_record": "the record as sent, as ASCII JSON, where it held U+0000 or a lone surrogate",
            "definition_digest": "digest of the definition: call_key without its occurrence (job's own)",
            "record_digest": "digest of the record as sent: equal means unchanged (job's own)",
        },
    ),
    "scheduled_call_media": (
        "The medium of each scheduled call, flattened (1:1 with scheduled_calls).",
        {
            "scheduled_call_id": "the row of scheduled_calls",
            "medium_type": "as in scheduled_calls",
            "direction": "outgoing or incoming (twilio, telnyx, plivo, sip)",
            "to_address": "the outgoing to: phone number or SIP URI, as sent",
            "from_address": "the outgoing from: phone number or SIP URI",
            "sip_username": "SIP user name",
            "sip_password_set": "whether a SIP password was sent; the password is never stored",
            "input_sample_rate": "serverWebSocket inputSampleRate",
            "output_sample_rate": "serverWebSocket outputSampleRate",
            "client_buffer_size_ms": "serverWebSocket clientBufferSizeMs",
            "media_idle_timeout": "mediaIdleTimeout, as sent",
            "dtmf_handling": "dtmfHandling, as sent",
            "additional_params": "the outgoing additionalParams",
            "extra": "what no column holds: an unknown variant or field, shaped like the medium",
        },
    ),
    "scheduled_call_data_messages": (
        "One row per dataMessages flag sent (webRtc, serverWebSocket); absent: default.",
        {
            "scheduled_call_id": "the row of scheduled_calls",
            "message": "pong, state, transcript, clientToolInvocation, …, as sent",
            "enabled": "the flag's value",
        },
    ),
    "scheduled_call_metadata": (
        "One row per metadata key of a scheduled call.",
        {
            "scheduled_call_id": "the row of scheduled_calls",
            "key": "the metadata key",
            "value": "a string as sent, anything else as JSON",
        },
    ),
    "scheduled_call_status_changes": (
        "One row per observed change of a scheduled call: status, callId or error.",
        {
            "id": "surrogate key",
            "scheduled_call_id": "the row of scheduled_calls",
            "run_id": "the run that observed it",
            "from_status": "the status before; null at the first sighting",
            "to_status": "the status observed",
            "call_id": "callId as of this observation",
            "error": "the error as of this observation",
            "observed_at": "when the run observed it",
        },
    ),
    "calls": (
        "One row per call a batch created, with its outcome.",
        {
            "call_id": "Ultravox callId; joins scheduled_calls.call_id",
            "batch_id": "the batch that created the call",
            "agent_id": "the agent",
            "created_at": "created",
            "joined_at": "joined; null: nobody joined",
            "ended_at": "ended",
            "end_reason": "unjoined, hangup, agent_hangup, timeout, connection_error, system_error…",
            "billed_duration_seconds": "billedDuration, in seconds",
            "billing_status": "BILLING_STATUS_…, as sent",
            "billed_side_input_tokens": "billedSideInputTokens",
            "billed_side_output_tokens": "billedSideOutputTokens",
            "short_summary": "filled in by Ultravox some time after the end",
            "summary": "filled in by Ultravox some time after the end",
            "medium_type": "as in scheduled_calls",
            "first_speaker": "firstSpeaker",
            "initial_output_medium": "initialOutputMedium",
            "language_hint": "languageHint",
            "model": "model",
            "voice": "voice",
            "max_duration_seconds": "maxDuration, in seconds",
            "recording_enabled": "recordingEnabled",
            "sip_billed_duration_seconds": "sipDetails.billedDuration, seconds",
            "sip_termination_reason": "sipDetails.terminationReason",
            "join_url_set": "whether the API sent a join URL (never the URL)",
            "metadata": "metadata as sent (key/value rows: call_metadata)",
            "extra": "every other field of the record, secrets removed",
            "first_seen_at": "first run that saw the call",
            "updated_at": "when a field last changed",
            "removed_at": "set when absent from a complete listing (e.g. deleted by retention)",
            "record_digest": "digest of the record as sent: equal means unchanged (job's own)",
            "nul_escaped_record": "the record as sent, as ASCII JSON, where it held U+0000 or a lone surrogate",
        },
    ),
    "call_metadata": (
        "One row per metadata key of a created call.",
        {
            "call_id": "the row of calls",
            "key": "the metadata key",
            "value": "a string as sent, anything else as JSON",
        },
    ),
    "etl_runs": (
        "One row per run of the job: what it did, from start to end.",
        {
            "run_id": "the run",
            "started_at": "when the run started",
            "finished_at": "when it ended; null while it runs",
            "status": "running, succeeded, partial, failed, or abandoned (the process died)",
            "batches_ok": "batches synced",
            "batches_failed": "batches failed",
            "calls_fetched": "records fetched, over the run's batches and streams",
            "calls_inserted": "rows inserted: records seen for the first time, over the run's batches and streams",
            "calls_updated": "rows whose fields changed, over the run's batches and streams",
            "calls_unchanged": "records listed unchanged (no row rewritten), over the run's batches and streams",
            "calls_removed": "rows marked removed: absent from a complete listing, over the run's batches and streams",
            "calls_rejected": "records that did not fit the schema (see rejected_records), over the run's batches and streams",
            "error": "why the run as a whole failed or stopped",
        },
    ),
    "etl_batch_runs": (
        "One row per batch of a run: its outcome and counts, over its streams.",
        {
            "run_id": "the run (etl_runs)",
            "batch_id": "the batch",
            "agent_id": "the agent that owns the batch",
            "status": "running, succeeded, failed, locked, skipped, removed, or abandoned",
            "pages": "pages read",
            "fetched": "records fetched",
            "inserted": "rows inserted: records seen for the first time",
            "updated": "rows whose fields changed",
            "unchanged": "records listed unchanged (no row rewritten)",
            "removed": "rows marked removed: absent from a complete listing",
            "rejected": "records that did not fit the schema (see rejected_records)",
            "api_total": "the API's total for the listing",
            "error": "why the batch failed",
            "note": "why it was skipped, locked or found removed; not an error",
            "started_at": "when the run took the batch up",
            "finished_at": "when it was done with it",
        },
    ),
    "etl_stream_runs": (
        "One row per stream of a batch of a run: its counts.",
        {
            "run_id": "the run (etl_runs)",
            "batch_id": "the batch",
            "stream": "what was listed: scheduled_calls, or calls (the created calls)",
            "pages": "pages read",
            "fetched": "records fetched",
            "inserted": "rows inserted: records seen for the first time",
            "updated": "rows whose fields changed",
            "unchanged": "records listed unchanged (no row rewritten)",
            "removed": "rows marked removed: absent from a complete listing",
            "rejected": "records that did not fit the schema (see rejected_records)",
            "api_total": "the API's total for the listing",
            "note": "why the stream was not listed this run",
        },
    ),
    "etl_listing_pages": (
        "What the job remembers of each page of a listing it loaded whole: a page sent again byte for byte costs no lookups.",
        {
            "batch_id": "the batch",
            "stream": "the stream whose listing held the page",
            "listing": "which listing: its filters (none: all) and the normalizer version",
            "page": "the page of the listing, from 1",
            "digest": "digest of the page as sent (job's own)",
            "members": "the rows its records are, in order, with their record digests (job's own)",
        },
    ),
    "rejected_records": (
        "One row per record that did not fit the schema; the rest of its page loaded.",
        {
            "id": "surrogate key",
            "run_id": "the run that met the record",
            "batch_id": "the batch whose listing held it",
            "stream": "the stream whose listing held it",
            "page": "the page of the listing, from 1",
            "position": "its place on the page, from 0",
            "reason": "why it did not fit the schema",
            "payload": "the record as sent, secrets removed",
            "rejected_at": "when it was rejected",
        },
    ),
}
"""Table name -> (table comment, column name -> column comment)."""


def upgrade() -> None:
    _set_comments(lambda comment: comment)


def downgrade() -> None:
    _set_comments(lambda _comment: None)


def _set_comments(new: Callable[[str], str | None]) -> None:
    """Give every table and column of COMMENTS the comment `new(its comment)`; None
    removes it."""
    bind = op.get_bind()
    if not bind.dialect.supports_comments:
        return
    inspector = sa.inspect(bind)
    for table, (table_comment, columns) in COMMENTS.items():
        if new(table_comment) is None:
            op.drop_table_comment(table, existing_comment=table_comment)
        else:
            op.create_table_comment(table, new(table_comment))
        reflected = {c["name"]: c for c in inspector.get_columns(table)}
        for column, comment in columns.items():
            found = reflected[column]
            default = found.get("default")
            # PostgreSQL only comments the column; a database whose ALTER restates the
            # whole column (MySQL's MODIFY) needs its type, nullability, default and
            # AUTO_INCREMENT, which Alembic warns about everywhere else: not a problem.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "autoincrement and existing_autoincrement")
                op.alter_column(
                    table,
                    column,
                    comment=new(comment),
                    existing_type=found["type"],
                    existing_nullable=found["nullable"],
                    existing_server_default=None if default is None else sa.text(default),
                    existing_autoincrement=found.get("autoincrement"),
                    existing_comment=found.get("comment"),
                )
