"""The scheduled calls of a batch: `GET …/scheduled_batches/{batch_id}/scheduled_calls`.

The normalization of a `ScheduledCall` record is pure and lives here; its loader (which tells
identical definitions apart by their state) is etl.load.scheduled_calls.

- A record's **digest** covers all of it (the SIP password removed) and this normalizer's
  version: a record whose digest is stored is unchanged and costs nothing more.
- Its **definition** (medium without password, metadata, templateContext,
  experimentalSettings) is fixed when the batch is created; its digest plus an occurrence
  number among identical definitions is the call key.
- A record that does not fit the documented shape, or that no database could store exactly
  (a number JSON cannot hold, nesting too deep, an id or status too long to index), is
  rejected with its reason; the rest of its page loads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Table, and_, case, func, select

from etl.config import BatchRef, Config
from etl.domain import (
    FINAL_STATUSES,
    ID_MAX_LENGTH,
    METADATA_KEY_MAX_BYTES,
    METADATA_KEY_MAX_CHARACTERS,
    NAME_MAX_LENGTH,
)
from etl.load.schema import (
    scheduled_batches,
    scheduled_call_data_messages,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_call_status_changes,
    scheduled_calls,
)
from etl.normalize.json_values import (
    RecordError,
    ascii_json,
    canonical_json,
    canonical_json_bytes,
    digest,
    hex_digest,
    holds_nul,
    may_hold,
    metadata_entries,
    replace_nul,
    secrets_marked,
    unstorable_reason,
    without_keys,
)
from etl.normalize.medium import (
    MEDIA_COLUMNS,
    SECRET_MEDIUM_KEYS,
    SECRET_MEDIUM_NEEDLES,
    DataMessageFlags,
    MediaRow,
    normalize_medium,
)
from etl.streams import BatchContext, Listing, Stream, StreamLoader

NORMALIZER_VERSION = 2
"""Part of every record digest: raise it when the rows a record becomes change, so each
stored record is normalized again (once) by the next sync."""
DEFINITION_FIELDS = ("medium", "metadata", "templateContext", "experimentalSettings")
_DIGEST_PREFIX = f"scheduled_call/{NORMALIZER_VERSION}:".encode()


@dataclass(slots=True)
class ScheduledCallRow:
    """The scheduled_calls columns a record gives (ids, keys and times come at load)."""

    call_id: str | None
    status: str
    error: str | None
    medium_type: str
    metadata: Any
    template_context: Any
    experimental_settings: Any
    nul_escaped_record: str | None


@dataclass(slots=True)
class NormalizedScheduledCall:
    """One record as rows of the reporting tables."""

    position: int
    """0-based index of the record in its page."""
    record_digest: str
    definition_digest: str
    call: ScheduledCallRow
    media: MediaRow
    data_messages: DataMessageFlags
    metadata_entries: tuple[tuple[str, str], ...]
    call_hash: str
    """Digest of the scheduled_calls columns: equal means updated_at does not move."""
    detail_hash: str
    """Digest of the child rows (media, data messages, metadata entries)."""


# -- digests --------------------------------------------------------------------------------


def record_digest(record: Any) -> str:
    """The digest of a record as sent, any JSON value; of its medium's secrets it sees only
    whether each was set."""
    text = canonical_json_bytes(record)
    if may_hold(text, SECRET_MEDIUM_NEEDLES) and isinstance(record, dict):
        text = canonical_json_bytes(
            {**record, "medium": secrets_marked(record.get("medium"), SECRET_MEDIUM_KEYS)}
        )
    return hex_digest(_DIGEST_PREFIX + text)


def definition_digest(record: Mapping[str, Any]) -> str:
    """Digest of what defines a scheduled call; fixed when its batch was created."""
    return _definition(record)[0]


def _definition(record: Mapping[str, Any]) -> tuple[str, bool]:
    """The definition digest, and whether the medium is free of secret keys (then it needs
    no deep copy to be taken apart)."""
    definition = {name: record.get(name) for name in DEFINITION_FIELDS}
    medium = definition["medium"]
    secret_free = True
    if medium is not None:
        text = canonical_json_bytes(medium)
        if may_hold(text, SECRET_MEDIUM_NEEDLES):
            secret_free = False
            text = canonical_json_bytes(without_keys(medium, SECRET_MEDIUM_KEYS))
        definition["medium"] = orjson.Fragment(text)  # written as is, not serialized again
    try:
        text = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        definition["medium"] = without_keys(medium, SECRET_MEDIUM_KEYS)
        text = canonical_json(definition).encode("utf-8", "surrogatepass")
    return hex_digest(text), secret_free


# -- checks -----------------------------------------------------------------------------------


def check_record(record: Any, batch: BatchRef, *, lenient: bool = True) -> None:
    """Raise RecordError unless `record` has the documented shape for this batch and every
    database can store it exactly. `lenient=False`: the page was parsed strictly (orjson),
    so no number in it is NaN or infinite and only its depth needs a look."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    status = record.get("status")
    if not isinstance(status, str) or not status:
        raise RecordError("missing or non-string 'status'")
    if len(status) > NAME_MAX_LENGTH:
        raise RecordError(f"'status' is longer than {NAME_MAX_LENGTH} characters")
    batch_id = record.get("batchId")
    if not isinstance(batch_id, str):
        raise RecordError("missing or non-string 'batchId'")
    if batch_id.lower() != batch.batch_id:
        raise RecordError(f"'batchId' {batch_id!r} is not the batch being listed")
    for name in ("callId", "error"):
        if not isinstance(record.get(name), str | None):
            raise RecordError(f"'{name}' is neither a string nor null")
    call_id = record.get("callId")
    if call_id is not None and not 0 < len(call_id) <= ID_MAX_LENGTH:
        raise RecordError(f"'callId' is empty or longer than {ID_MAX_LENGTH} characters")
    if not isinstance(record.get("medium"), dict | None):
        raise RecordError("'medium' is neither an object nor null")
    if not isinstance(record.get("metadata"), dict | None):
        raise RecordError("'metadata' is neither an object nor null")
    reason = unstorable_reason(record, lenient=lenient)
    if reason is not None:
        raise RecordError(reason)


