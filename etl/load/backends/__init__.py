"""One module per database, behind one small interface: everything that differs lives there.

A backend says which URLs are its own and picks the driver, sets up each connection, gives
the column types their database form, writes rows set-based (COPY, executemany, multi-row
statements), and takes named locks. Nothing outside `etl.load.backends` names a dialect.

Adding a database: a module here with a `Backend` subclass, listed in `BACKENDS`, and its
settings in the test fixtures (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import quote

import orjson
from sqlalchemy import Connection, Engine, Table
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeEngine

from etl.config import ConfigError

Row = Sequence[Any]


class UnsupportedDatabase(ConfigError):
    """A database URL this job cannot use; the message names the supported forms."""


# -- named locks ------------------------------------------------------------------------------


class Lock(Protocol):
    def release(self) -> None:
        """Give the lock back; a lock already lost with its connection is not an error."""


class Locks(Protocol):
    """Named locks that one process holds while it works and loses when it ends."""

    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        """The lock if it was free, else None; never waits. Holds a connection of its own.

        `disposable`: the name will not be locked again once released (a run's own lock),
        so whatever stands behind it (a file) can go.
        """
        ...

    def try_acquire_on(self, conn: Connection, name: str) -> Lock | None:
        """The lock, held by `conn` (whose writes then stop when the lock is lost with it),
        if it was free; else None. Never waits."""
        ...


LOCK_POLL_SECONDS = 0.2


def acquire(
    locks: Locks,
    name: str,
    wait_seconds: float,
    *,
    conn: Connection | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Lock | None:
    """Wait up to `wait_seconds` for `name` (held by `conn` if given); None if it stayed taken."""
    deadline = monotonic() + wait_seconds
    while True:
        lock = locks.try_acquire(name) if conn is None else locks.try_acquire_on(conn, name)
        if lock is not None:
            return lock
        remaining = deadline - monotonic()
        if remaining <= 0:
            return None
        sleep(min(LOCK_POLL_SECONDS, remaining))


def lock_key(name: str) -> int:
    """A signed 64-bit number for a lock name, stable across processes and versions."""
    digest = hashlib.sha256(f"ultravox-etl:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _FileLock:
    def __init__(self, fd: int, path: Path | None) -> None:
        self._fd = fd
        self._path = path

    def release(self) -> None:
        try:
            if self._path is not None:
                # Removed while still held: nobody can be waiting on this name's file.
                self._path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)


class FileLocks:
    """`flock` on one small file per name in a folder: the kernel drops it when the process
    dies. For a database file that every process of one machine opens (SQLite)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        # Files of names locked again and again (batches) are kept: removing one could let
        # two processes lock two different files under the same name.
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name.replace(':', '-')}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return _FileLock(fd, path if disposable else None)

    def try_acquire_on(self, conn: Connection, name: str) -> Lock | None:
        return self.try_acquire(name)


class _NoLock:
    def release(self) -> None:
        return None


class ProcessLocalLocks:
    """For a database only this process can see (an in-memory SQLite database)."""

    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        return _NoLock()

    def try_acquire_on(self, conn: Connection, name: str) -> Lock | None:
        return _NoLock()


class SessionLock:
    """A lock held by a database session: it lasts as long as the session's connection."""

    def __init__(
        self, conn: Connection, unlock: Callable[[Connection], object], *, owns_conn: bool
    ) -> None:
        self._conn = conn
        self._unlock = unlock
        self._owns_conn = owns_conn

    def release(self) -> None:
        try:
            self._unlock(self._conn)
            self._conn.commit()
        except DBAPIError:
            # The connection (and with it the lock) is already gone: the database dropped
            # it. Whoever used it has been told by its own failed statement.
            with contextlib.suppress(DBAPIError):
                self._conn.rollback()
        finally:
            if self._owns_conn:
                with contextlib.suppress(DBAPIError):
                    self._conn.close()


class SessionLocks:
    """Locks held by database sessions (PostgreSQL advisory locks, MySQL GET_LOCK)."""

    def __init__(
        self,
        engine: Engine,
        try_lock: Callable[[Connection, str], bool],
        unlock: Callable[[Connection, str], object],
    ) -> None:
        self.engine = engine
        self._try_lock = try_lock
        self._unlock = unlock

    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        conn = self.engine.connect()
        try:
            lock = self._lock(conn, name, owns_conn=True)
        except BaseException:
            conn.close()
            raise
        if lock is None:
            conn.close()
        return lock

    def try_acquire_on(self, conn: Connection, name: str) -> Lock | None:
        return self._lock(conn, name, owns_conn=False)

    def _lock(self, conn: Connection, name: str, *, owns_conn: bool) -> Lock | None:
        got = self._try_lock(conn, name)
        conn.commit()
        if not got:
            return None
        return SessionLock(conn, lambda c: self._unlock(c, name), owns_conn=owns_conn)


