"""SQLite: the embedded default. One file, one writer at a time, locks as files beside it.

- Every transaction is an explicit `BEGIN IMMEDIATE`, DDL included: the sqlite3 module would
  otherwise commit DDL on its own (a migration killed half-way would leave half a schema),
  and IMMEDIATE takes the write lock up front, so concurrent writers wait (busy timeout)
  instead of failing on a stale snapshot.
- WAL mode with `synchronous = NORMAL`: a power cut can undo only the last commits, which the
  next (idempotent) run writes again.
- Timestamps are naive UTC text; JSON is text; locks are `flock` files in `<file>.locks/`.
- Bulk writes are executemany; ids of new rows are handed out here (max(id) + n), which is
  safe because the transaction holds the database's only write lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, Engine, Table, event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL
from sqlalchemy.sql.dml import Insert

from etl.load.backends import (
    AirflowConnection,
    Backend,
    Bulk,
    FileLocks,
    Locks,
    ProcessLocalLocks,
    Row,
    first_line,
    matching,
    quoted,
)

BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another program's write lock before it fails."""
_KEYS_PER_QUERY = 500
"""Bound values per IN list: far below every SQLite build's variable limit."""


def _in_memory(url: URL) -> bool:
    database = url.database
    return not database or database == ":memory:" or database.startswith("file::memory:")


def _file(url: URL) -> Path:
    """The database file: the path of a `file:` URI filename (`?uri=true`), else as given."""
    database = str(url.database)
    if url.query.get("uri") and database.startswith("file:"):
        return Path(unquote(urlsplit(database).path))
    return Path(database)


