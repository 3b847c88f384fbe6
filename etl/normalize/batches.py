"""Pure functions from Ultravox ScheduledCallBatch objects to scheduled_batches columns.

The batch's `webhookSecret` is a secret: it is never part of any row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from etl.normalize import fields

DETAIL_COLUMNS = (
    "created",
    "window_start",
    "window_end",
    "throttle",
    "paused",
    "total_count",
    "completed_count",
    "ended_at",
    "webhook_url",
)
_TIMESTAMPS = {
    "created": "created",
    "windowStart": "window_start",
    "windowEnd": "window_end",
    "endedAt": "ended_at",
}
_TYPED = {
    "throttle": ("throttle", str),
    "paused": ("paused", bool),
    "totalCount": ("total_count", int),
    "completedCount": ("completed_count", int),
    "webhookUrl": ("webhook_url", str),
}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def batch_details_row(details: Mapping[str, Any]) -> dict[str, Any]:
    """The detail columns of scheduled_batches; a field of the wrong type becomes NULL."""
    row: dict[str, Any] = {}
    for api_name, column in _TIMESTAMPS.items():
        row[column] = fields.timestamp(details.get(api_name))
    for api_name, (column, kind) in _TYPED.items():
        row[column] = fields.typed(details.get(api_name), kind)
    return row


def batch_id_of(details: Mapping[str, Any]) -> str | None:
    """The lowercase batchId of a batch object, if it is a UUID (as the API documents)."""
    value = details.get("batchId")
    if not isinstance(value, str):
        return None
    value = value.lower()
    return value if _UUID.fullmatch(value) else None
