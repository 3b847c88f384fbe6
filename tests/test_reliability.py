"""Reliability, end to end (issue 9): no batch jammed for good, no failure hidden, no run record
that lies.

One section per item of the issue. Every test drives the real CLI (in this process through
`run_cli`, or as a child process where a kill, a signal or another process is needed) against
the fake Ultravox API over real HTTP, on SQLite and on PostgreSQL; a test that exercises what
only one of them has (advisory locks, a file that cannot grow) says so.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, select, text
from sqlalchemy.engine import make_url

from etl.fake_api import FakeUltravox, ListingOrder
from etl.load.backends import lock_key
from etl.load.backends import sqlite as sqlite_backend
from etl.load.database import describe, head_revision, open_engine
from etl.load.schema import scheduled_call_metadata as metadata
from etl.load.schema import scheduled_calls
from tests.conftest import CliResult, add_batch, rows
from tests.test_hardening import (
    Children,
    api_full_view,
    batch_runs,
    call,
    closed_gate,
    count,
    db_full_view,
    fetch,
    make_config,
    runs,
    summary_line,
    wait_for,
)
from tests.test_locks import start_holder
from tests.test_reporting_views import readme_queries
from tests.test_sync_e2e import add_generated_batch

HEAD = head_revision()
FINAL = ("SUCCESS", "EXPIRED", "ERROR")
WAITING = ("FUTURE", "PENDING")


# -- helpers ----------------------------------------------------------------------------------


def twin(status: str = "FUTURE", call_id: str | None = None, error: str | None = None) -> Any:
    """A scheduled call whose definition (medium, metadata) every twin shares."""
    return {
        "status": status,
        "callId": call_id,
        "error": error,
        "medium": {"twilio": {"outgoing": {"to": "+14155550199", "from": "+14155550100"}}},
        "metadata": {"campaign": "twins"},
    }


def cid(n: int) -> str:
    return f"cccccccc-0000-4000-8000-{n:012d}"


def stored_calls(engine: Engine, batch_id: str) -> list[Any]:
    """The batch's scheduled_calls rows, by id."""
    return rows(
        engine,
        "SELECT id, status, call_id, error, removed_at FROM scheduled_calls "
        "WHERE batch_id = :b ORDER BY id",
        b=batch_id,
    )


def listed_state(engine: Engine, batch_id: str) -> list[tuple[Any, ...]]:
    """(status, call_id, error) of the batch's rows not marked removed, sorted."""
    return sorted(
        (
            (r.status, r.call_id, r.error)
            for r in stored_calls(engine, batch_id)
            if not r.removed_at
        ),
        key=repr,
    )


def api_state(fake: FakeUltravox, batch_id: str) -> list[tuple[Any, ...]]:
    return sorted(
        ((c["status"], c["callId"], c["error"]) for c in fake.batches[batch_id].calls), key=repr
    )


def moved_back(engine: Engine) -> list[Any]:
    """History rows where a call went from a final status back to a waiting one."""
    return rows(
        engine,
        "SELECT scheduled_call_id, from_status, to_status FROM scheduled_call_status_changes "
        f"WHERE from_status IN {FINAL} AND to_status IN {WAITING}",
    )


def ok(result: CliResult) -> CliResult:
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def metric(path: Path, name: str, **labels: str) -> float:
    """One sample of the metrics file."""
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not in {path}")


def fetch_calls(engine: Engine, batch_id: str) -> list[Any]:
    """The batch's scheduled_calls rows, typed (JSON decoded)."""
    c = scheduled_calls.c
    return fetch(engine, select(scheduled_calls).where(c.batch_id == batch_id))


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    """Child processes of the test (the CLI, lock holders); killed if still running."""
    started = Children(tmp_path)
    yield started
    started.close()


def _as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# == 1. Call identity under another listing order ----------------------------------------


def test_twins_keep_their_rows_when_the_api_lists_them_in_another_order(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [twin() for _ in range(6)])
    config = make_config(fake_api, tmp_path, database_url, [batch], page_size=4)
    sync = ("sync", "--config", str(config))
    ok(run_cli(*sync))
    fake_api.set_call(batch.batch_id, 1, status="SUCCESS", call_id=cid(1))
    fake_api.set_call(batch.batch_id, 2, status="PENDING")
    fake_api.set_call(batch.batch_id, 4, status="ERROR", error="SIP 486 Busy Here")
    ok(run_cli(*sync))
    first = {r.call_id: r.id for r in stored_calls(engine, batch.batch_id) if r.call_id}

    steps: list[tuple[ListingOrder, int]] = [
        ("reversed", 0),
        ("shuffled", 1),
        ("shuffled", 2),
        ("shuffled", 3),
    ]
    for n, (order, seed) in enumerate(steps):
        fake_api.set_order(batch.batch_id, order, seed=seed)
        if n == 1:  # calls move on while the order changes
            fake_api.set_call(batch.batch_id, 2, status="SUCCESS", call_id=cid(2))
            fake_api.set_call(batch.batch_id, 5, status="EXPIRED")
        if n == 2:
            fake_api.set_call(batch.batch_id, 0, status="SUCCESS", call_id=cid(3))

        result = ok(run_cli(*sync))

        assert f"batch {batch.batch_id}: succeeded" in result.stdout
        assert listed_state(engine, batch.batch_id) == api_state(fake_api, batch.batch_id)
        stored = stored_calls(engine, batch.batch_id)
        assert len(stored) == 6 and not any(r.removed_at for r in stored)
        by_call_id = {r.call_id: r.id for r in stored if r.call_id}
        assert all(by_call_id[c] == row_id for c, row_id in first.items())
        first.update(by_call_id)
        assert moved_back(engine) == []
    # Nothing changed since the last run: every record is its row, unchanged.
    line = summary_line(batch, ok(run_cli(*sync)).stdout)
    assert "inserted=0 updated=0 unchanged=6 removed=0 rejected=0" in line


