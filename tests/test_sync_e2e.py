"""End to end: the real CLI against the fake API over HTTP, into SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, text

from etl.fake_api import ALL_MEDIUM_KEYS, FakeBatch, FakeUltravox, generate_calls
from etl.load.backends import backend_for
from tests.conftest import AGENT_ID, rows, write_config

# scheduled_batches is left out: its last_synced_at moves with every complete listing.
TABLES = (
    "scheduled_calls",
    "scheduled_call_media",
    "scheduled_call_data_messages",
    "scheduled_call_metadata",
    "scheduled_call_status_changes",
)


def add_generated_batch(
    fake: FakeUltravox, size: int, *, seed: int = 0, off_spec: bool = False
) -> FakeBatch:
    """A batch of generated calls; `off_spec` adds null media (see generate_calls)."""
    batch_id = str(uuid.uuid4())
    calls = generate_calls(batch_id, size, seed=seed, off_spec=off_spec)
    return fake.add_batch(AGENT_ID, batch_id, calls)


def expected_medium_type(record: dict[str, Any]) -> str:
    medium = record.get("medium")
    if not medium:
        return "webRtc"
    known = [k for k in medium if k in ALL_MEDIUM_KEYS]
    return str(known[0] if known else next(iter(medium)))


def api_view(fake: FakeUltravox, batch_id: str) -> Counter[tuple[Any, ...]]:
    """What the API holds for a batch, as a multiset of comparable tuples."""
    return Counter(
        (
            call["status"],
            call["callId"],
            call["error"],
            expected_medium_type(call),
            json.dumps(call.get("metadata"), sort_keys=True),
            json.dumps(call.get("templateContext"), sort_keys=True),
        )
        for call in fake.batches[batch_id].calls
    )


def db_view(engine: Engine, batch_id: str) -> Counter[tuple[Any, ...]]:
    result = rows(
        engine,
        "SELECT status, call_id, error, medium_type, metadata, template_context "
        "FROM scheduled_calls WHERE batch_id = :b AND removed_at IS NULL",
        b=batch_id,
    )

    def as_json(value: Any) -> str:
        if isinstance(value, str):  # SQLite hands JSON back as text through text() queries
            value = json.loads(value)
        return json.dumps(value, sort_keys=True)

    return Counter(
        (
            r.status,
            r.call_id,
            r.error,
            r.medium_type,
            as_json(r.metadata),
            as_json(r.template_context),
        )
        for r in result
    )


def snapshot(engine: Engine) -> dict[str, list[Any]]:
    """Every row of the reporting tables, and what proves none was rewritten meanwhile: on
    PostgreSQL each row's version (xmin); elsewhere a count of row writes kept by triggers
    from the first snapshot on (an UPDATE that sets the same values counts too)."""
    if engine.dialect.name == "postgresql":
        version = "xmin::text AS v, "
    else:
        version = ""
        count_row_writes(engine)
    taken = {
        t: sorted(map(tuple, rows(engine, f"SELECT {version}* FROM {t}")), key=str) for t in TABLES
    }
    if not version:
        taken["row writes"] = rows(engine, f"SELECT n FROM {WRITES}")
    return taken


WRITES = "etl_test_row_writes"
_TRIGGER_BODY = {
    "sqlite": "BEGIN UPDATE {writes} SET n = n + 1; END",
    "mysql": "FOR EACH ROW UPDATE {writes} SET n = n + 1",
}


def count_row_writes(engine: Engine) -> None:
    """Triggers that count every INSERT, UPDATE and DELETE of a row of TABLES (once)."""
    if WRITES in inspect(engine).get_table_names():
        return
    body = _TRIGGER_BODY[backend_for(engine).name].format(writes=WRITES)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {WRITES} (n INTEGER NOT NULL)"))
        conn.execute(text(f"INSERT INTO {WRITES} VALUES (0)"))
        for table in TABLES:
            for action in ("INSERT", "UPDATE", "DELETE"):
                conn.execute(
                    text(
                        f"CREATE TRIGGER etl_test_{action.lower()}_{table} "
                        f"AFTER {action} ON {table} {body}"
                    )
                )


def test_sync_of_several_batches_equals_the_api_and_a_rerun_changes_nothing(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # The first batch also holds the off-spec null media the API has been seen sending.
    batches = [
        add_generated_batch(fake_api, size, seed=n, off_spec=n == 0)
        for n, size in enumerate((57, 23, 0))
    ]
    assert any("medium" in c and c["medium"] is None for c in batches[0].calls)
    config = write_config(
        tmp_path / "c.toml",
        fake_api.base_url,
        [(AGENT_ID, b.batch_id) for b in batches],
        database_url=database_url,
    )

    first = run_cli("sync", "--config", str(config))
    assert first.exit_code == 0, first.stderr
    for batch in batches:
        assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert "inserted=57" in first.stdout and "inserted=23" in first.stdout

    before = snapshot(engine)
    second = run_cli("sync", "--config", str(config))
    assert second.exit_code == 0, second.stderr
    assert snapshot(engine) == before
    assert "unchanged=57" in second.stdout and "inserted=0" in second.stdout
    runs = rows(
        engine, "SELECT status, calls_inserted, calls_unchanged FROM etl_runs ORDER BY run_id"
    )
    assert [tuple(r) for r in runs] == [("succeeded", 80, 0), ("succeeded", 0, 80)]


def test_a_snapshot_sees_a_row_rewritten_with_the_same_values(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 5)
    config = write_config(
        tmp_path / "c.toml",
        fake_api.base_url,
        [(AGENT_ID, batch.batch_id)],
        database_url=database_url,
    )
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    before = snapshot(engine)

    with engine.begin() as conn:  # what "no row is rewritten" must catch
        conn.execute(text("UPDATE scheduled_calls SET status = status"))

    assert snapshot(engine) != before
