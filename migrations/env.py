"""Alembic environment: runs migrations on the connection that etl.load.database passes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from etl.load.schema import metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
        # Where DDL commits on its own (MySQL), each finished revision is stamped at once, so
        # a killed upgrade resumes from the revision it was in (see etl/load/migration_steps.py).
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError("migrations run through `ultravox-etl migrate` (or `sync`), on a connection")
run_migrations(connection)