def secret_free_payload(record: Any) -> Any:
    """A record as kept in rejected_records: its medium's secrets removed."""
    if isinstance(record, dict) and "medium" in record:
        return {**record, "medium": without_keys(record["medium"], SECRET_MEDIUM_KEYS)}
    return record


# -- rows -------------------------------------------------------------------------------------


def normalize_record(
    record: Mapping[str, Any], *, position: int, digest_of_record: str, may_hold_nul: bool
) -> NormalizedScheduledCall:
    """The rows of one checked record (see check_record).

    A record holding U+0000 or a lone surrogate is stored with U+FFFD in their place, and
    exactly, as ASCII JSON text, in `nul_escaped_record`.
    """
    escaped = None
    if may_hold_nul and holds_nul(record):
        escaped = ascii_json(secret_free_payload(record))
        record = replace_nul(record)
    definition, secret_free = _definition(record)
    media, data_messages = normalize_medium(record.get("medium"), secret_free=secret_free)
    call_id = record.get("callId")
    metadata = record.get("metadata")
    call = ScheduledCallRow(
        call_id=call_id.lower() if call_id else None,
        status=record["status"],
        error=record.get("error"),
        medium_type=media.medium_type,
        metadata=metadata,
        template_context=record.get("templateContext"),
        experimental_settings=record.get("experimentalSettings"),
        nul_escaped_record=escaped,
    )
    entries = _metadata_entries(metadata)
    return NormalizedScheduledCall(
        position=position,
        record_digest=digest_of_record,
        definition_digest=definition,
        call=call,
        media=media,
        data_messages=data_messages,
        metadata_entries=entries,
        # The JSON columns are the definition's, as sent, and medium_type follows from its
        # medium: the definition digest stands for them (cheaper than serializing again).
        call_hash=digest(
            [definition, call.call_id, call.status, call.error, call.medium_type, escaped]
        ),
        # Sorted, like canonical JSON sorts objects: the same flags or metadata sent in
        # another key order are the same child rows, and must not count as an update.
        detail_hash=digest(
            [[getattr(media, c) for c in MEDIA_COLUMNS], sorted(data_messages), sorted(entries)]
        ),
    )


def _metadata_entries(metadata: Any) -> tuple[tuple[str, str], ...]:
    return metadata_entries(
        metadata, max_characters=METADATA_KEY_MAX_CHARACTERS, max_bytes=METADATA_KEY_MAX_BYTES
    )


# -- the stream -----------------------------------------------------------------------------


class ScheduledCallsStream:
    name = "scheduled_calls"
    path = "scheduled_calls"
    max_page_size: int | None = None
    tables: tuple[Table, ...] = (
        scheduled_calls,
        scheduled_call_media,
        scheduled_call_data_messages,
        scheduled_call_metadata,
        scheduled_call_status_changes,
    )

    def enabled(self, config: Config) -> bool:
        return True

    def listings(self, batch: BatchRef) -> Sequence[Listing]:
        if not batch.statuses:
            return (Listing({}),)
        return tuple(
            Listing({"status": s}, f" (status {s})", shows_every_record=False)
            for s in batch.statuses
        )

    def settled(self, conn: Connection, batch: BatchRef, details: Mapping[str, Any]) -> str | None:
        """Ended, and the stored calls (not removed) are all final and as many as the API's
        total. A batch with no stored call counts only once a complete listing of it was
        stored: an ended, empty batch seen for the first time is listed once."""
        total = details.get("total_count")
        if details.get("ended_at") is None or total is None:
            return None
        c = scheduled_calls.c
        active = and_(c.batch_id == batch.batch_id, c.removed_at.is_(None))
        waiting = case((c.status.in_(sorted(FINAL_STATUSES)), 0), else_=1)
        stored, not_final = conn.execute(
            select(func.count(), func.coalesce(func.sum(waiting), 0)).where(active)
        ).one()
        if stored != total or not_final:
            return None
        if stored == 0:
            b = scheduled_batches.c
            listed = conn.execute(
                select(b.last_synced_at).where(b.batch_id == batch.batch_id)
            ).scalar_one_or_none()
            if listed is None:
                return None
        return f"ended; all {total} stored calls are final"

    def loader(self, context: BatchContext) -> StreamLoader:
        from etl.load.scheduled_calls import ScheduledCallLoader

        return ScheduledCallLoader(context)


SCHEDULED_CALLS: Stream = ScheduledCallsStream()
