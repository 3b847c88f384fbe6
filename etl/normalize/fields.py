"""Pure readers of single API fields: timestamps, durations, typed values.

Each returns None for an absent value or one of the wrong type or form; the callers keep
what a column cannot hold in their `extra` JSON, so nothing the API sends is lost.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

_DURATION = re.compile(r"(-?[0-9]+(?:\.[0-9]{1,9})?)s")
"""A protobuf Duration in JSON: seconds with up to nine decimals and an "s", e.g. "123.456s"."""


def timestamp(value: Any) -> datetime | None:
    """An ISO-8601 timestamp as an aware UTC datetime (no zone given: UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def duration_seconds(value: Any) -> Decimal | None:
    """A duration such as "123.456s" as exact seconds."""
    if not isinstance(value, str):
        return None
    match = _DURATION.fullmatch(value)
    return Decimal(match[1]) if match else None


def typed(value: Any, kind: type) -> Any:
    """`value` if it is of `kind` (a bool is not an int here), else None."""
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    return None
