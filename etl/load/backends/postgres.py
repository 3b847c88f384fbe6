"""PostgreSQL, the production database, through psycopg 3.

- A plain `postgresql://` URL gets psycopg 3, the driver this project installs.
- JSON columns are JSONB, timestamps TIMESTAMPTZ.
- Locks are session-level advisory locks: the server drops them with their connection, so a
  SIGKILLed run releases them; a batch's lock is held by the connection that writes it.
- Bulk writes are COPY: straight into the table for new rows (ids drawn from the table's
  sequence first), into a temporary staging table followed by one UPDATE … FROM for changed
  rows; key lookups probe the unique index once per key.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL
from sqlalchemy.sql.dml import Insert

from etl.load.backends import (
    AirflowConnection,
    Backend,
    Bulk,
    Locks,
    Row,
    SessionLocks,
    first_line,
    lock_key,
    matching,
    quoted,
)

_PLAIN_CAUSES = {
    "25006": "the database is read-only",  # read_only_sql_transaction
    "53100": "disk full on the database server",  # disk_full
}
"""SQLSTATEs whose server text does not say plainly what is wrong (it follows in brackets)."""
_LIBPQ_EXTRAS = (
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "application_name",
    "connect_timeout",
    "options",
    "target_session_attrs",
)
"""Airflow Connection extras that are libpq settings; the others (Airflow's own) are not."""


class PostgresBackend(Backend):
    name = "postgresql"
    dialects = ("postgresql",)
    url_forms = ("postgresql://user:password@host:5432/dbname",)
    json_type = postgresql.JSONB(none_as_null=True)
    airflow_connection_types = ("postgres", "postgresql")

    def accepts(self, url: URL) -> bool:
        # psycopg 3 is what the project installs; another driver would fail to import.
        return url.drivername in ("postgresql", "postgres", "postgresql+psycopg")

    def driver_url(self, url: URL) -> URL:
        return url.set(drivername="postgresql+psycopg")

    def engine_options(self, url: URL, connections: int) -> dict[str, Any]:
        return {"pool_size": connections, "max_overflow": connections, "pool_pre_ping": True}

    def locks(self, engine: Engine) -> Locks:
        return SessionLocks(engine, _try_lock, _unlock)

    def bulk(self, conn: Connection) -> Bulk:
        return PostgresBulk(conn)

    def upsert(self, table: Table, *, key: Sequence[str], update: Sequence[str]) -> Insert:
        stmt = postgresql.insert(table)
        if not update:
            return stmt.on_conflict_do_nothing(index_elements=list(key))
        return stmt.on_conflict_do_update(
            index_elements=list(key), set_={c: stmt.excluded[c] for c in update}
        )

    def describe(self, url: URL) -> str:
        return super().describe(url.set(drivername="postgresql"))

    def explain(self, error: BaseException) -> str | None:
        if not type(error).__module__.startswith("psycopg"):
            return None
        plain = _PLAIN_CAUSES.get(str(getattr(error, "sqlstate", None)))
        return None if plain is None else f"{plain} ({first_line(error)})"

    def connection_url(self, conn: AirflowConnection) -> URL:
        # host, port, login, password, schema (the database) and the libpq extras.
        extras = conn.extra_dejson
        return URL.create(
            "postgresql",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
            query={k: str(extras[k]) for k in _LIBPQ_EXTRAS if extras.get(k) is not None},
        )


def _try_lock(conn: Connection, name: str) -> bool:
    got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)})
    return bool(got.scalar_one())


def _unlock(conn: Connection, name: str) -> object:
    return conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})


class PostgresBulk(Bulk):
    def select_in(
        self,
        table: Table,
        columns: Sequence[str],
        where: Mapping[str, Any],
        in_column: str,
        values: Sequence[Any],
    ) -> list[tuple[Any, ...]]:
        if not values:
            return []
        # One probe of the index per value, whatever the statistics say: `= ANY(…)` let the
        # planner scan every row of the batch instead while statistics were stale (a first
        # sync), which made each page's lookup cost the batch's size. OFFSET 0 keeps the
        # subquery from being flattened into a join it could plan that way.
        value_type = table.c[in_column].type.compile(dialect=self.conn.dialect)
        fixed, given = matching(where, lambda c: f't."{c}"', "%s")
        sql = (
            f"SELECT {', '.join(f't.{c}' for c in quoted(columns).split(', '))} "  # noqa: S608
            f"FROM unnest(%s::{value_type}[]) AS k(v) JOIN LATERAL "
            f'(SELECT * FROM {table.name} AS t WHERE {fixed}t."{in_column}" = k.v OFFSET 0) AS t '
            "ON true"
        )
        with self.raw.cursor() as cur:
            cur.execute(sql, [list(values), *given])
            return list(cur.fetchall())

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> None:
        self._copy(table.name, columns, rows)

    def _copy(self, table_name: str, columns: Sequence[str], rows: Iterable[Row]) -> None:
        with (
            self.raw.cursor() as cur,
            cur.copy(f"COPY {table_name} ({quoted(columns)}) FROM STDIN") as copy,
        ):
            write = copy.write_row
            for row in rows:
                write(row)

    def insert_with_ids(
        self, table: Table, columns: Sequence[str], rows: Sequence[Row], *, key: Sequence[str]
    ) -> list[int]:
        if not rows:
            return []
        # Ids from the table's own sequence, then COPY straight into the table: no staging
        # table, no ON CONFLICT, and the ids are known in row order.
        with self.raw.cursor() as cur:
            cur.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [table.name, len(rows)],
            )
            ids = [int(r[0]) for r in cur.fetchall()]
        self._copy(
            table.name, ("id", *columns), ((i, *row) for i, row in zip(ids, rows, strict=True))
        )
        return ids

    def update_rows(
        self, table: Table, key: str, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        if not rows:
            return
        # One staging table per shape of update, so two shapes never share one.
        stage = f"etl_stage_{table.name}_{zlib.crc32(','.join(columns).encode()):08x}"
        with self.raw.cursor() as cur:
            # Session-local, emptied at every commit; created once per connection. Its
            # columns take their types from the table (JSON text becomes jsonb on COPY).
            cur.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "  # noqa: S608
                f"SELECT {quoted((key, *columns))} FROM {table.name} WITH NO DATA"
            )
            self._copy(stage, (key, *columns), rows)
            assignments = ", ".join(f'"{c}" = s."{c}"' for c in columns)
            cur.execute(
                f"UPDATE {table.name} AS t SET {assignments} "  # noqa: S608
                f'FROM {stage} AS s WHERE t."{key}" = s."{key}"'
            )

    def delete_in(self, table: Table, column: str, values: Sequence[Any]) -> None:
        if values:
            with self.raw.cursor() as cur:
                cur.execute(f'DELETE FROM {table.name} WHERE "{column}" = ANY(%s)', [list(values)])  # noqa: S608

    def select_ids(
        self, table: Table, id_column: str, where: Mapping[str, Any], null_column: str
    ) -> Iterator[Any]:
        conditions = "".join(f'"{c}" = %s AND ' for c in where)
        sql = (
            f'SELECT "{id_column}" FROM {table.name} '  # noqa: S608
            f'WHERE {conditions}"{null_column}" IS NULL'
        )
        # A server-side cursor: memory stays flat however large the batch.
        with self.raw.cursor(name="etl_select_ids") as cur:
            cur.itersize = 20_000
            cur.execute(sql, [*where.values()])
            yield from (row[0] for row in cur)

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