# -- set-based writes -----------------------------------------------------------------------


def json_text(value: Any) -> str | None:
    """A JSON column's value as JSON text (None stays SQL NULL).

    orjson where it can write the value; the json module for integers beyond 64 bits.
    """
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def matching(
    where: Mapping[str, Any], column: Callable[[str], str], mark: str
) -> tuple[str, list[Any]]:
    """The conditions of a `where` mapping as SQL ("… AND " after each) and their
    parameters: a column equals its value, or IS NULL where the value is None."""
    sql = "".join(
        f"{column(c)} IS NULL AND " if v is None else f"{column(c)} = {mark} AND "
        for c, v in where.items()
    )
    return sql, [v for v in where.values() if v is not None]


class Bulk:
    """Set-based statements on the driver connection under a SQLAlchemy connection, inside
    its current transaction. Values go in already in the database's form (`timestamp`,
    `json_text`): SQLAlchemy's type processing is skipped on this path.

    Table and column names come from the schema (never from data) and every value is bound,
    hence the `noqa: S608` on the statements the backends build.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.raw: Any = conn.connection.driver_connection

    def timestamp(self, value: datetime) -> Any:
        """An aware datetime as the driver takes it for a UtcDateTime column."""
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def decimal(self, value: Decimal) -> Any:
        """An exact number as the driver takes it for a Numeric column."""
        return value

    def select_in(
        self,
        table: Table,
        columns: Sequence[str],
        where: Mapping[str, Any],
        in_column: str,
        values: Sequence[Any],
    ) -> list[tuple[Any, ...]]:
        """Rows of `columns` where every `where` column equals its value (is NULL for None)
        and `in_column` is one of `values`."""
        raise NotImplementedError

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[Row]) -> None:
        """Insert rows (values in `columns` order)."""
        raise NotImplementedError

    def insert_with_ids(
        self, table: Table, columns: Sequence[str], rows: Sequence[Row], *, key: Sequence[str]
    ) -> list[int]:
        """Insert new rows into a table with an integer `id`; their ids, in row order.

        `key`: columns (of `columns`) unique for the table, for a backend that has to read
        the ids back.
        """
        raise NotImplementedError

    def update_rows(
        self, table: Table, key: str, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        """Update existing rows: each row is its `key` column's value, then the values of
        `columns`."""
        raise NotImplementedError

    def delete_in(self, table: Table, column: str, values: Sequence[Any]) -> None:
        raise NotImplementedError

    def select_ids(
        self, table: Table, id_column: str, where: Mapping[str, Any], null_column: str
    ) -> Iterator[Any]:
        """The ids of the rows matching `where` whose `null_column` is NULL, streamed."""
        raise NotImplementedError

    def update_in(
        self, table: Table, values: Mapping[str, Any], column: str, keys: Sequence[Any]
    ) -> None:
        """UPDATE … SET values WHERE column is one of `keys`."""
        raise NotImplementedError


# -- the backend ------------------------------------------------------------------------------


class AirflowConnection(Protocol):
    """The fields of an Airflow Connection a backend builds its database URL from."""

    conn_type: str | None
    host: str | None
    schema: str | None
    login: str | None
    password: str | None
    port: int | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


class Backend:
    """What a database does its own way. One subclass per database, one instance each."""

    name: ClassVar[str]
    """The backend's name in messages and test ids: sqlite, postgresql, mysql."""
    dialects: ClassVar[tuple[str, ...]]
    """SQLAlchemy dialect names this backend serves."""
    url_forms: ClassVar[tuple[str, ...]]
    """Example URLs for messages (the supported forms)."""
    naive_timestamps: ClassVar[bool] = False
    """True where a timestamp column has no time zone: values are stored as naive UTC."""
    json_type: ClassVar[TypeEngine[Any] | None] = None
    """The JSON column type, where it is not SQLAlchemy's generic JSON."""
    timestamp_type: ClassVar[TypeEngine[Any] | None] = None
    """The timestamp column type, where `DateTime(timezone=True)` is not the right one."""
    airflow_connection_types: ClassVar[tuple[str, ...]] = ()
    """The Airflow Connection types (`conn_type`) this backend builds a URL from."""

    def key_type(self, length: int) -> TypeEngine[Any] | None:
        """The type of text that is part of a key or an index, of at most `length`
        characters, where plain TEXT cannot be indexed."""
        return None

    def text_type(self) -> TypeEngine[Any] | None:
        """The type of unbounded text, where plain TEXT is not the right one."""
        return None

    def accepts(self, url: URL) -> bool:
        return url.get_backend_name() in self.dialects

    def driver_url(self, url: URL) -> URL:
        """The URL with the driver this project installs, unless the user named one."""
        return url

    def engine_options(self, url: URL, connections: int) -> dict[str, Any]:
        return {}

    def configure(self, engine: Engine) -> None:
        """Per-connection settings the schema relies on."""

    def locks(self, engine: Engine) -> Locks:
        raise NotImplementedError

    def bulk(self, conn: Connection) -> Bulk:
        raise NotImplementedError

    def upsert(self, table: Table, *, key: Sequence[str], update: Sequence[str]) -> Insert:
        """INSERT … or, where a row with the same `key` exists, UPDATE its `update` columns
        to the new values; with no `update` columns, leave that row alone."""
        raise NotImplementedError

    def database_missing(self, url: URL) -> bool:
        """Whether connecting would create the database (a SQLite file that does not exist)."""
        return False

    def describe(self, url: URL) -> str:
        """The URL as logs show it: one spelling, the password hidden."""
        return masked(url)

    def explain(self, error: BaseException) -> str | None:
        """A driver error of this database in plain words (what an operator can act on),
        or None to let its own first line stand."""
        return None

    def url_from_connection(self, conn: AirflowConnection) -> URL | None:
        """The database URL of an Airflow Connection of one of this backend's
        `airflow_connection_types`; None for a Connection of another type."""
        if (conn.conn_type or "").lower() not in self.airflow_connection_types:
            return None
        return self.connection_url(conn)

    def connection_url(self, conn: AirflowConnection) -> URL:
        """The URL from the Connection's fields (its type is one of this backend's)."""
        raise NotImplementedError


