"""Everything that differs between SQLite and PostgreSQL, in one place.

- JSON columns: JSONB on PostgreSQL, JSON text on SQLite.
- Timestamps: TIMESTAMPTZ on PostgreSQL; on SQLite, UTC text read back as aware datetimes.
- Upsert: INSERT … ON CONFLICT, built with each dialect's own insert construct.
- Connection set-up: SQLite needs foreign keys switched on and a busy timeout.
- Driver: a plain `postgresql://` URL is sent to psycopg 3, the driver this project installs.
- Bulk writes (:func:`bulk`): the loader's set-based statements on the driver's own connection,
  inside the SQLAlchemy transaction. PostgreSQL: COPY (into the table, or into a temporary
  staging table followed by one INSERT … SELECT … ON CONFLICT), key lookups with
  `= ANY(array)`. SQLite: executemany, lookups with IN in chunks. Values go in already in
  the database's form (:meth:`Bulk.timestamp`, :func:`json_text`): SQLAlchemy's type
  processing is skipped on this path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, DateTime, Engine, Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DBAPIError
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
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: the database can never
        # be corrupted, and a power cut can undo only the last commits, which the next run
        # (idempotent) writes again. FULL spent about a tenth of a SQLite sync in fsync.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()
        # The sqlite3 module begins transactions only before DML and commits DDL on its own,
        # so a migration killed half-way would leave half a schema. Take over: every
        # transaction is an explicit BEGIN IMMEDIATE, DDL included. IMMEDIATE takes the write
        # lock up front, so concurrent writers wait (busy_timeout) instead of failing on a
        # stale snapshot; SQLite has one writer at a time anyway.
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


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


# -- bulk writes -----------------------------------------------------------------------------


def json_text(value: Any) -> str | None:
    """A JSON column's value as JSON text (None stays SQL NULL, as JsonDocument does).

    orjson where it can write the value; the json module for integers beyond 64 bits.
    """
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


Row = Sequence[Any]


class Bulk:
    """Set-based statements on the driver connection under a SQLAlchemy connection.

    Table and column names come from the schema (never from data) and every value is bound,
    hence the `noqa: S608` on the statements built here.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.raw: Any = conn.connection.driver_connection

    def timestamp(self, value: datetime) -> Any:
        """An aware datetime in the form this driver path stores for a UtcDateTime column."""
        raise NotImplementedError

    def select_by_keys(
        self,
        table: Table,
        columns: Sequence[str],
        where: Mapping[str, Any],
        key_column: str,
        keys: Sequence[Any],
    ) -> list[tuple[Any, ...]]:
        """Rows of `columns` where every `where` column equals its value and key in `keys`."""
        raise NotImplementedError

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> None:
        """Insert rows (values in `columns` order)."""
        raise NotImplementedError

    def upsert_returning(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        key: Sequence[str],
        set_: Mapping[str, str],
        returning: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        """INSERT … ON CONFLICT (key) DO UPDATE SET set_; rows of `returning` for every row.

        `set_` maps a column to an SQL expression over `excluded.<column>` and
        `<table>.<column>` (the stored row), which both databases read the same way.
        """
        raise NotImplementedError

    def delete_in(self, table: Table, column: str, values: Sequence[Any]) -> None:
        raise NotImplementedError

    def update_absent(
        self,
        table: Table,
        values: Mapping[str, Any],
        where: Mapping[str, Any],
        *,
        null_column: str,
        id_column: str,
        present: Iterable[int],
    ) -> int:
        """UPDATE … SET values on the rows matching `where` whose `null_column` is NULL and
        whose id is not in `present`. Returns how many rows changed.

        The difference is taken here, not in SQL: an anti-join's plan depends on statistics,
        which are missing while a first sync fills a fresh table (PostgreSQL then chose a
        nested loop, quadratic in the batch's size). Reading the ids is linear, always.
        """
        keep = set(present)
        absent = [i for i in self.select_ids(table, id_column, where, null_column) if i not in keep]
        del keep
        self.update_in(table, values, id_column, absent)
        return len(absent)

    def select_ids(
        self, table: Table, id_column: str, where: Mapping[str, Any], null_column: str
    ) -> Iterable[int]:
        """The ids of the rows matching `where` whose `null_column` is NULL, streamed."""
        raise NotImplementedError

    def update_in(
        self, table: Table, values: Mapping[str, Any], column: str, keys: Sequence[Any]
    ) -> None:
        """UPDATE … SET values WHERE column is one of `keys`."""
        raise NotImplementedError


def _cols(columns: Iterable[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _where(where: Mapping[str, Any], placeholder: str) -> str:
    return " AND ".join(f'"{c}" = {placeholder}' for c in where)


def _upsert_sql(key: Sequence[str], set_: Mapping[str, str]) -> str:
    assignments = ", ".join(f'"{c}" = {expr}' for c, expr in set_.items())
    return f"ON CONFLICT ({_cols(key)}) DO UPDATE SET {assignments}"


class _PostgresBulk(Bulk):
    def timestamp(self, value: datetime) -> Any:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def select_by_keys(
        self,
        table: Table,
        columns: Sequence[str],
        where: Mapping[str, Any],
        key_column: str,
        keys: Sequence[Any],
    ) -> list[tuple[Any, ...]]:
        if not keys:
            return []
        # One probe of the unique index per key, whatever the statistics say: `key = ANY(…)`
        # let the planner scan every row of the batch instead while the table's statistics
        # were stale (a first sync), which made each page's lookup cost the batch's size.
        # LIMIT 1 keeps the subquery from being flattened into a join it could plan that way.
        key_type = table.c[key_column].type.compile(dialect=self.conn.dialect)
        conditions = " AND ".join(filter(None, [_where(where, "%s"), f't."{key_column}" = k.v']))
        sql = (
            f"SELECT {', '.join(f's.{c}' for c in _cols(columns).split(', '))} "  # noqa: S608
            f"FROM unnest(%s::{key_type}[]) AS k(v) CROSS JOIN LATERAL "
            f"(SELECT {_cols(columns)} FROM {table.name} AS t WHERE {conditions} LIMIT 1) AS s"
        )
        with self.raw.cursor() as cur:
            cur.execute(sql, [list(keys), *where.values()])
            return list(cur.fetchall())

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> None:
        self._copy(table.name, columns, rows)

    def _copy(self, table_name: str, columns: Sequence[str], rows: Iterable[Row]) -> None:
        with (
            self.raw.cursor() as cur,
            cur.copy(f"COPY {table_name} ({_cols(columns)}) FROM STDIN") as copy,
        ):
            write = copy.write_row
            for row in rows:
                write(row)

    def upsert_returning(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        key: Sequence[str],
        set_: Mapping[str, str],
        returning: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        if not rows:
            return []
        stage = f"etl_stage_{table.name}"
        with self.raw.cursor() as cur:
            # Session-local, emptied at every commit; created once per connection. Its
            # columns take their types from the table (JSON text becomes jsonb on COPY).
            cur.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "  # noqa: S608
                f"SELECT {_cols(columns)} FROM {table.name} WITH NO DATA"
            )
            self._copy(stage, columns, rows)
            cur.execute(
                f"INSERT INTO {table.name} ({_cols(columns)}) "  # noqa: S608
                f"SELECT {_cols(columns)} FROM {stage} "
                f"{_upsert_sql(key, set_)} RETURNING {_cols(returning)}"
            )
            # The staged rows go at commit (ON COMMIT DELETE ROWS): a TRUNCATE here would
            # give the table a new file on every page.
            return list(cur.fetchall())

    def delete_in(self, table: Table, column: str, values: Sequence[Any]) -> None:
        if values:
            with self.raw.cursor() as cur:
                cur.execute(f'DELETE FROM {table.name} WHERE "{column}" = ANY(%s)', [list(values)])  # noqa: S608

    def select_ids(
        self, table: Table, id_column: str, where: Mapping[str, Any], null_column: str
    ) -> Iterator[int]:
        sql = (
            f'SELECT "{id_column}" FROM {table.name} '  # noqa: S608
            f'WHERE {_where(where, "%s")} AND "{null_column}" IS NULL'
        )
        # A server-side cursor: memory stays flat however large the batch.
        with self.raw.cursor(name="etl_select_ids") as cur:
            cur.itersize = 20_000
            cur.execute(sql, [*where.values()])
            for (row_id,) in cur:
                yield int(row_id)

    def update_in(
        self, table: Table, values: Mapping[str, Any], column: str, keys: Sequence[Any]
    ) -> None:
        if keys:
            assignments = ", ".join(f'"{c}" = %s' for c in values)
            with self.raw.cursor() as cur:
                cur.execute(
                    f'UPDATE {table.name} SET {assignments} WHERE "{column}" = ANY(%s)',  # noqa: S608
                    [*values.values(), list(keys)],
                )


_SQLITE_KEYS_PER_QUERY = 500
"""Bound values per IN list: far below every SQLite build's variable limit."""


class _SqliteBulk(Bulk):
    def timestamp(self, value: datetime) -> Any:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        # What SQLAlchemy's SQLite DATETIME writes for UtcDateTime: naive UTC text.
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def select_by_keys(
        self,
        table: Table,
        columns: Sequence[str],
        where: Mapping[str, Any],
        key_column: str,
        keys: Sequence[Any],
    ) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        cur = self.raw.cursor()
        try:
            for start in range(0, len(keys), _SQLITE_KEYS_PER_QUERY):
                chunk = keys[start : start + _SQLITE_KEYS_PER_QUERY]
                conditions = " AND ".join(
                    filter(
                        None,
                        [
                            _where(where, "?"),
                            f'"{key_column}" IN ({", ".join("?" * len(chunk))})',
                        ],
                    )
                )
                cur.execute(
                    f"SELECT {_cols(columns)} FROM {table.name} WHERE {conditions}",  # noqa: S608
                    [*where.values(), *chunk],
                )
                found.extend(cur.fetchall())
        finally:
            cur.close()
        return found

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> None:
        marks = ", ".join("?" * len(columns))
        cur = self.raw.cursor()
        try:
            cur.executemany(f"INSERT INTO {table.name} ({_cols(columns)}) VALUES ({marks})", rows)  # noqa: S608
        finally:
            cur.close()

    def upsert_returning(
        self,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        *,
        key: Sequence[str],
        set_: Mapping[str, str],
        returning: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        if not rows:
            return []
        marks = ", ".join("?" * len(columns))
        cur = self.raw.cursor()
        try:
            cur.executemany(
                f"INSERT INTO {table.name} ({_cols(columns)}) VALUES ({marks}) "  # noqa: S608
                f"{_upsert_sql(key, set_)}",
                rows,
            )
        finally:
            cur.close()
        # executemany cannot hand back RETURNING rows: read them by key, in this transaction.
        # Every row shares the leading key columns (one batch), so one IN list finds them.
        lead = {k: columns.index(k) for k in key[:-1]}
        last = columns.index(key[-1])
        first = rows[0]
        if any(row[p] != first[p] for row in rows for p in lead.values()):
            raise ValueError("rows of one upsert must share all key columns but the last")
        fixed = {k: first[p] for k, p in lead.items()}
        return self.select_by_keys(table, returning, fixed, key[-1], [row[last] for row in rows])

    def delete_in(self, table: Table, column: str, values: Sequence[Any]) -> None:
        cur = self.raw.cursor()
        try:
            for start in range(0, len(values), _SQLITE_KEYS_PER_QUERY):
                chunk = values[start : start + _SQLITE_KEYS_PER_QUERY]
                cur.execute(
                    f'DELETE FROM {table.name} WHERE "{column}" IN ({", ".join("?" * len(chunk))})',  # noqa: S608
                    chunk,
                )
        finally:
            cur.close()

    def select_ids(
        self, table: Table, id_column: str, where: Mapping[str, Any], null_column: str
    ) -> Iterator[int]:
        cur = self.raw.cursor()
        try:
            cur.execute(
                f'SELECT "{id_column}" FROM {table.name} '  # noqa: S608
                f'WHERE {_where(where, "?")} AND "{null_column}" IS NULL',
                [*where.values()],
            )
            for (row_id,) in cur:
                yield int(row_id)
        finally:
            cur.close()

    def update_in(
        self, table: Table, values: Mapping[str, Any], column: str, keys: Sequence[Any]
    ) -> None:
        assignments = ", ".join(f'"{c}" = ?' for c in values)
        cur = self.raw.cursor()
        try:
            for start in range(0, len(keys), _SQLITE_KEYS_PER_QUERY):
                chunk = keys[start : start + _SQLITE_KEYS_PER_QUERY]
                cur.execute(
                    f"UPDATE {table.name} SET {assignments} "  # noqa: S608
                    f'WHERE "{column}" IN ({", ".join("?" * len(chunk))})',
                    [*values.values(), *chunk],
                )
        finally:
            cur.close()


_BULK: dict[str, type[Bulk]] = {"postgresql": _PostgresBulk, "sqlite": _SqliteBulk}


@contextmanager
def driver_errors_translated(conn: Connection) -> Iterator[None]:
    """Bulk statements go to the driver directly (COPY, executemany); their errors become
    SQLAlchemy's DBAPIError, like every other statement's, so callers handle one kind."""
    base = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except base as exc:
        raise DBAPIError.instance(None, None, exc, base) from exc


def bulk(conn: Connection) -> Bulk:
    """Bulk statements for this connection's database, inside its current transaction."""
    kind = _BULK.get(conn.dialect.name)
    if kind is None:
        raise NotImplementedError(
            f"database {conn.dialect.name!r} is not supported (SQLite, PostgreSQL)"
        )
    return kind(conn)
