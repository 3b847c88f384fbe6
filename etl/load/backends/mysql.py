"""MariaDB and MySQL, through PyMySQL (pure Python: `pip install` needs no client library).

- URLs: `mysql://`, `mariadb://`, with or without `+pymysql`; the connection speaks utf8mb4.
- Every session: strict SQL mode, UTC (`time_zone = '+00:00'`), READ COMMITTED (PostgreSQL's
  default, and fewer gap locks between batches written at once).
- Types: text that is part of a key is `VARCHAR(n)` (TEXT cannot be indexed), other text
  `MEDIUMTEXT` (TEXT stops at 64 KiB), all `utf8mb4` with a binary collation: the server's
  default collation is case- and accent-insensitive and would make `Foo` and `foo`, or two
  emoji, one key. Timestamps are `DATETIME(6)` holding naive UTC; JSON is JSON (MariaDB keeps
  the text as sent; MySQL 8 stores it binary, and integers beyond 64 bits become doubles).
- Locks: `GET_LOCK` on the connection that writes the batch (server-wide names, so each is
  the digest of the database's name and the lock's: two databases on one server never meet).
- Bulk writes: multi-row INSERT (PyMySQL's executemany), ids of new rows read back by key in
  the same transaction, updates through one joined UPDATE per chunk of rows.
- DDL is not transactional here: Alembic stamps each migration as it finishes, and the
  migrations skip steps already done (see etl/load/migration_steps.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, Table, event, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator, TypeEngine

from etl.load.backends import (
    AirflowConnection,
    Backend,
    Bulk,
    Locks,
    Row,
    SessionLocks,
    matching,
)

CHARSET = "utf8mb4"
COLLATION = "utf8mb4_bin"
"""Binary comparison of unbounded text."""
EXACT_COLLATIONS = {True: "utf8mb4_nopad_bin", False: "utf8mb4_0900_bin"}
"""By server (is it MariaDB?): binary and NO PAD, so that a key and the same key with a
trailing space (two metadata keys, say) are two keys, as on the other databases."""
_ROWS_PER_STATEMENT = 500
"""Rows per IN list or joined UPDATE: well under the 65,535 placeholders of a statement."""
_PLAIN_CAUSES = {
    1142: "the database user may not write here",  # ER_TABLEACCESS_DENIED_ERROR
    1290: "the database is read-only",  # ER_OPTION_PREVENTS_STATEMENT (--read-only)
    1021: "disk full on the database server",  # ER_DISK_FULL
    1114: "disk full on the database server",  # ER_RECORD_FILE_FULL (table full)
}
"""Server error numbers whose text does not say plainly what is wrong (it follows in
brackets)."""
_SESSION = (
    "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION', time_zone = '+00:00', wait_timeout = 86400"
)


class MysqlBackend(Backend):
    name = "mysql"
    dialects = ("mysql", "mariadb")
    url_forms = ("mysql://user:password@host:3306/dbname", "mariadb://user:password@host/dbname")
    naive_timestamps: ClassVar[bool] = True
    bounded_keys: ClassVar[bool] = True
    timestamp_type: ClassVar[TypeEngine[Any] | None] = mysql.DATETIME(fsp=6)
    airflow_connection_types = ("mysql", "mariadb")

    def key_type(self, length: int) -> TypeEngine[Any]:
        return ExactVarchar(length)

    def text_type(self) -> TypeEngine[Any]:
        return mysql.MEDIUMTEXT(charset=CHARSET, collation=COLLATION)

    def accepts(self, url: URL) -> bool:
        return url.drivername in ("mysql", "mariadb", "mysql+pymysql", "mariadb+pymysql")

    def driver_url(self, url: URL) -> URL:
        backend = url.get_backend_name()
        return url.set(drivername=f"{backend}+pymysql").update_query_dict({"charset": CHARSET})

    def engine_options(self, url: URL, connections: int) -> dict[str, Any]:
        return {
            "pool_size": connections,
            "max_overflow": connections,
            "pool_pre_ping": True,
            "pool_recycle": 3600,
            "isolation_level": "READ COMMITTED",
        }

    def configure(self, engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _session(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(_SESSION)
            cursor.close()

    def locks(self, engine: Engine) -> Locks:
        database = engine.url.database or ""
        return SessionLocks(
            engine,
            lambda conn, name: _try_lock(conn, _lock_name(database, name)),
            lambda conn, name: _unlock(conn, _lock_name(database, name)),
        )

    def bulk(self, conn: Connection) -> Bulk:
        return MysqlBulk(conn)

    def upsert(self, table: Table, *, key: Sequence[str], update: Sequence[str]) -> Insert:
        stmt = mysql.insert(table)
        # No DO NOTHING here: assigning a key column to itself changes nothing.
        assignments = {c: stmt.inserted[c] for c in update} or {key[0]: table.c[key[0]]}
        return stmt.on_duplicate_key_update(assignments)

    def describe(self, url: URL) -> str:
        return super().describe(
            url.set(drivername=url.get_backend_name()).difference_update_query(["charset"])
        )

    def connection_url(self, conn: AirflowConnection) -> URL:
        # host, port, login, password, schema (the database), and the one extra of Airflow's
        # MySQL Connection that is a connection setting here; TLS options go in a URI.
        socket = conn.extra_dejson.get("unix_socket")
        return URL.create(
            "mysql",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
            query={"unix_socket": str(socket)} if socket else {},
        )

    def explain(self, error: BaseException) -> str | None:
        if not type(error).__module__.startswith("pymysql"):
            return None
        # PyMySQL's errors are (error number, message): the message alone reads as the
        # other databases' do.
        number, message = (*error.args, None, None)[:2]
        if not isinstance(number, int) or not isinstance(message, str):
            return None
        plain = _PLAIN_CAUSES.get(number)
        return message if plain is None else f"{plain} ({message})"


class ExactVarchar(TypeDecorator[str]):
    """VARCHAR(length) in utf8mb4 with the server's exact collation (EXACT_COLLATIONS), chosen
    when the DDL is written, once the dialect knows which server it talks to."""

    impl = mysql.VARCHAR
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        collation = EXACT_COLLATIONS[bool(getattr(dialect, "is_mariadb", False))]
        return dialect.type_descriptor(
            mysql.VARCHAR(self.length, charset=CHARSET, collation=collation)
        )


def _lock_name(database: str, name: str) -> str:
    """A GET_LOCK name: lowercase, 46 characters (MySQL allows 64), scoped to the database."""
    return "uvetl:" + hashlib.sha256(f"{database}:{name}".encode()).hexdigest()[:40]


def _try_lock(conn: Connection, name: str) -> bool:
    return bool(conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar_one())


def _unlock(conn: Connection, name: str) -> object:
    return conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f"`{c}`" for c in columns)


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _ROWS_PER_STATEMENT):
        yield values[start : start + _ROWS_PER_STATEMENT]


def _marks(count: int) -> str:
    return ", ".join(["%s"] * count)


class MysqlBulk(Bulk):
    def timestamp(self, value: datetime) -> Any:
        return super().timestamp(value).astimezone(UTC).replace(tzinfo=None)

    def select_in(
        self,
        table: Table,
        columns: Sequence[str],
        where: Mapping[str, Any],
        in_column: str,
        values: Sequence[Any],
    ) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        fixed, given = matching(where, lambda c: f"`{c}`", "%s")
        with self.raw.cursor() as cur:
            for chunk in _chunks(values):
                cur.execute(
                    f"SELECT {_quoted(columns)} FROM {table.name} "  # noqa: S608
                    f"WHERE {fixed}`{in_column}` IN ({_marks(len(chunk))})",
                    [*given, *chunk],
                )
                found.extend(cur.fetchall())
        return found

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> None:
        batch = list(rows)
        if batch:
            with self.raw.cursor() as cur:
                # PyMySQL sends this as multi-row INSERTs of up to ~1 MB each.
                cur.executemany(
                    f"INSERT INTO {table.name} ({_quoted(columns)}) "  # noqa: S608
                    f"VALUES ({_marks(len(columns))})",
                    batch,
                )

    def insert_with_ids(
        self, table: Table, columns: Sequence[str], rows: Sequence[Row], *, key: Sequence[str]
    ) -> list[int]:
        if not rows:
            return []
        self.insert(table, columns, rows)
        # MySQL has no RETURNING, and InnoDB may not hand out consecutive ids: read the ids
        # back by key (all rows share the key's leading columns: one batch), in this
        # transaction.
        lead = {k: columns.index(k) for k in key[:-1]}
        last = columns.index(key[-1])
        fixed = {k: rows[0][p] for k, p in lead.items()}
        if any(row[p] != rows[0][p] for row in rows for p in lead.values()):
            raise ValueError("rows read back by key must share all key columns but the last")
        ids = dict(
            self.select_in(table, (key[-1], "id"), fixed, key[-1], [row[last] for row in rows])
        )
        return [int(ids[row[last]]) for row in rows]

    def update_rows(
        self, table: Table, key: str, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        # One UPDATE joined to the new values per chunk: portable to MySQL 8 and MariaDB,
        # and, unlike INSERT … ON DUPLICATE KEY UPDATE, never touches a row by another
        # unique key.
        names = (key, *columns)
        first = ", ".join(f"%s AS `{c}`" for c in names)
        more = ", ".join(["%s"] * len(names))
        assignments = ", ".join(f"t.`{c}` = v.`{c}`" for c in columns)
        with self.raw.cursor() as cur:
            for chunk in _chunks(rows):
                values = " UNION ALL ".join(
                    [f"SELECT {first}", *[f"SELECT {more}"] * (len(chunk) - 1)]
                )
                cur.execute(
                    f"UPDATE {table.name} AS t JOIN ({values}) AS v "  # noqa: S608
                    f"ON t.`{key}` = v.`{key}` SET {assignments}",
                    [value for row in chunk for value in row],
                )

    def delete_in(self, table: Table, column: str, values: Sequence[Any]) -> None:
        with self.raw.cursor() as cur:
            for chunk in _chunks(values):
                cur.execute(
                    f"DELETE FROM {table.name} WHERE `{column}` IN ({_marks(len(chunk))})",  # noqa: S608
                    list(chunk),
                )

    def select_ids(
        self, table: Table, id_column: str, where: Mapping[str, Any], null_column: str
    ) -> Iterator[Any]:
        from pymysql.cursors import SSCursor

        conditions = "".join(f"`{c}` = %s AND " for c in where)
        # Unbuffered: memory stays flat however large the batch; the caller reads every id
        # before it sends the next statement on this connection.
        with self.raw.cursor(SSCursor) as cur:
            cur.execute(
                f"SELECT `{id_column}` FROM {table.name} "  # noqa: S608
                f"WHERE {conditions}`{null_column}` IS NULL",
                [*where.values()],
            )
            yield from (row[0] for row in cur)

    def update_in(
        self, table: Table, values: Mapping[str, Any], column: str, keys: Sequence[Any]
    ) -> None:
        assignments = ", ".join(f"`{c}` = %s" for c in values)
        with self.raw.cursor() as cur:
            for chunk in _chunks(keys):
                cur.execute(
                    f"UPDATE {table.name} SET {assignments} "  # noqa: S608
                    f"WHERE `{column}` IN ({_marks(len(chunk))})",
                    [*values.values(), *chunk],
                )
