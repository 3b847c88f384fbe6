"""Pure functions from Ultravox ScheduledCall records to rows of the reporting tables.

No I/O here: every function takes JSON values and returns plain values, so each rule can be
tested on payloads from the official documentation alone. The rules, in short:

- `medium` absent, null or `{}` means webRtc, the documented default.
- Known fields go to columns; whatever of the medium no column holds (an unknown variant,
  unknown or mistyped fields of a known one) is kept in `extra`, shaped like the medium
  object itself. Nothing is lost except the SIP password, which is never kept.
- A call's identity inside its batch (the call key) is the digest of its definition
  (medium without password, metadata, templateContext, experimentalSettings) plus its
  occurrence number among identical definitions, in listing order.

Digests are SHA-256 of canonical JSON (sorted keys, no whitespace, UTF-8), written by orjson
where it can write the value (about ten times faster than the json module), else by the json
module (integers beyond 64 bits): which one is a function of the value alone, so a digest is
deterministic. Normalization runs for every listed call on every run, unchanged or not, so
its cost per call is what a no-change re-sync costs; keep it lean.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from etl.config import BatchRef

KNOWN_STATUSES = frozenset({"FUTURE", "PENDING", "SUCCESS", "EXPIRED", "ERROR"})
FINAL_STATUSES = frozenset({"SUCCESS", "EXPIRED", "ERROR"})
KNOWN_MEDIUM_TYPES = ("webRtc", "twilio", "serverWebSocket", "telnyx", "plivo", "exotel", "sip")
DEFAULT_MEDIUM_TYPE = "webRtc"
DEFINITION_FIELDS = ("medium", "metadata", "templateContext", "experimentalSettings")
NUL = "\x00"
NUL_REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
SECRET_MEDIUM_KEYS = frozenset({"password"})
"""Keys dropped wherever they appear in a medium: never stored, hashed or logged."""

_PHONE_VARIANTS = ("twilio", "telnyx", "plivo")
_DATA_MESSAGE_VARIANTS = ("webRtc", "serverWebSocket")
_WEBSOCKET_INT_FIELDS = {
    "inputSampleRate": "input_sample_rate",
    "outputSampleRate": "output_sample_rate",
    "clientBufferSizeMs": "client_buffer_size_ms",
}
MEDIA_COLUMNS = (
    "medium_type",
    "direction",
    "to_address",
    "from_address",
    "sip_username",
    "sip_password_set",
    "input_sample_rate",
    "output_sample_rate",
    "client_buffer_size_ms",
    "media_idle_timeout",
    "dtmf_handling",
    "additional_params",
    "extra",
)


class RecordError(ValueError):
    """A scheduled call record that does not fit the documented schema."""


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record of a page that could not be loaded, kept for inspection."""

    position: int
    """0-based index of the record in its page."""
    reason: str
    payload: Any
    """The record as sent, with secrets removed."""


@dataclass(frozen=True, slots=True)
class NormalizedCall:
    """One scheduled call as rows of the reporting tables (ids and timestamps come at load)."""

    call_key: str
    call: dict[str, Any]
    """scheduled_calls columns: batch_id, agent_id, call_key, call_id, status, error,
    medium_type, metadata, template_context, experimental_settings."""
    media: dict[str, Any]
    """scheduled_call_media columns, keyed as MEDIA_COLUMNS."""
    data_messages: tuple[tuple[str, bool], ...]
    metadata_entries: tuple[tuple[str, str], ...]
    call_hash: str
    """Digest of `call` (its JSON documents through the definition digest): equal hashes mean
    the row needs no write."""
    detail_hash: str
    """Digest of the child rows (media, data messages, metadata entries)."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json_bytes(value: Any) -> bytes:
    """Canonical JSON as UTF-8: orjson where it can write the value, else the json module.

    Used only for digests. orjson refuses integers beyond 64 bits (the json module writes
    them); it writes floats in shortest round-trip form like the json module, only spelling
    exponents differently (1e-7, not 1e-07). Non-finite floats, which JSON cannot express
    and only a lenient parser produces, are written as null by orjson.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, a lone surrogate
        return canonical_json(value).encode("utf-8", "surrogatepass")


def digest(value: Any) -> str:
    return _hex32(canonical_json_bytes(value))


