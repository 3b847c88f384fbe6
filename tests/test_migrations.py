"""Alembic owns the schema: migrations and the table definitions must never drift apart."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from etl.load.backends import backend_for
from etl.load.backends.mysql import EXACT_COLLATIONS
from etl.load.database import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from etl.load.schema import metadata
from tests.conftest import rows

CONTRACT_TABLES = {
    "scheduled_batches",
    "scheduled_calls",
    "scheduled_call_media",
    "scheduled_call_data_messages",
    "scheduled_call_metadata",
    "scheduled_call_status_changes",
    "etl_runs",
    "etl_batch_runs",
}


def test_migrated_schema_matches_the_table_definitions(engine: Engine) -> None:
    upgrade_to_head(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == []


def test_contract_tables_and_columns_exist(engine: Engine) -> None:
    upgrade_to_head(engine)
    inspector = inspect(engine)
    assert set(inspector.get_table_names()) >= CONTRACT_TABLES
    call_columns = {c["name"] for c in inspector.get_columns("scheduled_calls")}
    assert {
        "id", "batch_id", "agent_id", "call_key", "call_id", "status", "error", "medium_type",
        "metadata", "template_context", "experimental_settings", "first_seen_at", "updated_at",
        "removed_at",
    } <= call_columns  # fmt: skip
    unique = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("scheduled_calls")}
    assert ("batch_id", "call_key") in unique and ("call_id",) in unique


def test_jsonb_and_timestamptz_on_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL column types")
    upgrade_to_head(engine)
    types = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("scheduled_calls")}
    assert types["metadata"] == "JSONB"
    assert types["first_seen_at"] == "TIMESTAMP"  # SQLAlchemy renders timestamptz so, with:
    columns = inspect(engine).get_columns("scheduled_calls")
    first_seen = next(c for c in columns if c["name"] == "first_seen_at")["type"]
    assert getattr(first_seen, "timezone", None) is True


def test_every_table_and_column_has_its_comment_where_the_database_keeps_them(
    engine: Engine,
) -> None:
    if not engine.dialect.supports_comments:
        pytest.skip("SQLite keeps no comments")
    upgrade_to_head(engine)
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        described = inspector.get_table_comment(table.name)["text"]
        assert described == table.comment and described, table.name
        by_column = {c["name"]: c.get("comment") for c in inspector.get_columns(table.name)}
        assert by_column == {c.name: c.comment for c in table.columns}, table.name
        assert all(by_column.values()), table.name


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    upgrade_to_head(engine)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert current_revision(engine) is None
    assert not CONTRACT_TABLES & set(inspect(engine).get_table_names())
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision()


def test_every_indexed_text_column_compares_exactly_on_mysql(engine: Engine) -> None:
    """Alembic's compare does not look at collations: a key column left in the server's
    default (case- and accent-insensitive) collation would make `Foo` and `foo` one key."""
    if backend_for(engine).name != "mysql":
        pytest.skip("MariaDB/MySQL collations")
    upgrade_to_head(engine)
    found = rows(
        engine,
        "SELECT c.table_name, c.column_name, c.collation_name FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_schema = c.table_schema "
        "AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE' "
        "WHERE c.table_schema = DATABASE() AND c.data_type = 'varchar' "
        "AND c.table_name <> 'alembic_version'",
    )
    assert len(found) > 10
    exact = set(EXACT_COLLATIONS.values())
    assert [tuple(r) for r in found if r.collation_name not in exact] == []
