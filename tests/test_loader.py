"""BatchLoader on SQLite and PostgreSQL: what each kind of page writes, and what it must not.

The loader writes through the drivers' own bulk paths (COPY, executemany), not SQLAlchemy's
type processing, so these tests also read every kind of value back through SQLAlchemy: JSON
(including integers beyond 64 bits and non-ASCII text), aware UTC timestamps, booleans.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from etl.config import BatchRef
from etl.fake_api import generate_calls
from etl.load.database import upgrade_to_head
from etl.load.loader import BatchLoader
from etl.load.locks import ProcessLocalLocks
from etl.load.schema import (
    rejected_records,
    scheduled_call_data_messages,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_call_status_changes,
    scheduled_calls,
)
from etl.normalize import CallKeys, NormalizedCall, RejectedRecord, normalize_page
from etl.report import RunRecorder
from tests.conftest import AGENT_ID, rows
from tests.test_sync_e2e import snapshot

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Clock:
    """A clock that moves one second (and one microsecond) per reading."""

    def __init__(self) -> None:
        self._ticks = itertools.count()

    def __call__(self) -> datetime:
        return T0 + timedelta(seconds=next(self._ticks), microseconds=1)


@pytest.fixture
def setup(engine: Engine) -> Iterator[tuple[Engine, Callable[[], BatchLoader], BatchRef]]:
    upgrade_to_head(engine)
    clock = Clock()
    batch = BatchRef(AGENT_ID, str(uuid.uuid4()))

    def new_loader() -> BatchLoader:
        run, _lock = RunRecorder(engine, clock).start_run(ProcessLocalLocks())
        return BatchLoader(engine, batch, run.run_id, clock)

    yield engine, new_loader, batch


def normalized(batch: BatchRef, records: list[dict[str, Any]]) -> list[NormalizedCall]:
    calls, rejects = normalize_page(records, batch, CallKeys())
    assert rejects == []
    return calls


def fetch(engine: Engine, stmt: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def child_rows(engine: Engine) -> dict[str, list[Any]]:
    """The child tables, with each row's version on PostgreSQL (a rewrite changes it)."""
    version = "xmin::text AS v, " if engine.dialect.name == "postgresql" else ""
    return {
        t: sorted(map(tuple, rows(engine, f"SELECT {version}* FROM {t}")), key=str)
        for t in ("scheduled_call_media", "scheduled_call_data_messages", "scheduled_call_metadata")
    }


def test_a_new_page_writes_calls_children_and_first_sightings(setup: Any) -> None:
    engine, new_loader, batch = setup
    records = generate_calls(batch.batch_id, 40, seed=3)
    calls = normalized(batch, records)

    counts = new_loader().load_page(1, calls)

    assert (counts.inserted, counts.updated, counts.unchanged) == (40, 0, 0)
    stored = fetch(engine, select(scheduled_calls).order_by(scheduled_calls.c.id))
    assert [r.call_key for r in stored] == [c.call_key for c in calls]
    for row, call in zip(stored, calls, strict=True):
        for column, value in call.call.items():
            assert getattr(row, column) == value, column
        assert (row.call_hash, row.detail_hash) == (call.call_hash, call.detail_hash)
        assert row.first_seen_at == row.updated_at == T0 + timedelta(seconds=1, microseconds=1)
        assert row.first_seen_at.tzinfo is not None and row.removed_at is None
    media = {r.scheduled_call_id: r._asdict() for r in fetch(engine, select(scheduled_call_media))}
    ids = {r.call_key: r.id for r in stored}
    for call in calls:
        assert media[ids[call.call_key]] == {"scheduled_call_id": ids[call.call_key], **call.media}
    flags = {tuple(r) for r in fetch(engine, select(scheduled_call_data_messages))}
    assert flags == {(ids[c.call_key], m, e) for c in calls for m, e in c.data_messages}
    assert any(not enabled for _, _, enabled in flags)
    entries = {tuple(r) for r in fetch(engine, select(scheduled_call_metadata))}
    assert entries == {(ids[c.call_key], k, v) for c in calls for k, v in c.metadata_entries}
    h = scheduled_call_status_changes.c
    history = fetch(engine, select(h.scheduled_call_id, h.from_status, h.to_status, h.call_id))
    assert sorted(history) == sorted(
        (ids[c.call_key], None, c.call["status"], c.call["call_id"]) for c in calls
    )


