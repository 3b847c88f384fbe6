"""The calls a batch created, with their outcomes: `GET …/{batch_id}/created_calls`.

Each `Call` record becomes a row of `calls` (keyed by its callId) and key/value rows of
`call_metadata`; the normalization below is pure. Durations such as "123.456s" become exact
seconds, timestamps UTC; a field no column holds (or one of an unexpected type) is kept in
`extra`, so nothing the API sends is lost but its secrets.

Secrets, never stored, hashed or logged: `joinUrl` (anyone holding it can join the call;
`join_url_set` says whether one was sent), every `callbacks.*.secrets`,
`dataConnectionConfig.headers` and the SIP password of the call's medium.

A call's summaries and billing arrive minutes after it ends, so an ended call can still
change: its row is updated then. An ended batch's calls are not listed again (`settled`)
once there are as many stored calls as scheduled calls with a callId and each of them has
ended, has a final billing status, and has its summary or ended over SUMMARY_GRACE ago.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, case, func, or_, select

from etl.config import BatchRef, Config
from etl.domain import (
    BILLING_PENDING,
    ID_MAX_LENGTH,
    METADATA_KEY_MAX_BYTES,
    METADATA_KEY_MAX_CHARACTERS,
    EndReason,
)
from etl.load.backends import json_text
from etl.load.keyed_rows import KeyedRows, KeyedRowsLoader, KeyedStreamSpec
from etl.load.schema import call_metadata, calls, scheduled_calls
from etl.normalize import fields
from etl.normalize.json_values import (
    RecordError,
    ascii_json,
    canonical_json_bytes,
    hex_digest,
    holds_nul,
    metadata_entries,
    replace_nul,
    unstorable_reason,
    without_keys,
)
from etl.normalize.medium import INT32_MAX, SECRET_MEDIUM_KEYS, normalize_medium
from etl.streams import BatchContext, Listing, Stream, StreamLoader

NORMALIZER_VERSION = 1
"""Part of every record digest: raise it when the rows a record becomes change."""
_DIGEST_PREFIX = f"call/{NORMALIZER_VERSION}:".encode()
SUMMARY_GRACE = timedelta(hours=1)
"""How long after a call ends its summary may still arrive (Ultravox takes minutes)."""
KNOWN_END_REASONS = frozenset(r.value for r in EndReason)

_TIMESTAMPS = {"created": "created_at", "joined": "joined_at", "ended": "ended_at"}
_DURATIONS = {"billedDuration": "billed_duration_seconds", "maxDuration": "max_duration_seconds"}
_TEXTS = {
    "endReason": "end_reason",
    "billingStatus": "billing_status",
    "shortSummary": "short_summary",
    "summary": "summary",
    "firstSpeaker": "first_speaker",
    "initialOutputMedium": "initial_output_medium",
    "languageHint": "language_hint",
    "model": "model",
    "voice": "voice",
    "agentId": "agent_id",
}
_INTEGERS = {
    "billedSideInputTokens": "billed_side_input_tokens",
    "billedSideOutputTokens": "billed_side_output_tokens",
}
_SIP_DETAILS = {
    "billedDuration": ("sip_billed_duration_seconds", fields.duration_seconds),
    "terminationReason": ("sip_termination_reason", lambda v: _text(v)),
}


# -- secrets and digests ----------------------------------------------------------------------


def without_call_secrets(record: Any) -> Any:
    """A Call record without its secrets (see the module doc); any other value as it is."""
    if not isinstance(record, dict):
        return record
    kept = {k: v for k, v in record.items() if k != "joinUrl"}
    callbacks = kept.get("callbacks")
    if isinstance(callbacks, dict):
        kept["callbacks"] = {
            name: {k: v for k, v in cb.items() if k != "secrets"} if isinstance(cb, dict) else cb
            for name, cb in callbacks.items()
        }
    connection = kept.get("dataConnectionConfig")
    if isinstance(connection, dict) and "headers" in connection:
        kept["dataConnectionConfig"] = {k: v for k, v in connection.items() if k != "headers"}
    if "medium" in kept:
        kept["medium"] = without_keys(kept["medium"], SECRET_MEDIUM_KEYS)
    return kept


def record_digest(record: Any) -> str:
    """The digest of a record as sent, its secrets removed; any JSON value. (Whether a join
    URL was sent is a column; the digest sees it through `join_url_set`.)"""
    kept = without_call_secrets(record)
    if isinstance(record, dict):
        kept = {**kept, "joinUrl": record.get("joinUrl") not in (None, "")}
    return hex_digest(_DIGEST_PREFIX + canonical_json_bytes(kept))


def call_id_of(record: Any) -> str | None:
    value = record.get("callId") if isinstance(record, dict) else None
    return value.lower() if isinstance(value, str) and value else None


# -- rows -------------------------------------------------------------------------------------


def normalize_call(record: Any, digest: str, lenient: bool) -> KeyedRows:
    """The rows of one Call record; RecordError if it cannot be stored."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    call_id = call_id_of(record)
    if call_id is None or len(call_id) > ID_MAX_LENGTH:
        raise RecordError(f"missing 'callId', or longer than {ID_MAX_LENGTH} characters")
    reason = unstorable_reason(record, lenient=lenient)
    if reason is not None:
        raise RecordError(reason)
    rest = without_call_secrets(record)
    escaped = None
    if lenient and holds_nul(rest):
        escaped = ascii_json(rest)
        rest = replace_nul(rest)
    rest.pop("callId")
    values: dict[str, Any] = {"join_url_set": record.get("joinUrl") not in (None, "")}
    for name, column in _TIMESTAMPS.items():
        _take(rest, name, column, fields.timestamp, values)
    for name, column in _DURATIONS.items():
        _take(rest, name, column, fields.duration_seconds, values)
    for name, column in _TEXTS.items():
        _take(rest, name, column, _text, values)
    for name, column in _INTEGERS.items():
        _take(rest, name, column, _int32, values)
    _take(rest, "recordingEnabled", "recording_enabled", _boolean, values)
    sip = rest.get("sipDetails")
    if isinstance(sip, dict):
        sip = rest["sipDetails"] = dict(sip)
        for name, (column, read) in _SIP_DETAILS.items():
            _take(sip, name, column, read, values)
        if not sip:
            del rest["sipDetails"]
    elif "sipDetails" in rest and rest["sipDetails"] is None:
        del rest["sipDetails"]
    medium = rest.get("medium")
    if isinstance(medium, dict | None):
        values["medium_type"] = normalize_medium(medium, secret_free=True)[0].medium_type
    metadata = rest.get("metadata")
    entries: tuple[tuple[str, str], ...] = ()
    if isinstance(metadata, dict | None):
        rest.pop("metadata", None)
        values["metadata"] = json_text(metadata)
        entries = metadata_entries(
            metadata, max_characters=METADATA_KEY_MAX_CHARACTERS, max_bytes=METADATA_KEY_MAX_BYTES
        )
    values["extra"] = json_text(rest) if rest else None
    values["nul_escaped_record"] = escaped
    end_reason = values.get("end_reason")
    return KeyedRows(
        key=call_id,
        record_digest=digest,
        values=values,
        children={call_metadata.name: entries},
        new_values=frozenset(
            {("endReason", end_reason)}
            if isinstance(end_reason, str) and end_reason not in KNOWN_END_REASONS
            else ()
        ),
    )


