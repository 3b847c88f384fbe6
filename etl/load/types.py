"""The column types of the reporting schema, each in its form on every supported database.

The schema (etl.load.schema) and the migrations use these; each backend module says what its
database needs (`json_type`, `key_type`, `timestamp_type`), so nothing here names a dialect.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from etl.load.backends import Backend, backend_for_dialect, backends


def _with_variants(
    base: TypeEngine[Any], variant_of: Callable[[Backend], TypeEngine[Any] | None]
) -> TypeEngine[Any]:
    """`base`, in the form each backend gives it where it gives one."""
    for backend in backends():
        variant = variant_of(backend)
        if variant is not None:
            base = base.with_variant(variant, *backend.dialects)
    return base


JsonDocument = _with_variants(JSON(none_as_null=True), lambda backend: backend.json_type)
"""A JSON value as sent by the API; Python None is SQL NULL, not JSON 'null'."""


def key_text(length: int) -> TypeEngine[Any]:
    """Text that is part of a key or an index (ids, call keys, statuses, names): TEXT, or
    the backend's bounded type where TEXT cannot be indexed. The normalizers never hand such
    a column a longer value (see etl.domain's limits)."""
    return _with_variants(Text(), lambda backend: backend.key_type(length))


LongText = _with_variants(Text(), lambda backend: backend.text_type())
"""Text of any length (errors, summaries, metadata values, records): TEXT, or the backend's
type where TEXT is too short."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        special = backend_for_dialect(dialect.name).timestamp_type
        return dialect.type_descriptor(special if special is not None else self.impl)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # Where the column has no time zone: store naive UTC, re-attach UTC when reading.
        naive = backend_for_dialect(dialect.name).naive_timestamps
        return value.replace(tzinfo=None) if naive else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