def _hex32(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


# A secret key appears in canonical JSON as exactly this text (as a key, or as a string value,
# which only costs the slow path): orjson escapes nothing in a plain ASCII word.
_SECRET_NEEDLES = tuple(orjson.dumps(k) for k in sorted(SECRET_MEDIUM_KEYS))


def _may_hold_secret(medium: Any) -> bool:
    """False when no key of SECRET_MEDIUM_KEYS is anywhere in the medium (faster than a walk)."""
    text = canonical_json_bytes(medium)
    return any(needle in text for needle in _SECRET_NEEDLES)


def strip_secrets(value: Any) -> Any:
    """A copy of a JSON value without any key in SECRET_MEDIUM_KEYS, at any depth."""
    if isinstance(value, dict):
        return {k: strip_secrets(v) for k, v in value.items() if k not in SECRET_MEDIUM_KEYS}
    if isinstance(value, list):
        return [strip_secrets(v) for v in value]
    return value


def definition_digest(record: Mapping[str, Any]) -> str:
    """Digest of what defines a scheduled call; fixed when its batch was created."""
    return _definition(record)[0]


def _definition(record: Mapping[str, Any]) -> tuple[str, bool]:
    """The definition digest, and whether the medium is free of secret keys (then it needs
    no deep copy to be taken apart: see normalize_medium)."""
    definition = {name: record.get(name) for name in DEFINITION_FIELDS}
    medium = definition["medium"]
    secret_free = True
    if medium is not None:
        text = canonical_json_bytes(medium)
        if any(needle in text for needle in _SECRET_NEEDLES):
            secret_free = False
            text = canonical_json_bytes(strip_secrets(medium))
        definition["medium"] = orjson.Fragment(text)  # written as is, not serialized again
    try:
        text = orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        definition["medium"] = strip_secrets(medium)
        text = canonical_json(definition).encode("utf-8", "surrogatepass")
    return _hex32(text), secret_free


class CallKeyAssigner(Protocol):
    """Gives each record of one listing its call key (see CallKeys)."""

    def next_key(self, record: Mapping[str, Any]) -> str: ...


class CallKeys:
    """Hands out call keys for one listing of one batch, in the order the API lists calls.

    Two calls with identical definitions get `<digest>#1` and `<digest>#2`.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def next_key(self, record: Mapping[str, Any]) -> str:
        return self._next(record)[0]

    def _next(self, record: Mapping[str, Any]) -> tuple[str, str, bool]:
        """The key, and what normalize_call would otherwise work out again (_definition)."""
        definition, secret_free = _definition(record)
        occurrence = self._seen.get(definition, 0) + 1
        self._seen[definition] = occurrence
        return f"{definition}#{occurrence}", definition, secret_free


def normalize_page(
    results: list[Any], batch: BatchRef, keys: CallKeyAssigner, *, may_hold_nul: bool = True
) -> tuple[list[NormalizedCall], list[RejectedRecord]]:
    """Rows for every good record of a page, and the records that do not fit.

    `may_hold_nul=False` (the page's JSON text has no `\u0000` escape) skips the search for
    U+0000 in every string, which costs more than the rest of normalization.
    """
    calls: list[NormalizedCall] = []
    rejects: list[RejectedRecord] = []
    # CallKeys hands out what the key was computed from, which saves computing it again.
    assign = keys._next if isinstance(keys, CallKeys) else None
    for position, record in enumerate(results):
        try:
            check_record(record, batch)
        except RecordError as exc:
            payload = strip_secrets(record)
            if may_hold_nul and holds_nul(payload):
                payload = replace_nul(payload)
            rejects.append(RejectedRecord(position, str(exc), payload))
            continue
        if assign is not None:
            key, definition, secret_free = assign(record)
        else:
            key, definition, secret_free = keys.next_key(record), None, None
        if may_hold_nul and holds_nul(record):
            calls.append(normalize_call(replace_nul(record), batch, key, nul_escaped(record)))
        else:
            calls.append(_normalize_call(record, batch, key, None, definition, secret_free))
    return calls, rejects


def holds_nul(value: Any) -> bool:
    """Whether a JSON value has, in any string or key, a character no database column takes:
    U+0000 (PostgreSQL text and jsonb refuse it) or a lone surrogate (not UTF-8 at all)."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_UNSTORABLE.search(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    return False


def replace_nul(value: Any) -> Any:
    """The value with each such character replaced by U+FFFD, which both databases store."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(NUL_REPLACEMENT, value)
    if isinstance(value, dict):
        return {_UNSTORABLE.sub(NUL_REPLACEMENT, k): replace_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_nul(v) for v in value]
    return value


def nul_escaped(record: Mapping[str, Any]) -> str:
    """The record exactly, as ASCII JSON text: U+0000 is the escape \\u0000, a lone
    surrogate \\ud800 and so on, so json.loads() of it gives the record back."""
    return json.dumps(strip_secrets(record), ensure_ascii=True, sort_keys=True)


def check_record(record: Any, batch: BatchRef) -> None:
    """Raise RecordError unless `record` has the documented shape for this batch."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    status = record.get("status")
    if not isinstance(status, str) or not status:
        raise RecordError("missing or non-string 'status'")
    batch_id = record.get("batchId")
    if not isinstance(batch_id, str):
        raise RecordError("missing or non-string 'batchId'")
    if batch_id.lower() != batch.batch_id:
        raise RecordError(f"'batchId' {batch_id!r} is not the batch being listed")
    for name in ("callId", "error"):
        if not isinstance(record.get(name), str | None):
            raise RecordError(f"'{name}' is neither a string nor null")
    if not isinstance(record.get("medium"), dict | None):
        raise RecordError("'medium' is neither an object nor null")
    if not isinstance(record.get("metadata"), dict | None):
        raise RecordError("'metadata' is neither an object nor null")


def normalize_call(
    record: Mapping[str, Any],
    batch: BatchRef,
    call_key: str,
    nul_escaped_record: str | None = None,
) -> NormalizedCall:
    """Rows for one checked record (see check_record) that holds no U+0000."""
    return _normalize_call(record, batch, call_key, nul_escaped_record, None, None)


def _normalize_call(
    record: Mapping[str, Any],
    batch: BatchRef,
    call_key: str,
    nul_escaped_record: str | None,
    definition: str | None,
    secret_free: bool | None,
) -> NormalizedCall:
    """normalize_call, given the record's _definition() when the caller has it."""
    if definition is None or secret_free is None:
        definition, secret_free = _definition(record)
    media, data_messages = _normalize_medium(record.get("medium"), secret_free)
    call_id = record.get("callId")
    metadata = record.get("metadata")
    call = {
        "batch_id": batch.batch_id,
        "agent_id": batch.agent_id,
        "call_key": call_key,
        "call_id": call_id.lower() if call_id else None,
        "status": record["status"],
        "error": record.get("error"),
        "medium_type": media["medium_type"],
        "metadata": metadata,
        "template_context": record.get("templateContext"),
        "experimental_settings": record.get("experimentalSettings"),
        "nul_escaped_record": nul_escaped_record,
    }
    entries = metadata_entries(metadata)
    return NormalizedCall(
        call_key=call_key,
        call=call,
        media=media,
        data_messages=data_messages,
        metadata_entries=entries,
        # The call's JSON documents (metadata, templateContext, experimentalSettings) are
        # the definition's, as sent, and medium_type follows from its medium: the definition
        # digest stands for them, which is much cheaper than serializing them again.
        call_hash=digest(
            [
                definition,
                call["batch_id"],
                call["agent_id"],
                call_key,
                call["call_id"],
                call["status"],
                call["error"],
                call["medium_type"],
                nul_escaped_record,
            ]
        ),
        # Sorted, like the JSON objects canonical_json sorts: the same flags or metadata sent
        # in another key order are the same child rows, and must not count as an update.
        detail_hash=digest([media, sorted(data_messages), sorted(entries)]),
    )


METADATA_KEY_MAX_BYTES = 1000
"""A longer metadata key gets no key/value row: PostgreSQL cannot index it (btree entries
stop near 2.7 kB). Nothing is lost: scheduled_calls.metadata keeps the whole object."""


def metadata_entries(metadata: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """Key/value rows; a value that is not a string is kept as its JSON text."""
    if not metadata:
        return ()
    return tuple(
        (key, value if isinstance(value, str) else canonical_json(value))
        for key, value in metadata.items()
        if len(key) * 4 <= METADATA_KEY_MAX_BYTES  # fast path: 4 bytes a character at most
        or len(key.encode("utf-8", "surrogatepass")) <= METADATA_KEY_MAX_BYTES
    )


def normalize_medium(
    medium: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], tuple[tuple[str, bool], ...]]:
    """The scheduled_call_media row and the dataMessages flags of one medium object."""
    return _normalize_medium(medium, None)


def _normalize_medium(
    medium: Mapping[str, Any] | None, secret_free: bool | None
) -> tuple[dict[str, Any], tuple[tuple[str, bool], ...]]:
    """normalize_medium; `secret_free`: whether the medium is known to hold no secret key."""
    row: dict[str, Any] = dict.fromkeys(MEDIA_COLUMNS)
    if not medium:
        row["medium_type"] = DEFAULT_MEDIUM_TYPE
        return row, ()

    # The type is chosen among the keys left once secrets are stripped: a medium whose only
    # key was a secret (e.g. a stray top-level "password") used to pick that key as its type
    # and then raised KeyError below, which no caller catches: the whole sync run crashed.
    # A medium without secrets is copied only where it is taken apart (the variant, and its
    # `outgoing`), not deeply: the input is never modified either way.
    if secret_free is None:
        secret_free = not _may_hold_secret(medium)
    rest = dict(medium) if secret_free else strip_secrets(dict(medium))
    if not rest:
        row["medium_type"] = DEFAULT_MEDIUM_TYPE
        return row, ()
    # "At most one call medium may be set": the first known key is the medium; anything
    # else stays in `extra` untouched.
    medium_type = next((k for k in rest if k in KNOWN_MEDIUM_TYPES), next(iter(rest)))
    row["medium_type"] = medium_type
    variant = rest.pop(medium_type)
    flags: tuple[tuple[str, bool], ...] = ()

    if medium_type in KNOWN_MEDIUM_TYPES and isinstance(variant, dict | None):
        fields = dict(variant or {})
        if medium_type in _DATA_MESSAGE_VARIANTS:
            flags = _take_data_messages(fields)
        if medium_type == "serverWebSocket":
            for api_name, column in _WEBSOCKET_INT_FIELDS.items():
                row[column] = _take(fields, api_name, int)
            row["media_idle_timeout"] = _take(fields, "mediaIdleTimeout", str)
        if medium_type in (*_PHONE_VARIANTS, "exotel"):
            row["dtmf_handling"] = _take(fields, "dtmfHandling", dict)
        if medium_type in _PHONE_VARIANTS:
            _take_outgoing(fields, row)
        if medium_type == "sip":
            _take_sip(fields, row, password_sent=_sip_password_sent(medium[medium_type]))
        if fields:
            rest[medium_type] = fields
    else:
        rest[medium_type] = variant
    row["extra"] = rest or None
    return row, flags


def _take(fields: dict[str, Any], name: str, kind: type) -> Any:
    """Pop `name` if it has the expected type; a mistyped value stays behind for `extra`."""
    value = fields.get(name)
    if isinstance(value, kind) and not isinstance(value, bool):
        del fields[name]
        return value
    return None


def _take_data_messages(fields: dict[str, Any]) -> tuple[tuple[str, bool], ...]:
    messages = fields.get("dataMessages")
    if not isinstance(messages, dict):
        return ()
    items = messages.items()
    flags = tuple([kv for kv in items if kv[1].__class__ is bool])
    if len(flags) == len(messages):
        del fields["dataMessages"]
        return flags
    leftover = {k: v for k, v in items if v.__class__ is not bool}
    if leftover:
        fields["dataMessages"] = leftover
    else:
        del fields["dataMessages"]
    return flags


def _take_outgoing(fields: dict[str, Any], row: dict[str, Any]) -> None:
    outgoing = fields.get("outgoing")
    if not isinstance(outgoing, dict):
        row["direction"] = "incoming" if outgoing is None else None
        return
    outgoing = fields["outgoing"] = dict(outgoing)
    row["direction"] = "outgoing"
    row["to_address"] = _take(outgoing, "to", str)
    row["from_address"] = _take(outgoing, "from", str)
    row["additional_params"] = _take(outgoing, "additionalParams", dict)
    if not outgoing:
        del fields["outgoing"]


def _sip_password_sent(variant: Any) -> bool:
    if not isinstance(variant, dict):
        return False
    outgoing = variant.get("outgoing")
    return isinstance(outgoing, dict) and outgoing.get("password") not in (None, "")


def _take_sip(fields: dict[str, Any], row: dict[str, Any], *, password_sent: bool) -> None:
    incoming = fields.get("incoming")
    outgoing = fields.get("outgoing")
    if isinstance(outgoing, dict):
        outgoing = fields["outgoing"] = dict(outgoing)
        row["direction"] = "outgoing"
        row["to_address"] = _take(outgoing, "to", str)
        row["from_address"] = _take(outgoing, "from", str)
        row["sip_username"] = _take(outgoing, "username", str)
        row["sip_password_set"] = password_sent
        if not outgoing:
            del fields["outgoing"]
    elif isinstance(incoming, dict):
        row["direction"] = "incoming"
        if not incoming:
            del fields["incoming"]
