"""Everything that differs between SQLite and PostgreSQL, in one place.

- JSON columns: JSONB on PostgreSQL, JSON text on SQLite.
- Timestamps: TIMESTAMPTZ on PostgreSQL; on SQLite, UTC text read back as aware datetimes.
- Upsert: INSERT … ON CONFLICT, built with each dialect's own insert construct.
- Connection set-up: SQLite needs foreign keys switched on and a busy timeout.
- Driver: a plain `postgresql://` URL is sent to psycopg 3, the driver this project installs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator

JsonDocument = JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
"""A JSON value as sent by the API; Python None is SQL NULL, not JSON 'null'."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store naive UTC, re-attach UTC when reading.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_database_url(url: str) -> URL:
    """Parse a database URL; choose psycopg 3 for PostgreSQL unless a driver is named."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked(url: URL | str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def configure_engine(engine: Engine) -> None:
    """Per-connection settings the schema relies on."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()


_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def upsert(
    table: Table,
    dialect_name: str,
    *,
    key: Sequence[str],
    update: Sequence[str],
) -> Insert:
    """INSERT … ON CONFLICT (key) DO UPDATE SET update-columns = excluded values.

    With no update columns, conflicting rows are left alone (DO NOTHING). Both dialects'
    insert constructs share this interface.
    """
    insert = _INSERTS.get(dialect_name)
    if insert is None:
        raise NotImplementedError(
            f"database {dialect_name!r} is not supported (SQLite, PostgreSQL)"
        )
    stmt = insert(table)
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=list(key))  # type: ignore[no-any-return]
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=list(key), set_={c: stmt.excluded[c] for c in update}
    )