def first_line(error: BaseException) -> str:
    """An error's message without the SQL, parameters or hints that follow it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def driver_errors_translated(conn: Connection) -> Iterator[None]:
    """Bulk statements go to the driver directly; their errors become SQLAlchemy's
    DBAPIError, like every other statement's, so callers handle one kind."""
    base = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except base as exc:
        raise DBAPIError.instance(None, None, exc, base) from exc


# -- choosing a backend -----------------------------------------------------------------------


def _registered() -> tuple[Backend, ...]:
    from etl.load.backends.mysql import MysqlBackend
    from etl.load.backends.postgres import PostgresBackend
    from etl.load.backends.sqlite import SqliteBackend

    return (SqliteBackend(), PostgresBackend(), MysqlBackend())


@functools.cache
def backends() -> tuple[Backend, ...]:
    """Every supported database's backend (imported on first use: each names its driver)."""
    return _registered()


def supported_forms() -> str:
    return ", ".join(form for b in backends() for form in b.url_forms)


def parse_database_url(url: str | URL) -> tuple[Backend, URL]:
    """The backend for a database URL and the URL with its driver chosen.

    Raises UnsupportedDatabase for a URL that does not parse or a database (or driver) this
    job does not support; the message names the supported forms and never the password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UnsupportedDatabase(
            f"database URL is not valid; expected one of: {supported_forms()}"
        ) from None
    for backend in backends():
        if backend.accepts(parsed):
            return backend, backend.driver_url(parsed)
    raise UnsupportedDatabase(
        f"database {parsed.drivername!r} is not supported; expected one of: {supported_forms()}"
    )


def backend_for(bind: Engine | Connection) -> Backend:
    """The backend of an engine or connection made by `etl.load.database.open_engine`."""
    return backend_for_dialect(bind.dialect.name)


def backend_for_dialect(dialect_name: str) -> Backend:
    for backend in backends():
        if dialect_name in backend.dialects:
            return backend
    raise UnsupportedDatabase(f"database {dialect_name!r} is not supported")


_HIDDEN = "***"
_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "sslpassword", "secret", "token")


def masked(url: URL | str) -> str:
    """The URL with every password it can carry hidden: user info and query parameters."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<database URL that does not parse>"
    hidden = {
        key: _HIDDEN for key in parsed.query if key.lower() in _SECRET_QUERY_KEYS or "pass" in key
    }
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    # The query is rendered %-escaped: `password=***`, not `password=%2A%2A%2A`.
    return parsed.render_as_string(hide_password=True).replace(quote(_HIDDEN, safe=""), _HIDDEN)
