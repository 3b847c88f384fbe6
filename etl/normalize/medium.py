"""A call's medium (`ultravox.v1.CallMedium`) flattened into one typed row and its flags.

Pure. The rules:

- Absent, null or `{}` means webRtc, the documented default.
- "At most one call medium may be set": the first known key is the medium; an unknown key
  alone is the medium type as sent (a variant newer than this version).
- Known fields go to columns; whatever no column holds (an unknown variant, unknown,
  mistyped or out-of-range fields of a known one, a second variant) is kept in `extra`,
  shaped like the medium object. Nothing is lost except the SIP password, which is never
  kept, hashed or logged: `sip_password_set` says whether one was sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etl.domain import DEFAULT_MEDIUM_TYPE, KNOWN_MEDIUM_TYPES, MediumType
from etl.normalize.json_values import needles, without_keys

SECRET_MEDIUM_KEYS = frozenset({"password"})
"""Keys dropped wherever they appear in a medium: never stored, hashed or logged."""
SECRET_MEDIUM_NEEDLES = needles(SECRET_MEDIUM_KEYS)

INT32_MAX = 2**31 - 1
"""The largest value an integer column holds on every database (PostgreSQL integer)."""

_PHONE_VARIANTS = (MediumType.TWILIO, MediumType.TELNYX, MediumType.PLIVO)
_DTMF_VARIANTS = (*_PHONE_VARIANTS, MediumType.EXOTEL)
_DATA_MESSAGE_VARIANTS = (MediumType.WEB_RTC, MediumType.SERVER_WEB_SOCKET)
_WEBSOCKET_INT_FIELDS = {
    "inputSampleRate": "input_sample_rate",
    "outputSampleRate": "output_sample_rate",
    "clientBufferSizeMs": "client_buffer_size_ms",
}


@dataclass(slots=True)
class MediaRow:
    """The scheduled_call_media columns of one medium (the field names are the columns)."""

    medium_type: str = DEFAULT_MEDIUM_TYPE
    direction: str | None = None
    to_address: str | None = None
    from_address: str | None = None
    sip_username: str | None = None
    sip_password_set: bool | None = None
    input_sample_rate: int | None = None
    output_sample_rate: int | None = None
    client_buffer_size_ms: int | None = None
    media_idle_timeout: str | None = None
    dtmf_handling: dict[str, Any] | None = None
    additional_params: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None


MEDIA_COLUMNS = tuple(f.name for f in dataclasses.fields(MediaRow))
MEDIA_JSON_COLUMNS = frozenset({"dtmf_handling", "additional_params", "extra"})

DataMessageFlags = tuple[tuple[str, bool], ...]
"""(message, enabled) for each dataMessages flag present: an absent flag has no row."""


def normalize_medium(
    medium: Mapping[str, Any] | None, *, secret_free: bool = False
) -> tuple[MediaRow, DataMessageFlags]:
    """The media row and the dataMessages flags of one medium object.

    `secret_free`: the caller knows the medium holds no secret key (see SECRET_MEDIUM_KEYS),
    so it needs no deep copy: it is then copied only where it is taken apart. The input is
    never modified either way.
    """
    row = MediaRow()
    if not medium:
        return row, ()
    password_sent = _sip_password_sent(medium.get(MediumType.SIP.value))
    rest = dict(medium) if secret_free else without_keys(dict(medium), SECRET_MEDIUM_KEYS)
    if not rest:  # only a secret key: nothing of it is a medium
        return row, ()
    medium_type = next((k for k in rest if k in KNOWN_MEDIUM_TYPES), next(iter(rest)))
    row.medium_type = medium_type
    variant = rest.pop(medium_type)
    flags: DataMessageFlags = ()

    if medium_type in KNOWN_MEDIUM_TYPES and isinstance(variant, dict | None):
        fields = dict(variant or {})
        if medium_type in _DATA_MESSAGE_VARIANTS:
            flags = _take_data_messages(fields)
        if medium_type == MediumType.SERVER_WEB_SOCKET:
            for api_name, column in _WEBSOCKET_INT_FIELDS.items():
                setattr(row, column, _take_int32(fields, api_name))
            row.media_idle_timeout = _take(fields, "mediaIdleTimeout", str)
        if medium_type in _DTMF_VARIANTS:
            row.dtmf_handling = _take(fields, "dtmfHandling", dict)
        if medium_type in _PHONE_VARIANTS:
            _take_phone_outgoing(fields, row)
        if medium_type == MediumType.SIP:
            _take_sip(fields, row, password_sent=password_sent)
        if fields:
            rest[medium_type] = fields
    else:
        rest[medium_type] = variant
    row.extra = rest or None
    return row, flags


def _take(fields: dict[str, Any], name: str, kind: type) -> Any:
    """Pop `name` if it has the expected type; a mistyped value stays behind for `extra`."""
    value = fields.get(name)
    if isinstance(value, kind) and not isinstance(value, bool):
        del fields[name]
        return value
    return None


def _take_int32(fields: dict[str, Any], name: str) -> int | None:
    """Pop an integer that fits an integer column; a larger one stays behind for `extra`."""
    value = fields.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT32_MAX:
        del fields[name]
        return value
    return None


def _take_data_messages(fields: dict[str, Any]) -> DataMessageFlags:
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


def _take_outgoing(fields: dict[str, Any], row: MediaRow) -> dict[str, Any] | None:
    """The `outgoing` object, copied so its known fields can be taken out; to/from taken."""
    outgoing = fields.get("outgoing")
    if not isinstance(outgoing, dict):
        return None
    outgoing = fields["outgoing"] = dict(outgoing)
    row.direction = "outgoing"
    row.to_address = _take(outgoing, "to", str)
    row.from_address = _take(outgoing, "from", str)
    return outgoing


def _drop_if_empty(fields: dict[str, Any], name: str) -> None:
    if not fields[name]:
        del fields[name]


def _take_phone_outgoing(fields: dict[str, Any], row: MediaRow) -> None:
    outgoing = _take_outgoing(fields, row)
    if outgoing is None:
        row.direction = "incoming" if fields.get("outgoing") is None else None
        return
    row.additional_params = _take(outgoing, "additionalParams", dict)
    _drop_if_empty(fields, "outgoing")


def _sip_password_sent(variant: Any) -> bool:
    if not isinstance(variant, dict):
        return False
    outgoing = variant.get("outgoing")
    return isinstance(outgoing, dict) and outgoing.get("password") not in (None, "")


def _take_sip(fields: dict[str, Any], row: MediaRow, *, password_sent: bool) -> None:
    outgoing = _take_outgoing(fields, row)
    if outgoing is not None:
        row.sip_username = _take(outgoing, "username", str)
        row.sip_password_set = password_sent
        _drop_if_empty(fields, "outgoing")
    elif isinstance(fields.get("incoming"), dict):
        row.direction = "incoming"
        _drop_if_empty(fields, "incoming")
