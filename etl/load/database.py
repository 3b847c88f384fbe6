"""Database connections and the schema's version: Alembic owns the schema everywhere."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import ArgumentError, DBAPIError

from etl.load.dialect import configure_engine, masked, normalize_database_url
from etl.load.locks import acquire, locks_for

log = logging.getLogger(__name__)

# migrations/ is installed as the package etl.migrations (see pyproject.toml).
MIGRATIONS_DIR = Path(str(importlib.resources.files("etl.migrations")))


class DatabaseError(Exception):
    """The database cannot be used as configured; the message names it (password masked)."""


class SchemaBehind(DatabaseError):
    """The schema is older than this version of the job and migrating was not allowed."""


def open_engine(url: str, *, connections: int = 5) -> Engine:
    """An engine for `url` with the per-connection settings the schema relies on.

    `connections`: how many a run may hold at once (worker threads, lock connections).
    """
    try:
        parsed = normalize_database_url(url)
    except ArgumentError:
        raise DatabaseError("database URL is not valid (expected e.g. sqlite:///file.db)") from None
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        options = {"pool_size": connections, "max_overflow": connections, "pool_pre_ping": True}
    try:
        engine = create_engine(parsed, **options)
    except Exception as exc:  # an unknown dialect or a missing driver
        raise DatabaseError(f"cannot use database {masked(parsed)}: {exc}") from None
    configure_engine(engine)
    return engine


def alembic_config() -> AlembicConfig:
    """Alembic's configuration; migrations always run on a connection passed to them."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return script.get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def reporting_connection_errors(engine: Engine) -> Iterator[None]:
    """Turn a driver's connection failure into a DatabaseError naming the (masked) URL."""
    try:
        yield
    except DBAPIError as exc:
        if not exc.connection_invalidated and exc.orig is None:
            raise
        first_line = (str(exc.orig).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseError(f"{masked(engine.url)}: {first_line}") from None


SCHEMA_LOCK_WAIT_SECONDS = 300.0


def upgrade_to_head(engine: Engine) -> None:
    """Apply every pending migration in one transaction, one process at a time.

    Runs started together on a new database would each create the tables and all but one
    fail ("relation already exists"); under the lock "schema" the others wait, then find
    the schema at head.
    """
    with reporting_connection_errors(engine):
        if current_revision(engine) == head_revision():
            log.debug("schema of %s is at head", masked(engine.url))
            return
        lock = acquire(locks_for(engine), "schema", SCHEMA_LOCK_WAIT_SECONDS)
        if lock is None:
            raise DatabaseError(
                f"{masked(engine.url)}: another process has been migrating the schema for "
                f"{SCHEMA_LOCK_WAIT_SECONDS:g}s"
            )
        try:
            before, head = current_revision(engine), head_revision()
            if before == head:
                return
            cfg = alembic_config()
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        finally:
            lock.release()
    log.info("migrated %s from %s to %s", masked(engine.url), before or "empty", head)


def require_head(engine: Engine) -> None:
    """Raise SchemaBehind unless the schema is exactly at this version's head.

    A SQLite file that does not exist is refused before connecting, which would create it.
    """
    url = engine.url
    file = url.database if engine.dialect.name == "sqlite" and not url.query.get("uri") else None
    if file and file != ":memory:" and not Path(file).exists():
        raise SchemaBehind(
            f"{masked(url)} does not exist; run `ultravox-etl migrate` or drop --no-migrate"
        )
    with reporting_connection_errors(engine):
        current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaBehind(
            f"the schema of {masked(engine.url)} is at {current or 'no revision'}, "
            f"this version needs {head}; run `ultravox-etl migrate` or drop --no-migrate"
        )