def _take(
    source: dict[str, Any],
    name: str,
    column: str,
    read: Callable[[Any], Any],
    values: dict[str, Any],
) -> None:
    """Move a field into its column if it reads (null does); else it stays for `extra`."""
    if name not in source:
        return
    raw = source[name]
    value = None if raw is None else read(raw)
    if raw is None or value is not None:
        values[column] = value
        del source[name]


def _text(value: Any) -> str | None:
    return fields.typed(value, str)  # type: ignore[no-any-return]


def _boolean(value: Any) -> bool | None:
    return fields.typed(value, bool)  # type: ignore[no-any-return]


def _int32(value: Any) -> int | None:
    number = fields.typed(value, int)
    return number if number is not None and abs(number) <= INT32_MAX else None


# -- the stream -----------------------------------------------------------------------------

SPEC = KeyedStreamSpec(
    stream="calls",
    table=calls,
    key="call_id",
    children=(call_metadata,),
    record_key=call_id_of,
    digest=record_digest,
    rows=normalize_call,
    without_secrets=without_call_secrets,
    version=NORMALIZER_VERSION,
)


class CreatedCallsStream:
    name = "calls"
    path = "created_calls"
    # A Call (summaries, timestamps, its medium) is ~4x a scheduled call on the wire and
    # parsed: 250 of them weigh what 1,000 scheduled calls do (bench/README.md, B2's RSS).
    max_page_size: int | None = 250
    tables: tuple[Table, ...] = (calls, call_metadata)

    def enabled(self, config: Config) -> bool:
        return config.sync.created_calls

    def listings(self, batch: BatchRef) -> Sequence[Listing]:
        return (Listing({}),)

    def settled(self, conn: Connection, batch: BatchRef, details: Mapping[str, Any]) -> str | None:
        if details.get("ended_at") is None:
            return None
        s, k = scheduled_calls.c, calls.c
        placed = conn.execute(
            select(func.count()).where(
                and_(s.batch_id == batch.batch_id, s.removed_at.is_(None), s.call_id.is_not(None))
            )
        ).scalar_one()
        grace_over = datetime.now(UTC) - SUMMARY_GRACE
        open_call = or_(
            k.ended_at.is_(None),
            k.billing_status.is_(None),
            k.billing_status == BILLING_PENDING,
            and_(k.summary.is_(None), k.ended_at > grace_over),
        )
        stored, still_open = conn.execute(
            select(func.count(), func.coalesce(func.sum(case((open_call, 1), else_=0)), 0)).where(
                and_(k.batch_id == batch.batch_id, k.removed_at.is_(None))
            )
        ).one()
        if stored != placed or still_open:
            return None
        return f"ended; all {stored} stored calls are billed, with their summaries"

    def loader(self, context: BatchContext) -> StreamLoader:
        return KeyedRowsLoader(SPEC, context)


CREATED_CALLS: Stream = CreatedCallsStream()