def test_json_and_timestamps_read_back_exactly(setup: Any) -> None:
    engine, new_loader, batch = setup
    metadata = {"名前": "Zoë 🚀", "quote": 'He said "hi"\n\tthen\\left', "empty": ""}
    template = {"big": 2**70, "neg": -(2**64), "exact": 9007199254740993, "x": [0.1, None, True]}
    record = {
        "status": "ERROR",
        "batchId": batch.batch_id,
        "callId": None,
        "error": "tab\there, newline\nthere, backslash \\N",
        "medium": {"twilio": {"outgoing": {"to": "+1", "from": "+2", "additionalParams": {}}}},
        "metadata": metadata,
        "templateContext": template,
        "experimentalSettings": {"nested": {"deep": [1, {"a": None}]}},
    }
    [call] = normalized(batch, [record])

    new_loader().load_page(1, [call])

    [row] = fetch(engine, select(scheduled_calls))
    assert row.metadata == metadata
    assert row.template_context == template
    assert row.experimental_settings == record["experimentalSettings"]
    assert row.error == record["error"]
    [media] = fetch(engine, select(scheduled_call_media))
    assert media.additional_params == {}
    assert media.extra is None  # SQL NULL, not JSON null
    assert rows(engine, "SELECT count(*) FROM scheduled_call_media WHERE extra IS NULL") == [(1,)]
    assert rows(engine, "SELECT count(*) FROM scheduled_calls WHERE removed_at IS NULL") == [(1,)]
    [observed] = fetch(engine, select(scheduled_call_status_changes.c.observed_at))
    assert observed[0] == row.first_seen_at


def test_an_unchanged_page_writes_nothing(setup: Any) -> None:
    engine, new_loader, batch = setup
    records = generate_calls(batch.batch_id, 60, seed=4)
    new_loader().load_page(1, normalized(batch, records))
    before = snapshot(engine)

    counts = new_loader().load_page(1, normalized(batch, records))

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 60)
    assert snapshot(engine) == before


def test_a_status_change_updates_the_row_and_history_but_not_the_children(setup: Any) -> None:
    engine, new_loader, batch = setup
    records = generate_calls(batch.batch_id, 20, seed=5)
    new_loader().load_page(1, normalized(batch, records))
    c = scheduled_calls.c
    before = {r.call_key: r for r in fetch(engine, select(scheduled_calls))}
    children = child_rows(engine)
    index = next(i for i, r in enumerate(records) if r["status"] == "FUTURE")
    placed = str(uuid.uuid4())
    records[index] = {**records[index], "status": "SUCCESS", "callId": placed.upper()}

    calls = normalized(batch, records)
    counts = new_loader().load_page(1, calls)

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 1, 19)
    after = {r.call_key: r for r in fetch(engine, select(scheduled_calls))}
    key = calls[index].call_key
    assert (after[key].status, after[key].call_id) == ("SUCCESS", placed)
    assert after[key].id == before[key].id
    assert after[key].first_seen_at == before[key].first_seen_at
    assert after[key].updated_at > before[key].updated_at
    assert {k: r for k, r in after.items() if k != key} == {
        k: r for k, r in before.items() if k != key
    }
    assert child_rows(engine) == children
    h = scheduled_call_status_changes.c
    history = fetch(
        engine,
        select(h.from_status, h.to_status, h.call_id)
        .where(h.scheduled_call_id == after[key].id)
        .order_by(h.id),
    )
    assert [tuple(r) for r in history] == [(None, "FUTURE", None), ("FUTURE", "SUCCESS", placed)]
    assert fetch(engine, select(c.id).where(c.status == "SUCCESS").where(c.call_id == placed))


