"""What the fake puts on the wire: responses, compact JSON, and records served byte for byte.

A listing page is assembled from the JSON text of each record rather than by dumping one
big object, so a test can plant a record whose exact text matters (`RawRecord`): numbers
Python's json writes differently (``1e400``, ``NaN``, integers past 64 bits), nesting
deeper than any decoder's default limit, duplicate keys. The page around it stays
well-formed and its `total` and links stay right.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# DRF's JSONRenderer: no spaces, UTF-8 rather than \u escapes.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as the API renders it."""
    return _ENCODER.encode(obj).encode("utf-8")


def timestamp(moment: datetime) -> str:
    """A UTC time as DRF renders it: microseconds and a 'Z' suffix."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_timestamp() -> str:
    """The current time, rendered as `timestamp` does."""
    return timestamp(datetime.now(UTC))


@dataclass
class FakeResponse:
    """An HTTP response the fake sends: status, body, extra headers, Content-Type."""

    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


def error_response(status: int, detail: str) -> FakeResponse:
    """An error in DRF's shape, ``{"detail": "…"}``."""
    return FakeResponse(status, dumps({"detail": detail}))


class RawRecord(dict[str, Any]):
    """A record served as exactly the bytes `raw`, whatever they are.

    The dict itself holds the fields the fake reads to filter, count and advance the
    record (`status`, `callId`); `raw` is what goes on the wire. Changing the record through
    the fake (set_call, advance) replaces it with a plain dict, dropping the raw text.
    """

    def __init__(self, raw: bytes, fields: Mapping[str, Any]) -> None:
        super().__init__(fields)
        self.raw = raw


def parse_object(raw: bytes) -> dict[str, Any] | None:
    """The JSON object `raw` holds, or None if Python cannot read it as one.

    Texts made to defeat parsers (2,000 levels deep, a 5,000-digit integer) give None.
    """
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record's JSON text: its raw bytes if it has them, else compact JSON."""
    return record.raw if isinstance(record, RawRecord) else dumps(record)


def page_body(
    results: Iterable[bytes], next_link: str | None, previous_link: str | None, total: int
) -> bytes:
    """A DRF cursor page (``results``, ``next``, ``previous``, ``total``, in that order)."""
    return b"".join(
        (
            b'{"results":[',
            b",".join(results),
            b'],"next":',
            dumps(next_link),
            b',"previous":',
            dumps(previous_link),
            b',"total":',
            dumps(total),
            b"}",
        )
    )