class SqliteBackend(Backend):
    name = "sqlite"
    dialects = ("sqlite",)
    url_forms = ("sqlite:///relative/file.db", "sqlite:////absolute/file.db")
    naive_timestamps: ClassVar[bool] = True
    airflow_connection_types = ("sqlite",)

    def configure(self, engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()
            dbapi_connection.isolation_level = None  # we say BEGIN ourselves

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def locks(self, engine: Engine) -> Locks:
        if _in_memory(engine.url):
            return ProcessLocalLocks()
        return FileLocks(Path(f"{_file(engine.url)}.locks"))

    def bulk(self, conn: Connection) -> Bulk:
        return SqliteBulk(conn)

    def upsert(self, table: Table, *, key: Sequence[str], update: Sequence[str]) -> Insert:
        stmt = sqlite.insert(table)
        if not update:
            return stmt.on_conflict_do_nothing(index_elements=list(key))
        return stmt.on_conflict_do_update(
            index_elements=list(key), set_={c: stmt.excluded[c] for c in update}
        )

    def connection_url(self, conn: AirflowConnection) -> URL:
        # Airflow's sqlite Connection keeps the file's path in `host`.
        return URL.create("sqlite", database=conn.host or conn.schema or None)

    def database_missing(self, url: URL) -> bool:
        if url.query.get("uri") or _in_memory(url):
            return False
        return not Path(str(url.database)).exists()

    def explain(self, error: BaseException) -> str | None:
        code = getattr(error, "sqlite_errorcode", None)
        if not isinstance(error, sqlite3.Error) or not isinstance(code, int):
            return None
        primary = code & 0xFF  # the extended code names a variant of the primary one
        if primary == sqlite3.SQLITE_BUSY:
            return f"database is locked by another program (waited {BUSY_TIMEOUT_MS / 1000:g}s)"
        plain = _PLAIN_CAUSES.get(primary)
        return None if plain is None else f"{plain} ({first_line(error)})"


_PLAIN_CAUSES = {
    sqlite3.SQLITE_FULL: "disk full: the database file cannot grow",
    sqlite3.SQLITE_READONLY: "the database file is read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot open the database file (does its folder exist?)",
    sqlite3.SQLITE_CORRUPT: "the database file is damaged",
    sqlite3.SQLITE_NOTADB: "the file is not a SQLite database",
    sqlite3.SQLITE_IOERR: "the disk failed to read or write the database file",
}
"""Primary result codes an operator can act on, in plain words (the driver's text follows)."""


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _KEYS_PER_QUERY):
        yield values[start : start + _KEYS_PER_QUERY]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class SqliteBulk(Bulk):
    def decimal(self, value: Decimal) -> Any:
        # SQLite has no exact decimal: a NUMERIC column stores a double (what SQLAlchemy's
        # Numeric does on SQLite too), which keeps durations to well under a microsecond.
        return float(value)

    def timestamp(self, value: datetime) -> Any:
        # What SQLAlchemy's SQLite DATETIME writes for UtcDateTime: naive UTC text.
        return super().timestamp(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def select_in(
        self,
        table: Table,
        columns: Sequence[str],
        where: Mapping[str, Any],
        in_column: str,
        values: Sequence[Any],
    ) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        fixed, given = matching(where, lambda c: f'"{c}"', "?")
        cur = self.raw.cursor()
        try:
            for chunk in _chunks(values):
                cur.execute(
                    f"SELECT {quoted(columns)} FROM {table.name} "  # noqa: S608
                    f'WHERE {fixed}"{in_column}" IN ({_marks(len(chunk))})',
                    [*given, *chunk],
                )
                found.extend(cur.fetchall())
        finally:
            cur.close()
        return found

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> None:
        cur = self.raw.cursor()
        try:
            cur.executemany(
                f"INSERT INTO {table.name} ({quoted(columns)}) VALUES ({_marks(len(columns))})",  # noqa: S608
                rows,
            )
        finally:
            cur.close()

    def insert_with_ids(
        self, table: Table, columns: Sequence[str], rows: Sequence[Row], *, key: Sequence[str]
    ) -> list[int]:
        if not rows:
            return []
        cur = self.raw.cursor()
        try:
            cur.execute(f"SELECT coalesce(max(id), 0) FROM {table.name}")  # noqa: S608
            first = int(cur.fetchone()[0]) + 1
        finally:
            cur.close()
        ids = list(range(first, first + len(rows)))
        self.insert(table, ("id", *columns), ((i, *row) for i, row in zip(ids, rows, strict=True)))
        return ids

    def update_rows(
        self, table: Table, key: str, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        assignments = ", ".join(f'"{c}" = ?' for c in columns)
        cur = self.raw.cursor()
        try:
            cur.executemany(
                f'UPDATE {table.name} SET {assignments} WHERE "{key}" = ?',  # noqa: S608
                ((*row[1:], row[0]) for row in rows),
            )
        finally:
            cur.close()

    def delete_in(self, table: Table, column: str, values: Sequence[Any]) -> None:
        cur = self.raw.cursor()
        try:
            for chunk in _chunks(values):
                cur.execute(
                    f'DELETE FROM {table.name} WHERE "{column}" IN ({_marks(len(chunk))})',  # noqa: S608
                    chunk,
                )
        finally:
            cur.close()

    def select_ids(
        self, table: Table, id_column: str, where: Mapping[str, Any], null_column: str
    ) -> Iterator[Any]:
        conditions = "".join(f'"{c}" = ? AND ' for c in where)
        cur = self.raw.cursor()
        try:
            cur.execute(
                f'SELECT "{id_column}" FROM {table.name} '  # noqa: S608
                f'WHERE {conditions}"{null_column}" IS NULL',
                [*where.values()],
            )
            yield from (row[0] for row in cur)
        finally:
            cur.close()

    def update_in(
        self, table: Table, values: Mapping[str, Any], column: str, keys: Sequence[Any]
    ) -> None:
        assignments = ", ".join(f'"{c}" = ?' for c in values)
        cur = self.raw.cursor()
        try:
            for chunk in _chunks(keys):
                cur.execute(
                    f"UPDATE {table.name} SET {assignments} "  # noqa: S608
                    f'WHERE "{column}" IN ({_marks(len(chunk))})',
                    [*values.values(), *chunk],
                )
        finally:
            cur.close()
