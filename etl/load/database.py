"""Database connections and the schema's version: Alembic owns the schema everywhere."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError

from etl.load.backends import (
    Locks,
    UnsupportedDatabase,
    acquire,
    backend_for,
    backends,
    first_line,
    parse_database_url,
    supported_forms,
)

log = logging.getLogger(__name__)

# migrations/ is installed as the package etl.migrations (see pyproject.toml).
MIGRATIONS_DIR = Path(str(importlib.resources.files("etl.migrations")))
SCHEMA_LOCK_WAIT_SECONDS = 300.0


class DatabaseError(Exception):
    """The database cannot be used as configured; the message names it (password masked)."""


class SchemaBehind(DatabaseError):
    """The schema is older than this version of the job and migrating was not allowed."""


class SchemaAhead(DatabaseError):
    """The schema is newer than this version of the job: another, newer version migrated it."""


def open_engine(url: str, *, connections: int = 5) -> Engine:
    """An engine for `url` with the per-connection settings the schema relies on.

    `connections`: how many a run may hold at once (worker threads, lock connections).
    Raises UnsupportedDatabase (a configuration error) for a URL this job cannot use.
    """
    backend, parsed = parse_database_url(url)
    try:
        engine = create_engine(parsed, **backend.engine_options(parsed, connections))
    except (ImportError, NoSuchModuleError) as exc:  # a driver this install does not have
        raise UnsupportedDatabase(
            f"database driver {parsed.drivername!r} is not installed ({exc}); "
            f"expected one of: {supported_forms()}"
        ) from None
    backend.configure(engine)
    return engine


def describe(engine: Engine) -> str:
    """The engine's database as logs show it: one spelling of its URL, password hidden."""
    return backend_for(engine).describe(engine.url)


def locks_for(engine: Engine) -> Locks:
    return backend_for(engine).locks(engine)


def explain(exc: SQLAlchemyError) -> str:
    """A database failure in one line: in plain words where its backend knows the cause
    (disk full, locked, read-only…), else the driver's message without SQL or parameters."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return first_line(exc)
    for backend in backends():
        plain = backend.explain(orig)
        if plain is not None:
            return plain
    return first_line(orig)


def alembic_config() -> AlembicConfig:
    """Alembic's configuration; migrations always run on a connection passed to them."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str | None:
    return _script().get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def reporting_connection_errors(engine: Engine) -> Iterator[None]:
    """Turn a database failure into a DatabaseError naming the (masked) URL, in one line."""
    try:
        yield
    except DBAPIError as exc:
        raise DatabaseError(f"{describe(engine)}: {explain(exc)}") from None


def _check_not_ahead(engine: Engine, current: str | None) -> None:
    if current is None:
        return
    known = {rev.revision for rev in _script().walk_revisions()}
    if current not in known:
        raise SchemaAhead(
            f"the schema of {describe(engine)} is newer than this version of ultravox-etl "
            f"(it is at revision {current}; this version knows up to {head_revision()}): "
            "run the newer version that migrated it, or upgrade ultravox-etl"
        )


def upgrade_to_head(engine: Engine) -> None:
    """Apply every pending migration in one transaction, one process at a time.

    Runs started together on a new database would each create the tables and all but one
    fail ("relation already exists"); under the lock "schema" the others wait, then find
    the schema at head.
    """
    with reporting_connection_errors(engine):
        current = current_revision(engine)
        _check_not_ahead(engine, current)
        if current == head_revision():
            log.debug("schema of %s is at head", describe(engine))
            return
        lock = acquire(locks_for(engine), "schema", SCHEMA_LOCK_WAIT_SECONDS)
        if lock is None:
            raise DatabaseError(
                f"{describe(engine)}: another process has been migrating the schema for "
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
    log.info("migrated %s from %s to %s", describe(engine), before or "empty", head)


def require_head(engine: Engine) -> None:
    """Raise SchemaBehind unless the schema is exactly at this version's head.

    A database that connecting would create (a SQLite file that does not exist) is refused
    before connecting.
    """
    if backend_for(engine).database_missing(engine.url):
        raise SchemaBehind(
            f"{describe(engine)} does not exist; run `ultravox-etl migrate` or drop --no-migrate"
        )
    with reporting_connection_errors(engine):
        current, head = current_revision(engine), head_revision()
        _check_not_ahead(engine, current)
    if current != head:
        raise SchemaBehind(
            f"the schema of {describe(engine)} is at {current or 'no revision'}, "
            f"this version needs {head}; run `ultravox-etl migrate` or drop --no-migrate"
        )