def test_changed_child_rows_are_replaced_without_moving_updated_at(setup: Any) -> None:
    engine, new_loader, batch = setup
    record = {
        "status": "FUTURE",
        "batchId": batch.batch_id,
        "callId": None,
        "error": None,
        "medium": {"webRtc": {"dataMessages": {"pong": True, "state": False}}},
        "metadata": {"campaign": "spring"},
    }
    [call] = normalized(batch, [record])
    new_loader().load_page(1, [call])
    [before] = fetch(engine, select(scheduled_calls))
    # What a newer version of the job would produce: other child rows, the same call row.
    remapped = dataclasses.replace(
        call,
        data_messages=(("pong", False),),
        metadata_entries=(("campaign", "spring"), ("extra", "1")),
        detail_hash="0" * 32,
    )

    counts = new_loader().load_page(1, [remapped])

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 1, 0)
    [after] = fetch(engine, select(scheduled_calls))
    assert after.detail_hash == "0" * 32
    assert (after.id, after.updated_at, after.call_hash) == (
        before.id,
        before.updated_at,
        before.call_hash,
    )
    d = scheduled_call_data_messages.c
    assert [tuple(r) for r in fetch(engine, select(d.message, d.enabled))] == [("pong", False)]
    m = scheduled_call_metadata.c
    assert sorted(tuple(r) for r in fetch(engine, select(m.key, m.value))) == [
        ("campaign", "spring"),
        ("extra", "1"),
    ]
    assert len(fetch(engine, select(scheduled_call_media))) == 1
    assert len(fetch(engine, select(scheduled_call_status_changes))) == 1  # no status change


def test_finish_marks_absent_calls_removed_and_a_returning_call_is_cleared(setup: Any) -> None:
    engine, new_loader, batch = setup
    records = generate_calls(batch.batch_id, 30, seed=6)
    first = new_loader()
    keys = CallKeys()  # one listing in two pages
    for number, part in enumerate((records[:15], records[15:]), start=1):
        calls, _ = normalize_page(part, batch, keys)
        first.load_page(number, calls)
    assert first.finish(complete=True) == 0
    kept = records[:10] + records[20:]

    second = new_loader()
    calls = normalized(batch, kept)
    second.load_page(1, calls)
    assert second.finish(complete=False) == 0  # an incomplete listing removes nothing
    assert rows(engine, "SELECT count(*) FROM scheduled_calls WHERE removed_at IS NOT NULL") == [
        (0,)
    ]
    third = new_loader()
    third.load_page(1, calls)
    assert third.finish(complete=True) == 10
    c = scheduled_calls.c
    removed = fetch(
        engine, select(c.id, c.updated_at, c.removed_at).where(c.removed_at.is_not(None))
    )
    assert len(removed) == 10
    assert third.finish(complete=True) == 0  # already removed: not counted again

    fourth = new_loader()
    counts = fourth.load_page(1, normalized(batch, records))
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 10, 20)
    assert fourth.finish(complete=True) == 0
    back = {r.id: r for r in fetch(engine, select(c.id, c.updated_at, c.removed_at))}
    for row in removed:
        assert back[row.id].removed_at is None
        assert back[row.id].updated_at == row.updated_at  # its own columns did not change
    assert rows(engine, "SELECT count(*) FROM scheduled_call_status_changes") == [(30,)]


def test_a_page_larger_than_one_lookup_chunk_and_rejects(setup: Any) -> None:
    engine, new_loader, batch = setup
    records = generate_calls(batch.batch_id, 1234, seed=7)
    calls = normalized(batch, records)
    rejects = [RejectedRecord(3, "'metadata' is neither an object nor null", {"metadata": [1]})]

    first = new_loader().load_page(4, calls, rejects)
    second = new_loader().load_page(4, calls)

    assert (first.inserted, first.rejected) == (1234, 1)
    assert (second.unchanged, second.updated, second.inserted) == (1234, 0, 0)
    r = rejected_records.c
    [reject] = fetch(engine, select(r.batch_id, r.page, r.position, r.reason, r.payload))
    assert tuple(reject) == (batch.batch_id, 4, 3, rejects[0].reason, {"metadata": [1]})
    assert rows(engine, "SELECT count(DISTINCT call_key) FROM scheduled_calls") == [(1234,)]


def test_a_driver_error_in_a_bulk_statement_is_a_database_error_and_rolls_back(
    setup: Any,
) -> None:
    engine, new_loader, batch = setup
    # Make the database refuse one kind of child row, as a real constraint would.
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "ALTER TABLE scheduled_call_metadata ADD CONSTRAINT refuse_all CHECK (false)"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_all BEFORE INSERT ON scheduled_call_metadata "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
    records = generate_calls(batch.batch_id, 10, seed=9)

    with pytest.raises(DBAPIError):
        new_loader().load_page(1, normalized(batch, records))

    assert rows(engine, "SELECT count(*) FROM scheduled_calls")[0][0] == 0