def test_the_twin_that_vanishes_from_the_middle_is_the_one_marked_removed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [twin("EXPIRED"), twin("FUTURE"), twin("ERROR", error="busy")])
    config = make_config(fake_api, tmp_path, database_url, [batch])
    sync = ("sync", "--config", str(config))
    ok(run_cli(*sync))
    expired, future, error = stored_calls(engine, batch.batch_id)
    assert (expired.status, future.status, error.status) == ("EXPIRED", "FUTURE", "ERROR")

    fake_api.drop_call(batch.batch_id, 1)
    result = ok(run_cli(*sync))

    assert "removed=1" in summary_line(batch, result.stdout)
    after = {r.id: r for r in stored_calls(engine, batch.batch_id)}
    assert after[future.id].removed_at is not None  # the FUTURE twin, and no other
    assert after[future.id].status == "FUTURE"
    assert (after[error.id].status, after[error.id].removed_at) == ("ERROR", None)
    assert (after[expired.id].status, after[expired.id].removed_at) == ("EXPIRED", None)
    assert moved_back(engine) == []
    line = summary_line(batch, ok(run_cli(*sync)).stdout)
    assert "inserted=0 updated=0 unchanged=2 removed=0" in line


def test_twins_with_call_ids_survive_the_first_one_dropping_out(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # Keyed by their place in the listing (the old code), the second twin took the first's
    # key when the first dropped out, and with it a callId the first still held: "UNIQUE
    # constraint failed: scheduled_calls.call_id", in that run and every later one.
    batch = add_batch(fake_api, [twin("SUCCESS", cid(1)), twin("SUCCESS", cid(2)), twin("FUTURE")])
    config = make_config(fake_api, tmp_path, database_url, [batch])
    sync = ("sync", "--config", str(config))
    ok(run_cli(*sync))
    ids = {r.call_id: r.id for r in stored_calls(engine, batch.batch_id)}

    fake_api.drop_call(batch.batch_id, 0)
    result = ok(run_cli(*sync))

    assert "inserted=0 updated=0 unchanged=2 removed=1" in summary_line(batch, result.stdout)
    after = {r.call_id: r for r in stored_calls(engine, batch.batch_id)}
    assert {c: r.id for c, r in after.items()} == ids
    assert (after[cid(1)].status, after[cid(1)].removed_at is not None) == ("SUCCESS", True)
    assert after[cid(2)].removed_at is None and after[None].removed_at is None
    fake_api.set_order(batch.batch_id, "reversed")
    for _ in range(2):  # in any order, the later runs have nothing to do
        line = summary_line(batch, ok(run_cli(*sync)).stdout)
        assert "inserted=0 updated=0 unchanged=2 removed=0 rejected=0" in line
    assert {r.call_id: r.id for r in stored_calls(engine, batch.batch_id)} == ids
    assert [r.status for r in runs(engine)] == ["succeeded"] * 4
    assert moved_back(engine) == []


def test_a_batch_first_synced_filtered_keeps_its_rows_when_synced_unfiltered(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(
        fake_api,
        [
            twin("FUTURE"),
            twin("ERROR", error="SIP 486 Busy Here"),
            twin("FUTURE"),
            twin("ERROR", cid(7), "Webhook returned HTTP 500"),
        ],
    )
    config = make_config(fake_api, tmp_path, database_url, [batch])
    filtered = tmp_path / "filtered.toml"
    filtered.write_text(config.read_text() + 'statuses = ["ERROR"]\n')
    ok(run_cli("sync", "--config", str(filtered)))
    errors = {r.error: r.id for r in stored_calls(engine, batch.batch_id)}
    assert len(errors) == 2

    for _ in range(2):
        result = ok(run_cli("sync", "--config", str(config)))

        assert f"batch {batch.batch_id}: succeeded" in result.stdout
        assert listed_state(engine, batch.batch_id) == api_state(fake_api, batch.batch_id)
        after = stored_calls(engine, batch.batch_id)
        assert len(after) == 4
        assert {r.error: r.id for r in after if r.status == "ERROR"} == errors
        assert moved_back(engine) == []
    assert "inserted=0 updated=0 unchanged=4" in summary_line(batch, result.stdout)


# == 2. One bad record never jams its batch -----------------------------------------------

DEEP = 2000


def _raw(record: dict[str, Any], **literals: str) -> bytes:
    """The record's JSON text with each "@name@" string replaced by the literal text."""
    text = json.dumps(record)
    for name, literal in literals.items():
        text = text.replace(f'"@{name}@"', literal)
    return text.encode()


def _websocket(tag: str, rate: int) -> dict[str, Any]:
    return {
        **call(tag),
        "medium": {"serverWebSocket": {"inputSampleRate": rate, "outputSampleRate": 8000}},
    }


def test_bad_records_are_set_aside_and_never_jam_their_batch(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [call(f"good-{n}") for n in range(14)])
    b = batch.batch_id
    upper = "ABCDEF00-0000-4000-8000-000000000001"
    huge = str(2**70 + 1)  # beyond 64 bits: exact only where the parser keeps it so
    planted = {
        # index: (the record, literal texts for its "@name@" strings, how the reason for
        # rejecting it starts; None: it loads)
        1: ({**call("dup-a", "SUCCESS"), "callId": cid(1)}, {}, None),
        6: ({**call("dup-b", "SUCCESS"), "callId": cid(1)}, {}, f"callId {cid(1)} is listed"),
        2: ({**call("case-a", "SUCCESS"), "callId": upper}, {}, None),
        3: (
            {**call("case-b", "SUCCESS"), "callId": upper.lower()},
            {},
            f"callId {upper.lower()} is listed twice",
        ),
        4: (_websocket("rate-31", 2**31), {}, None),
        9: (
            {**_websocket("rate-70", 2**70), "metadata": {"tag": "rate-70", "campaign": "big"}},
            {},
            None,
        ),
        10: (
            {**call("big"), "metadata": {"tag": "big", "campaign": "big", "n": "@huge@"}},
            {"huge": huge},
            None,
        ),
        5: (
            {**call("inf"), "metadata": {"tag": "inf", "big": "@inf@", "huge": "@huge@"}},
            {"inf": "1e400", "huge": huge},
            "holds a number JSON cannot represent (inf",
        ),
        8: (
            {**call("nan"), "templateContext": {"score": "@nan@"}},
            {"nan": "NaN"},
            "holds a number JSON cannot represent (nan",
        ),
        11: (
            {**call("deep"), "templateContext": {"tree": "@deep@"}},
            {"deep": "[" * DEEP + "1" + "]" * DEEP},
            "nested deeper than 32 levels",
        ),
    }
    for index, (record, literals, _) in planted.items():
        fake_api.set_raw_record(b, index, _raw({**record, "batchId": b}, **literals))
    config = make_config(fake_api, tmp_path, database_url, [batch], page_size=4)
    sync = ("sync", "--config", str(config))
    expected_reasons = sorted((i, r) for i, (_, _, r) in planted.items() if r is not None)
    loaded = 14 - len(expected_reasons)

    for run_id in (1, 2, 3):
        if run_id == 3:
            fake_api.set_order(b, "reversed")
        result = ok(run_cli(*sync))

        line = summary_line(batch, result.stdout)
        assert line.startswith(f"batch {b}: succeeded: scheduled_calls pages=4 fetched=14/14 ")
        assert f"rejected={len(expected_reasons)}" in line
        if run_id < 3:
            assert ("inserted=9" if run_id == 1 else "inserted=0 updated=0 unchanged=9") in line
        else:  # listed first now, the other record of callId 1 takes its row: a change
            assert "inserted=0 updated=1 unchanged=8" in line
        rejected = rows(
            engine,
            "SELECT page, position, reason, payload FROM rejected_records WHERE run_id = :r "
            "ORDER BY page, position",
            r=run_id,
        )
        reasons = [r.reason for r in rejected]
        if run_id < 3:
            assert [(r.page - 1) * 4 + r.position for r in rejected] == [
                i for i, _ in expected_reasons
            ]
        assert len(reasons) == len(expected_reasons)
        for _, want in expected_reasons:
            assert sum(1 for r in reasons if r.startswith(want)) == 1, (want, reasons)
        assert count(engine, "SELECT count(*) FROM scheduled_calls") == loaded
        (batch_run,) = [r for r in batch_runs(engine, b) if r.run_id == run_id]
        assert (batch_run.status, batch_run.rejected) == ("succeeded", len(expected_reasons))

    # The API sorts its duplicate out: the record that lost its row gets one of its own.
    fake_api.set_call(b, 1, status="SUCCESS", call_id=cid(9))
    line = summary_line(batch, ok(run_cli(*sync)).stdout)
    assert "inserted=1 updated=0 unchanged=9 removed=0 rejected=4" in line
    tags = {r.metadata["tag"] for r in fetch_calls(engine, b)}
    assert tags == {f"good-{n}" for n in (0, 7, 12, 13)} | {
        "big",
        "dup-a",
        "dup-b",
        "case-a",
        "rate-31",
        "rate-70",
    }
    # The callIds were stored once each, lower case; the duplicates are in rejected_records.
    assert sorted(r.call_id for r in fetch_calls(engine, b) if r.call_id) == sorted(
        [cid(1), cid(9), upper.lower()]
    )
    # Sample rates no integer column holds: the column is null, the value is kept exactly.
    media = {
        r.tag: r
        for r in rows(
            engine,
            "SELECT c.error AS tag, m.input_sample_rate, m.output_sample_rate, m.extra "
            "FROM scheduled_calls c JOIN scheduled_call_media m ON m.scheduled_call_id = c.id "
            "WHERE c.error LIKE 'rate-%'",
        )
    }
    for tag, rate in (("rate-31", 2**31), ("rate-70", 2**70)):
        assert (media[tag].input_sample_rate, media[tag].output_sample_rate) == (None, 8000)
        assert _as_json(media[tag].extra) == {"serverWebSocket": {"inputSampleRate": rate}}
    # Nothing the API sent as NaN or Infinity became a JSON null; big integers stay exact.
    payloads = {
        p["metadata"]["tag"]: p
        for p in (
            _as_json(r.payload)
            for r in rows(engine, "SELECT payload FROM rejected_records WHERE run_id = 1")
        )
    }
    inf, nan = payloads["inf"], payloads["nan"]
    assert inf["metadata"]["big"] == "inf" and inf["metadata"]["huge"] == int(huge)
    assert nan["templateContext"] == {"score": "nan"}
    assert count(engine, "SELECT count(*) FROM rejected_records WHERE payload IS NULL") == 0
    # The README's queries still run over every stored row (json_extract on SQLite).
    for title, only, sql in readme_queries():
        if only in (None, engine.dialect.name):
            found = rows(engine, sql)
            if title == "Calls per campaign, from the metadata JSON":
                assert [tuple(r) for r in found] == [("big", "FUTURE", 2)]
    with engine.connect() as conn:
        n = conn.scalar(select(metadata.c.value).where(metadata.c.key == "n"))
    assert n == huge


# == 3. No failure hidden behind success --------------------------------------------------

REFUSED = "etl_batch_runs refuses this batch"


def refuse_batch_records(engine: Engine, batch_id: str) -> None:
    """From now on the database refuses every insert into etl_batch_runs for one batch."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_batch BEFORE INSERT ON etl_batch_runs "
                f"WHEN NEW.batch_id = '{batch_id}' BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"
            )
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_batch BEFORE INSERT ON etl_batch_runs FOR EACH ROW "
                f"BEGIN IF NEW.batch_id = '{batch_id}' THEN "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{REFUSED}'; END IF; END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_batch() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION '{REFUSED}'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_batch BEFORE INSERT ON etl_batch_runs FOR EACH ROW "
                f"WHEN (NEW.batch_id = '{batch_id}') EXECUTE FUNCTION refuse_batch()"
            )


def test_a_batch_whose_start_cannot_be_recorded_fails_visibly_and_the_rest_is_recorded(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batches = [add_generated_batch(fake_api, 12, seed=n) for n in range(3)]
    refused = batches[1]
    config = make_config(fake_api, tmp_path, database_url, batches, concurrency=1)
    ok(run_cli("migrate", "--config", str(config)))
    refuse_batch_records(engine, refused.batch_id)
    prom = tmp_path / "etl.prom"
    sync = ("sync", "--config", str(config), "--metrics-file", str(prom))

    result = run_cli(*sync)

    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = summary_line(refused, result.stdout)
    assert line.startswith(f"batch {refused.batch_id}: failed")
    assert f"error: database error: {REFUSED}" in line
    run_line = result.stdout.splitlines()[-1]
    assert run_line.startswith("run 1: partial: 2 of 3 batches synced, 1 failed; ")
    assert f"the record of batch {refused.batch_id} could not be written" in run_line
    (run,) = runs(engine)
    assert (run.status, run.batches_ok, run.batches_failed) == ("partial", 2, 1)
    assert run.finished_at is not None and refused.batch_id in run.error
    recorded = {r.batch_id: r.status for r in rows(engine, "SELECT * FROM etl_batch_runs")}
    assert recorded == {batches[0].batch_id: "succeeded", batches[2].batch_id: "succeeded"}
    for batch in (batches[0], batches[2]):
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
    assert metric(prom, "ultravox_etl_batches", status="failed") == 1
    assert metric(prom, "ultravox_etl_batches", status="succeeded") == 2
    assert metric(prom, "ultravox_etl_run_status", status="partial") == 1
    assert metric(prom, "ultravox_etl_run_exit_code") == 1
    assert metric(prom, "ultravox_etl_last_success_timestamp_seconds") == 0

    # That batch alone: never "1 of 1 batches synced".
    single = run_cli(*sync, "--batch", refused.batch_id)

    assert single.exit_code == 1
    assert single.stdout.splitlines()[-1].startswith(
        "run 2: failed: 0 of 1 batches synced, 1 failed"
    )
    assert runs(engine)[-1].status == "failed"
    assert metric(prom, "ultravox_etl_batches", status="failed") == 1
    assert metric(prom, "ultravox_etl_run_status", status="failed") == 1
    assert metric(prom, "ultravox_etl_last_success_timestamp_seconds") == 0


pg_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
"""For what only PostgreSQL has: roles with a connection limit, advisory locks held by a
connection the server can drop, idle_session_timeout."""


@pytest.fixture
def admin(engine: Engine) -> Engine:
    """The test's PostgreSQL database with autocommit, to change roles and settings."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def database_name(engine: Engine) -> str:
    return str(rows(engine, "SELECT current_database()")[0][0])


@pg_only
def test_batches_that_get_no_database_connection_fail_and_are_all_recorded(
    fake_api: FakeUltravox,
    engine: Engine,
    admin: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
) -> None:
    batches = [add_generated_batch(fake_api, 12, seed=n) for n in range(4)]
    config = make_config(fake_api, tmp_path, database_url, batches, concurrency=4)
    prom = tmp_path / "etl.prom"
    ok(run_cli("migrate", "--config", str(config)))
    role = f"etl_limited_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
        conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    url = make_url(database_url).set(username=role).render_as_string(hide_password=False)
    try:
        result = run_cli(
            "sync", "--config", str(config), "--database-url", url, "--metrics-file", str(prom)
        )
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
            )
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")

    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    recorded = {r.batch_id: r for r in rows(engine, "SELECT * FROM etl_batch_runs")}
    assert set(recorded) == {b.batch_id for b in batches}  # none silently missing
    failed = [r for r in recorded.values() if r.status == "failed"]
    assert failed and {r.status for r in recorded.values()} <= {"failed", "succeeded"}
    for row in failed:
        assert f'too many connections for role "{role}"' in row.error
        assert f"batch {row.batch_id}: failed" in result.stdout
    (run,) = runs(engine)
    synced = len(recorded) - len(failed)
    assert (run.batches_ok, run.batches_failed) == (synced, len(failed))
    assert run.status == ("partial" if synced else "failed")
    assert result.stdout.splitlines()[-1].startswith(
        f"run 1: {run.status}: {synced} of 4 batches synced, {len(failed)} failed"
    )
    assert metric(prom, "ultravox_etl_batches", status="failed") == len(failed)
    assert metric(prom, "ultravox_etl_run_exit_code") == 1


# == 4. Lost locks (PostgreSQL: a batch's lock is held by the connection that writes it) --


def advisory_lock_holders(engine: Engine, name: str | None = None) -> list[int]:
    """Backends (other than ours) holding an advisory lock in the test's database; only
    those holding the lock `name` if it is given."""
    sql = (
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND pid <> pg_backend_pid()"
    )
    params: dict[str, Any] = {}
    if name is not None:
        key = lock_key(name) & 0xFFFFFFFFFFFFFFFF
        sql += " AND classid::bigint = :high AND objid::bigint = :low"
        params = {"high": key >> 32, "low": key & 0xFFFFFFFF}
    return [r.pid for r in rows(engine, sql, **params)]


def terminate(engine: Engine, pids: list[int]) -> None:
    assert pids
    for pid in pids:
        rows(engine, "SELECT pg_terminate_backend(:pid)", pid=pid)


@pg_only
def test_a_batch_whose_lock_connection_is_dropped_stops_and_never_writes_beside_another_run(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    batch = add_generated_batch(fake_api, 20)
    first = make_config(fake_api, tmp_path, database_url, [batch], page_size=5, timeout_seconds=30)
    second = make_config(fake_api, tmp_path, database_url, [batch], page_size=7, name="second.toml")
    prom = tmp_path / "etl.prom"
    ok(run_cli("migrate", "--config", str(first)))
    gate = closed_gate(fake_api, "pageSize=5&cursor=")  # the first run's page 2 waits
    child = children.cli("sync", "--config", str(first), "--metrics-file", str(prom))
    wait_for(lambda: count(engine, "SELECT count(*) FROM scheduled_calls") == 5, "page 1")
    wait_for(lambda: len(advisory_lock_holders(engine)) == 2, "the run's and the batch's lock")

    terminate(engine, advisory_lock_holders(engine))
    # The lock went with the connection: another run takes the batch and syncs it all.
    taken = ok(run_cli("sync", "--config", str(second)))
    assert f"batch {batch.batch_id}: succeeded" in taken.stdout
    fake_api.advance(batch.batch_id, 0.6, seed=1)  # what the first run would write differs
    gate.set()
    result = child.finish()

    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    line = summary_line(batch, result.stdout)
    assert line.startswith(f"batch {batch.batch_id}: failed: scheduled_calls pages=1 fetched=5/")
    assert "the database dropped the batch's connection, and the batch's lock with it" in line
    assert result.stdout.splitlines()[-1].startswith("run 1: failed: 0 of 1 batches synced")
    assert metric(prom, "ultravox_etl_batches", status="failed") == 1
    # The first run wrote nothing once its lock was gone: only page 1's first sightings.
    assert count(engine, "SELECT count(*) FROM scheduled_call_status_changes WHERE run_id = 1") == 5
    # Run 2 found run 1's lock free and took it for dead; run 1's own record has the last word.
    one, two = runs(engine)
    assert (one.status, two.status) == ("failed", "succeeded")
    assert [(r.run_id, r.status, r.pages) for r in batch_runs(engine, batch.batch_id)] == [
        (1, "failed", 1),
        (2, "succeeded", 3),
    ]
    ok(run_cli("sync", "--config", str(second)))
    assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)


@pg_only
def test_a_run_whose_own_lock_connection_is_dropped_finishes_with_a_true_record(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    slow, other = (add_generated_batch(fake_api, 20, seed=n) for n in range(2))
    config = make_config(
        fake_api, tmp_path, database_url, [slow, other], page_size=5, timeout_seconds=30
    )
    ok(run_cli("migrate", "--config", str(config)))
    gate = closed_gate(fake_api, f"{slow.batch_id}/scheduled_calls?pageSize=5&cursor=")
    child = children.cli("sync", "--config", str(config), "--batch", slow.batch_id)
    wait_for(lambda: count(engine, "SELECT count(*) FROM scheduled_calls") == 5, "page 1")

    terminate(engine, advisory_lock_holders(engine, "run:1"))
    later = ok(run_cli("sync", "--config", str(config), "--batch", other.batch_id))
    gate.set()
    result = ok(child.finish())

    assert "run 1 had been left running" in later.stderr  # its lock was free: taken for dead
    assert result.stdout.splitlines()[-1] == "run 1: succeeded: 1 of 1 batches synced"
    one, two = runs(engine)
    assert (one.status, one.error, two.status) == ("succeeded", None, "succeeded")
    assert [(r.status, r.pages) for r in batch_runs(engine, slow.batch_id)] == [("succeeded", 4)]
    assert db_full_view(engine, slow.batch_id) == api_full_view(fake_api, slow.batch_id)


@pg_only
def test_an_idle_session_timeout_stops_the_batch_plainly_and_the_run_reports(
    fake_api: FakeUltravox,
    engine: Engine,
    admin: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
) -> None:
    batch = add_generated_batch(fake_api, 12)
    config = make_config(fake_api, tmp_path, database_url, [batch], page_size=5)
    prom = tmp_path / "etl.prom"
    ok(run_cli("migrate", "--config", str(config)))
    name = database_name(engine)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET idle_session_timeout = 200')
    fake_api.latency_seconds = 0.4  # every connection idles longer than that between pages

    result = run_cli("sync", "--config", str(config), "--metrics-file", str(prom))

    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    line = summary_line(batch, result.stdout)
    assert line.startswith(f"batch {batch.batch_id}: failed")
    assert "the database dropped the batch's connection, and the batch's lock with it" in line
    assert result.stdout.splitlines()[-1].startswith("run 1: failed: 0 of 1 batches synced")
    assert runs(engine)[0].status == "failed"
    assert metric(prom, "ultravox_etl_run_status", status="failed") == 1
    # Exempt from the timeout (as the README says), the job's sessions hold their locks.
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f'ALTER ROLE CURRENT_USER IN DATABASE "{name}" SET idle_session_timeout = 0'
        )
    ok(run_cli("sync", "--config", str(config)))


# == 5. A hung run makes later runs look healthy ------------------------------------------


def test_while_another_process_holds_a_batch_later_runs_exit_75_and_never_look_healthy(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    hung, other = (add_generated_batch(fake_api, 12, seed=n) for n in range(2))
    config = make_config(
        fake_api, tmp_path, database_url, [hung, other], sync={"lock_wait_seconds": 0.2}
    )
    prom = tmp_path / "etl.prom"
    sync = ("sync", "--config", str(config), "--metrics-file", str(prom))
    ok(run_cli(*sync))
    success = metric(prom, "ultravox_etl_last_success_timestamp_seconds")
    stalest = metric(prom, "ultravox_etl_stalest_batch_age_seconds")
    assert success > 0

    holder, state = start_holder(database_url, f"batch:{hung.batch_id}")
    try:
        assert state == "held"
        for args, expected in (
            ((), "run 2: partial: 1 of 2 batches synced, 1 locked by another run"),
            (("--batch", hung.batch_id), "run 3: failed: 0 of 1 batches synced, 1 locked by"),
        ):
            result = run_cli(*sync, *args)

            assert result.exit_code == 75, result.stderr
            assert result.stdout.splitlines()[-1].startswith(expected)
            assert summary_line(hung, result.stdout).startswith(f"batch {hung.batch_id}: locked")
            assert runs(engine)[-1].status == expected.split()[2].rstrip(":")
            assert metric(prom, "ultravox_etl_run_exit_code") == 75
            assert metric(prom, "ultravox_etl_batches", status="locked") == 1
            assert metric(prom, "ultravox_etl_run_status", status="succeeded") == 0
            assert metric(prom, "ultravox_etl_last_success_timestamp_seconds") == success
            now_stalest = metric(prom, "ultravox_etl_stalest_batch_age_seconds")
            assert now_stalest > stalest
            stalest = now_stalest
    finally:
        holder.kill()
        holder.wait()

    ok(run_cli(*sync))
    assert metric(prom, "ultravox_etl_last_success_timestamp_seconds") > success
    assert metric(prom, "ultravox_etl_stalest_batch_age_seconds") < stalest
    assert [r.status for r in runs(engine)] == ["succeeded", "partial", "failed", "succeeded"]


# == 6. Database faults: one clear line, a recorded outcome where possible ----------------


sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
"""For faults of a database file: one that cannot grow, one another program has locked."""


def sqlite_file(database_url: str) -> Path:
    return Path(database_url.removeprefix("sqlite:///"))


@pytest.fixture
def page_limit() -> Iterator[list[int]]:
    """Every SQLite connection opened in this process from now on can grow its file to at
    most `page_limit[0]` pages (0: no limit): a real SQLITE_FULL, as on a full disk."""
    limit = [0]

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if limit[0] and isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute(f"PRAGMA max_page_count = {limit[0]}")

    event.listen(Engine, "connect", on_connect)
    yield limit
    event.remove(Engine, "connect", on_connect)


def shown(url: str) -> str:
    """The database as the job names it in messages, password masked."""
    engine = open_engine(url)
    try:
        return describe(engine)
    finally:
        engine.dispose()


def one_line(result: CliResult) -> str:
    """The one line on stderr of a run that could not use its database (under -q)."""
    assert result.exit_code == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ultravox-etl: database error: "), lines
    return lines[0]


def assert_failure_metrics(prom: Path) -> None:
    assert metric(prom, "ultravox_etl_run_status", status="failed") == 1
    assert metric(prom, "ultravox_etl_run_exit_code") == 1


@sqlite_only
def test_a_full_disk_from_the_start_is_one_line_and_exit_1(
    fake_api: FakeUltravox, database_url: str, run_cli: Any, tmp_path: Path, page_limit: list[int]
) -> None:
    path = sqlite_file(database_url)
    batch = add_generated_batch(fake_api, 12)
    config = make_config(fake_api, tmp_path, database_url, [batch])
    prom = tmp_path / "etl.prom"
    page_limit[0] = 4  # not enough for the schema

    line = one_line(run_cli("sync", "-q", "--config", str(config), "--metrics-file", str(prom)))

    assert line == (
        f"ultravox-etl: database error: sqlite:///{path}: "
        "disk full: the database file cannot grow (database or disk is full)"
    )
    assert_failure_metrics(prom)
    page_limit[0] = 0
    ok(run_cli("sync", "--config", str(config)))  # room again: the next run just works


@sqlite_only
def test_a_disk_that_fills_during_a_run_fails_the_batch_and_closes_the_run(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    page_limit: list[int],
) -> None:
    batch = add_generated_batch(fake_api, 400)
    config = make_config(fake_api, tmp_path, database_url, [batch], page_size=50)
    prom = tmp_path / "etl.prom"
    ok(run_cli("migrate", "--config", str(config)))
    (pages,) = rows(engine, "PRAGMA page_count")
    engine.dispose()
    page_limit[0] = pages[0] + 25  # a few pages of calls fit, then the disk is full

    result = run_cli("sync", "--config", str(config), "--metrics-file", str(prom))

    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    line = summary_line(batch, result.stdout)
    assert line.startswith(f"batch {batch.batch_id}: failed: scheduled_calls pages=")
    assert line.endswith(
        "error: database error: disk full: the database file cannot grow (database or disk is full)"
    )
    assert result.stdout.splitlines()[-1].startswith(
        "run 1: failed: 0 of 1 batches synced, 1 failed"
    )
    page_limit[0] = 0
    engine.dispose()
    (run,) = runs(engine)
    (batch_run,) = batch_runs(engine, batch.batch_id)
    assert (run.status, run.batches_failed) == ("failed", 1)
    assert (batch_run.status, batch_run.pages, batch_run.fetched) == ("failed", 1, 50)
    assert batch_run.error.startswith("database error: disk full")
    assert metric(prom, "ultravox_etl_batches", status="failed") == 1
    assert metric(prom, "ultravox_etl_run_exit_code") == 1
    ok(run_cli("sync", "--config", str(config)))


@sqlite_only
def test_a_write_lock_held_by_another_program_is_one_line_and_exit_1(
    fake_api: FakeUltravox,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = sqlite_file(database_url)
    batch = add_generated_batch(fake_api, 12)
    config = make_config(fake_api, tmp_path, database_url, [batch])
    prom = tmp_path / "etl.prom"
    ok(run_cli("migrate", "--config", str(config)))
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 200)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        line = one_line(run_cli("sync", "-q", "--config", str(config), "--metrics-file", str(prom)))
    finally:
        other.close()

    assert line == (
        f"ultravox-etl: database error: sqlite:///{path}: "
        "database is locked by another program (waited 0.2s)"
    )
    assert_failure_metrics(prom)
    ok(run_cli("sync", "--config", str(config)))


def _drop_user(engine: Engine, user: str) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))


