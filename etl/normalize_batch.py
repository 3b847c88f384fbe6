"""Pure functions from Ultravox ScheduledCallBatch objects to scheduled_batches columns.

The batch's `webhookSecret` is a secret: it is never part of any row.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

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


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime; None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def batch_details_row(details: Mapping[str, Any]) -> dict[str, Any]:
    """The detail columns of scheduled_batches; a field of the wrong type becomes NULL."""
    row: dict[str, Any] = {}
    for api_name, column in _TIMESTAMPS.items():
        row[column] = parse_timestamp(details.get(api_name))
    for api_name, (column, kind) in _TYPED.items():
        value = details.get(api_name)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        row[column] = value if ok else None
    return row


def batch_id_of(details: Mapping[str, Any]) -> str | None:
    """The lowercase batchId of a batch object, if it has a usable one."""
    value = details.get("batchId")
    return value.lower() if isinstance(value, str) and value else None
