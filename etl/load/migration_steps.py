"""Migration steps that can be run again: each skips what is already done.

On SQLite and PostgreSQL every pending migration runs in one transaction, so a migration
killed half-way leaves nothing behind. MariaDB and MySQL commit each DDL statement on its own:
a killed migration leaves part of its tables, and without these guards the next run would
stop on "table already exists" for good. Each step here looks first, so the next run finishes
the work instead.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def has_table(name: str) -> bool:
    return _inspector().has_table(name)


def create_table(name: str, *items: Any) -> None:
    """op.create_table, unless the table exists."""
    if not has_table(name):
        op.create_table(name, *items)


def create_index(name: str, table: str, columns: list[str]) -> None:
    """op.create_index, unless the index exists."""
    if name not in {ix["name"] for ix in _inspector().get_indexes(table)}:
        op.create_index(name, table, columns)


def add_columns(table: str, *columns: sa.Column[Any]) -> None:
    """Add the columns the table does not have yet."""
    existing = {c["name"] for c in _inspector().get_columns(table)}
    missing = [c for c in columns if c.name not in existing]
    if missing:
        with op.batch_alter_table(table) as batch_op:
            for column in missing:
                batch_op.add_column(column)


def create_view(name: str, definition: str) -> None:
    """(Re)create a view from its `CREATE VIEW name AS …` text."""
    drop_view(name)
    op.execute(definition)


def drop_view(name: str) -> None:
    op.execute(f"DROP VIEW IF EXISTS {name}")