def test_a_read_only_database_is_one_line_and_exit_1(
    request: pytest.FixtureRequest,
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    batch = add_generated_batch(fake_api, 12)
    config = make_config(fake_api, tmp_path, database_url, [batch])
    prom = tmp_path / "etl.prom"
    ok(run_cli("sync", "--config", str(config)))
    if engine.dialect.name == "sqlite":
        # The job opens the file by a URI (`file:…?mode=ro`), so SQLite refuses its writes
        # even to root; written read-write, the same form keeps its locks beside the file.
        path = sqlite_file(database_url)
        rw = f"sqlite:///file:{path}?mode=rw&uri=true"
        ok(run_cli("sync", "--config", str(config), "--database-url", rw))
        assert (path.parent / f"{path.name}.locks").is_dir()
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
        cause = "the database file is read-only (attempt to write a readonly database)"
    elif engine.dialect.name in ("mysql", "mariadb"):
        # No read-only database here: a user who may only read it meets the same refusal.
        name = make_url(database_url).database
        reader = f"reader_{name}"[:32]
        with engine.begin() as conn:
            conn.execute(text(f"CREATE USER '{reader}'@'%'"))
            conn.execute(text(f"GRANT SELECT ON `{name}`.* TO '{reader}'@'%'"))
        request.addfinalizer(lambda: _drop_user(engine, reader))
        url = make_url(database_url).set(username=reader).render_as_string(hide_password=False)
        cause = "the database user may not write here (INSERT command denied to user"
    else:
        url = database_url
        with engine.begin() as conn:
            name = conn.exec_driver_sql("SELECT current_database()").scalar_one()
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        cause = "the database is read-only (cannot execute INSERT in a read-only transaction)"
    sync = ("sync", "-q", "--config", str(config), "--database-url", url)

    line = one_line(run_cli(*sync, "--metrics-file", str(prom)))

    assert f": {cause}" in line, line
    assert line.startswith(f"ultravox-etl: database error: {shown(url)}: ")
    assert_failure_metrics(prom)
    assert {r.status for r in runs(engine)} == {"succeeded"}
    assert list(cwd.iterdir()) == []  # no lock folder where it does not belong


def test_a_schema_newer_than_this_version_is_named_plainly_by_every_command(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 12)
    if engine.dialect.name == "postgresql":  # a password to mask (trust auth ignores it)
        database_url = database_url.replace("root@", "root:s3cretpw@")
    config = make_config(fake_api, tmp_path, database_url, [batch])
    prom = tmp_path / "etl.prom"
    ok(run_cli("sync", "--config", str(config)))
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0999'")
    where = shown(database_url)

    for args in (
        ("sync", "-q", "--metrics-file", str(prom)),
        ("sync", "-q", "--no-migrate", "--metrics-file", str(prom)),
        ("migrate",),
        ("runs",),
        ("runs", "--json"),
    ):
        result = run_cli(*args, "--config", str(config))

        assert one_line(result) == (
            f"ultravox-etl: database error: the schema of {where} is newer than this version "
            f"of ultravox-etl (it is at revision 0999; this version knows up to {HEAD}): run "
            "the newer version that migrated it, or upgrade ultravox-etl"
        ), args
        assert "s3cretpw" not in result.stderr + result.stdout
        assert result.stdout == ""
        if args[0] == "sync":
            assert_failure_metrics(prom)
    assert [r.status for r in runs(engine)] == ["succeeded"]


# == 7. Counts that agree -----------------------------------------------------------------


def test_a_run_stopped_by_sigterm_records_what_its_batches_did(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    started, waiting = (add_generated_batch(fake_api, 30, seed=n) for n in range(2))
    config = make_config(
        fake_api, tmp_path, database_url, [started, waiting], concurrency=1, timeout_seconds=30
    )
    ok(run_cli("migrate", "--config", str(config)))
    gate = closed_gate(fake_api, "&cursor=")  # page 2 of the first batch waits
    child = children.cli("sync", "--config", str(config))
    wait_for(
        lambda: count(engine, "SELECT count(*) FROM scheduled_calls") == 10, "page 1 committed"
    )

    child.proc.send_signal(signal.SIGTERM)
    result = child.finish()
    gate.set()

    assert result.exit_code == 128 + signal.SIGTERM
    assert "Traceback" not in result.stderr
    (run,) = runs(engine)
    assert (run.status, run.error) == ("failed", "interrupted by SIGTERM")
    recorded = {r.batch_id: r for r in rows(engine, "SELECT * FROM etl_batch_runs")}
    assert (recorded[started.batch_id].pages, recorded[started.batch_id].fetched) == (1, 10)
    assert (recorded[waiting.batch_id].pages, recorded[waiting.batch_id].fetched) == (0, 0)
    assert {r.status for r in recorded.values()} == {"failed"}
    assert run.batches_failed == 2 and run.batches_ok == 0
    assert run.calls_fetched == 10 and run.calls_inserted == 10
    (stream,) = rows(
        engine, "SELECT * FROM etl_stream_runs WHERE batch_id = :b", b=started.batch_id
    )
    assert (stream.pages, stream.fetched, stream.inserted) == (1, 10, 10)
    # (not `ok`: the fake's thread may still print the broken pipe of the killed child's
    # request to this process's stderr)
    listed = run_cli("runs", "--config", str(config), "--json")
    assert listed.exit_code == 0
    history = json.loads(listed.stdout)
    assert history[0]["calls"]["fetched"] == 10 and history[0]["batches_failed"] == 2
    (first,) = [b for b in history[0]["batches"] if b["batch_id"] == started.batch_id]
    assert (first["counts"]["pages"], first["counts"]["fetched"]) == (1, 10)


def _counts_of(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_run_records_the_summary_and_runs_json_tell_the_same_numbers(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    synced, failing, locked = (add_generated_batch(fake_api, 14, seed=n) for n in range(3))
    fake_api.inject(500, times=50, path_contains=failing.batch_id)
    config = make_config(
        fake_api,
        tmp_path,
        database_url,
        [synced, failing, locked],
        max_attempts=2,
        sync={"lock_wait_seconds": 0.2},
    )
    ok(run_cli("migrate", "--config", str(config)))
    holder, state = start_holder(database_url, f"batch:{locked.batch_id}")
    try:
        assert state == "held"
        result = run_cli("sync", "--config", str(config))
    finally:
        holder.kill()
        holder.wait()

    assert result.exit_code == 1, result.stderr
    run_line = result.stdout.splitlines()[-1]
    assert run_line == "run 1: partial: 1 of 3 batches synced, 1 failed, 1 locked by another run"
    (run,) = runs(engine)
    statuses = [r.status for r in rows(engine, "SELECT status FROM etl_batch_runs")]
    assert run.batches_failed == statuses.count("failed") == 1
    assert run.batches_ok == statuses.count("succeeded") == 1
    (record,) = json.loads(ok(run_cli("runs", "--config", str(config), "--json")).stdout)
    assert (record["batches_ok"], record["batches_failed"]) == (1, 1)
    text = ok(run_cli("runs", "--config", str(config))).stdout
    assert "1 batches ok, 1 failed" in text.splitlines()[0]
    by_id = {b["batch_id"]: b for b in record["batches"]}
    for batch in (synced, failing, locked):
        counts = _counts_of(summary_line(batch, result.stdout))
        listed = by_id[batch.batch_id]
        for name in ("pages", "inserted", "updated", "unchanged", "removed", "rejected"):
            assert int(counts.get(name, 0)) == (listed["counts"][name] or 0), (batch, name)
        status = re.match(r"batch \S+: (\w+)", summary_line(batch, result.stdout))
        assert status is not None and status[1] == listed["status"]
    assert record["calls"]["fetched"] == run.calls_fetched == 14
    assert record["calls"]["inserted"] == run.calls_inserted == 14


def test_a_filtered_batch_shows_the_apis_completed_share_and_when_it_was_listed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    statuses = ["ERROR"] * 3 + ["SUCCESS"] * 2 + ["EXPIRED"] + ["FUTURE"] * 5 + ["PENDING"]
    batch = add_batch(fake_api, [call(f"c{n}", s) for n, s in enumerate(statuses)])
    config = make_config(fake_api, tmp_path, database_url, [batch])
    filtered = tmp_path / "filtered.toml"
    filtered.write_text(config.read_text() + 'statuses = ["ERROR"]\n')

    result = ok(run_cli("sync", "--config", str(filtered)))

    assert "fetched=3/3" in summary_line(batch, result.stdout)
    (progress,) = rows(engine, "SELECT * FROM batch_progress")
    details = fake_api.batches[batch.batch_id].as_api()
    assert (details["completedCount"], details["totalCount"]) == (6, 12)
    assert (progress.calls, progress.error, progress.total_count) == (3, 3, 12)
    assert float(progress.completed_share) == pytest.approx(6 / 12)
    assert progress.last_synced_at is not None
