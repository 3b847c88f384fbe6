"""The scheduled-call loader on every database: what each kind of page writes, which stored row
each record is, and what a page must not write.

The loader writes through the drivers' own bulk paths (COPY, executemany), not SQLAlchemy's
type processing, so these tests also read every kind of value back through SQLAlchemy: JSON
(including integers beyond 64 bits and non-ASCII text), aware UTC timestamps, booleans.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, select, text
from sqlalchemy.exc import DBAPIError

from etl.config import BatchRef
from etl.domain import status_rank
from etl.extract.pagination import Page
from etl.fake_api import generate_calls
from etl.load import batches as batch_store
from etl.load import scheduled_calls as loader_module
from etl.load.backends import ProcessLocalLocks
from etl.load.database import upgrade_to_head
from etl.load.scheduled_calls import ScheduledCallLoader, StoredDefinitions
from etl.load.schema import (
    rejected_records,
    scheduled_call_data_messages,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_call_status_changes,
    scheduled_calls,
)
from etl.normalize.medium import MEDIA_COLUMNS
from etl.report.records import RunRecorder
from etl.streams import BatchContext, Listing, PageResult
from etl.streams.scheduled_calls import NormalizedScheduledCall, normalize_record, record_digest
from tests.conftest import AGENT_ID, rows
from tests.test_sync_e2e import snapshot

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Clock:
    """A clock that moves one second (and one microsecond) per reading."""

    def __init__(self) -> None:
        self._ticks = itertools.count()

    def __call__(self) -> datetime:
        return T0 + timedelta(seconds=next(self._ticks), microseconds=1)


@dataclass
class Setup:
    engine: Engine
    batch: BatchRef
    new_loader: Callable[[], ScheduledCallLoader]
    """A loader for a new sync (a new run, one listing) of the batch."""

    def load(self, *pages: list[dict[str, Any]], complete: bool = True) -> list[PageResult]:
        """One listing of these pages, finished (complete or not)."""
        loader = self.new_loader()
        results = [
            loader.load_page(as_page(n, page), UNFILTERED) for n, page in enumerate(pages, 1)
        ]
        loader.finish(listed_to_end=True, complete=complete)
        return results


@pytest.fixture
def setup(engine: Engine) -> Iterator[Setup]:
    upgrade_to_head(engine)
    clock = Clock()
    batch = BatchRef(AGENT_ID, str(uuid.uuid4()))
    connections: list[Connection] = []
    with engine.begin() as conn:
        batch_store.store_batch_details(conn, batch, {}, clock())

    def new_loader() -> ScheduledCallLoader:
        run, _lock = RunRecorder(engine, clock).start_run(ProcessLocalLocks())
        conn = engine.connect()
        connections.append(conn)
        return ScheduledCallLoader(BatchContext(batch, run.run_id, conn, clock))

    yield Setup(engine, batch, new_loader)
    for conn in connections:
        conn.close()


UNFILTERED = Listing({})


def as_page(number: int, records: list[Any]) -> Page:
    """A page as the client hands it over: parsed leniently, with a digest of its text."""
    text = json.dumps(records).encode()
    return Page(
        number=number,
        results=records,
        total=None,
        cursor=None,
        is_last=True,
        lenient=True,
        digest=hashlib.blake2b(text, digest_size=16).digest(),
    )


def normalized(records: list[dict[str, Any]]) -> list[NormalizedScheduledCall]:
    return [
        normalize_record(r, position=n, digest_of_record=record_digest(r), may_hold_nul=True)
        for n, r in enumerate(records)
    ]


def fetch(engine: Engine, stmt: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def stored_states(engine: Engine) -> list[tuple[Any, ...]]:
    """(call_key, status, call_id) of every stored call, in key order."""
    c = scheduled_calls.c
    return [
        tuple(r)
        for r in fetch(engine, select(c.call_key, c.status, c.call_id).order_by(c.call_key))
    ]


def child_rows(engine: Engine) -> dict[str, list[Any]]:
    """The child tables, with each row's version on PostgreSQL (a rewrite changes it)."""
    version = "xmin::text AS v, " if engine.dialect.name == "postgresql" else ""
    return {
        t: sorted(map(tuple, rows(engine, f"SELECT {version}* FROM {t}")), key=str)
        for t in ("scheduled_call_media", "scheduled_call_data_messages", "scheduled_call_metadata")
    }


def call(
    batch: BatchRef, status: str = "FUTURE", call_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A scheduled call record; identical definitions unless `extra` differs."""
    return {
        "status": status,
        "batchId": batch.batch_id,
        "callId": call_id,
        "error": None,
        "medium": {"twilio": {"outgoing": {"to": "+15555550100", "from": "+15555550199"}}},
        "metadata": {"campaign": "twins"},
        **extra,
    }


# -- what a page writes -------------------------------------------------------------------------


def test_a_new_page_writes_calls_children_and_first_sightings(setup: Setup) -> None:
    records = generate_calls(setup.batch.batch_id, 40, seed=3)
    calls = normalized(records)

    [result] = setup.load(records)

    counts = result.counts
    assert (counts.inserted, counts.updated, counts.unchanged, counts.rejected) == (40, 0, 0, 0)
    engine = setup.engine
    stored = fetch(engine, select(scheduled_calls).order_by(scheduled_calls.c.id))
    assert len({r.call_key for r in stored}) == 40
    by_digest = {r.record_digest: r for r in stored}
    for call_rows in calls:
        row = by_digest[call_rows.record_digest]
        c = call_rows.call
        assert (row.call_id, row.status, row.error, row.medium_type) == (
            c.call_id,
            c.status,
            c.error,
            c.medium_type,
        )
        assert (row.metadata, row.template_context) == (c.metadata, c.template_context)
        assert row.call_key.startswith(f"{call_rows.definition_digest}#")
        assert (row.call_hash, row.detail_hash) == (call_rows.call_hash, call_rows.detail_hash)
        assert row.first_seen_at == row.updated_at
        assert row.first_seen_at.tzinfo is not None and row.removed_at is None
    media = {r.scheduled_call_id: r for r in fetch(engine, select(scheduled_call_media))}
    for call_rows in calls:
        row_id = by_digest[call_rows.record_digest].id
        assert tuple(getattr(media[row_id], c) for c in MEDIA_COLUMNS) == tuple(
            getattr(call_rows.media, c) for c in MEDIA_COLUMNS
        )
    # Identical records (twins) share a digest: compare child rows by digest, as multisets.
    digest_of = {r.id: r.record_digest for r in stored}
    flags = Counter(
        (digest_of[i], m, e) for i, m, e in fetch(engine, select(scheduled_call_data_messages))
    )
    assert flags == Counter((c.record_digest, m, e) for c in calls for m, e in c.data_messages)
    assert any(not enabled for _, _, enabled in flags)
    entries = Counter(
        (digest_of[i], k, v) for i, k, v in fetch(engine, select(scheduled_call_metadata))
    )
    assert entries == Counter((c.record_digest, k, v) for c in calls for k, v in c.metadata_entries)
    h = scheduled_call_status_changes.c
    history = fetch(engine, select(h.scheduled_call_id, h.from_status, h.to_status, h.call_id))
    assert Counter((digest_of[i], *rest) for i, *rest in history) == Counter(
        (c.record_digest, None, c.call.status, c.call.call_id) for c in calls
    )


def test_json_and_timestamps_read_back_exactly(setup: Setup) -> None:
    metadata = {"名前": "Zoë 🚀", "quote": 'He said "hi"\n\tthen\\left', "empty": ""}
    template = {"big": 2**70, "neg": -(2**64), "exact": 9007199254740993, "x": [0.1, None, True]}
    record = {
        **call(setup.batch, "ERROR", error="tab\there, newline\nthere, backslash \\N"),
        "medium": {"twilio": {"outgoing": {"to": "+1", "from": "+2", "additionalParams": {}}}},
        "metadata": metadata,
        "templateContext": template,
        "experimentalSettings": {"nested": {"deep": [1, {"a": None}]}},
    }

    setup.load([record])

    engine = setup.engine
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


def test_an_unchanged_page_writes_nothing(setup: Setup) -> None:
    records = generate_calls(setup.batch.batch_id, 60, seed=4)
    setup.load(records)
    before = snapshot(setup.engine)

    [result] = setup.load(records)

    assert (result.counts.inserted, result.counts.updated, result.counts.unchanged) == (0, 0, 60)
    assert snapshot(setup.engine) == before


def test_a_status_change_updates_the_row_and_history_but_not_the_children(setup: Setup) -> None:
    engine = setup.engine
    records = generate_calls(setup.batch.batch_id, 20, seed=5)
    setup.load(records)
    before = {r.id: r for r in fetch(engine, select(scheduled_calls))}
    children = child_rows(engine)
    index = next(i for i, r in enumerate(records) if r["status"] == "FUTURE")
    placed = str(uuid.uuid4())
    records[index] = {**records[index], "status": "SUCCESS", "callId": placed.upper()}

    [result] = setup.load(records)

    assert (result.counts.inserted, result.counts.updated, result.counts.unchanged) == (0, 1, 19)
    after = {r.id: r for r in fetch(engine, select(scheduled_calls))}
    assert after.keys() == before.keys()
    [moved] = [i for i in after if after[i] != before[i]]
    assert (after[moved].status, after[moved].call_id) == ("SUCCESS", placed)
    assert after[moved].call_key == before[moved].call_key
    assert after[moved].first_seen_at == before[moved].first_seen_at
    assert after[moved].updated_at > before[moved].updated_at
    assert child_rows(engine) == children
    h = scheduled_call_status_changes.c
    history = fetch(
        engine,
        select(h.from_status, h.to_status, h.call_id)
        .where(h.scheduled_call_id == moved)
        .order_by(h.id),
    )
    assert [tuple(r) for r in history] == [(None, "FUTURE", None), ("FUTURE", "SUCCESS", placed)]


def test_a_newer_normalizer_rewrites_child_rows_without_moving_updated_at(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = setup.engine
    record = {
        **call(setup.batch),
        "medium": {"webRtc": {"dataMessages": {"pong": True, "state": False}}},
        "metadata": {"campaign": "spring"},
    }
    setup.load([record])
    [before] = fetch(engine, select(scheduled_calls))

    # What a newer version of the job produces: other child rows (and another digest, as its
    # NORMALIZER_VERSION is part of it), the same call row.
    def newer(record: Any, **kwargs: Any) -> NormalizedScheduledCall:
        rows_ = normalize_record(record, **kwargs)
        rows_.data_messages = (("pong", False),)
        rows_.metadata_entries = (("campaign", "spring"), ("extra", "1"))
        rows_.detail_hash = "0" * 32
        return rows_

    monkeypatch.setattr(loader_module, "normalize_record", newer)
    monkeypatch.setattr(loader_module, "record_digest", lambda r: "1" * 32)
    monkeypatch.setattr(loader_module, "NORMALIZER_VERSION", 1_000)

    [result] = setup.load([record])

    assert (result.counts.inserted, result.counts.updated, result.counts.unchanged) == (0, 1, 0)
    [after] = fetch(engine, select(scheduled_calls))
    assert (after.detail_hash, after.record_digest) == ("0" * 32, "1" * 32)
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


def test_finish_marks_absent_calls_removed_and_a_returning_call_is_cleared(setup: Setup) -> None:
    engine = setup.engine
    records = generate_calls(setup.batch.batch_id, 30, seed=6)
    setup.load(records[:15], records[15:])
    kept = records[:10] + records[20:]

    setup.load(kept, complete=False)  # an incomplete listing removes nothing
    assert rows(engine, "SELECT count(*) FROM scheduled_calls WHERE removed_at IS NOT NULL") == [
        (0,)
    ]
    loader = setup.new_loader()
    loader.load_page(as_page(1, kept), UNFILTERED)
    assert loader.finish(listed_to_end=True, complete=True) == 10
    c = scheduled_calls.c
    removed = fetch(
        engine, select(c.id, c.updated_at, c.removed_at).where(c.removed_at.is_not(None))
    )
    assert len(removed) == 10
    # A complete listing of nothing: the other 20 are gone too (the 10 are not counted again).
    assert setup.new_loader().finish(listed_to_end=True, complete=True) == 20

    [result] = setup.load(records)
    assert (result.counts.inserted, result.counts.updated, result.counts.unchanged) == (0, 30, 0)
    back = {r.id: r for r in fetch(engine, select(c.id, c.updated_at, c.removed_at))}
    for row in removed:
        assert back[row.id].removed_at is None
        assert back[row.id].updated_at == row.updated_at  # its own columns did not change
    assert rows(engine, "SELECT count(*) FROM scheduled_call_status_changes") == [(30,)]


def test_a_page_larger_than_one_lookup_chunk_and_a_rejected_record(setup: Setup) -> None:
    engine = setup.engine
    records: list[Any] = generate_calls(setup.batch.batch_id, 1234, seed=7)
    records.insert(
        3,
        {
            **call(setup.batch),
            "metadata": [1],
            "medium": {"sip": {"outgoing": {"password": "pw-secret"}}},
        },
    )

    loader = setup.new_loader()
    first = loader.load_page(as_page(4, records), UNFILTERED).counts
    [second] = setup.load(records)

    assert (first.inserted, first.rejected) == (1234, 1)
    assert (second.counts.unchanged, second.counts.updated, second.counts.inserted) == (1234, 0, 0)
    r = rejected_records.c
    reject = fetch(engine, select(r.batch_id, r.stream, r.page, r.position, r.reason, r.payload))
    assert [tuple(x)[:5] for x in reject] == [
        (setup.batch.batch_id, "scheduled_calls", 4, 3, "'metadata' is neither an object nor null"),
        (setup.batch.batch_id, "scheduled_calls", 1, 3, "'metadata' is neither an object nor null"),
    ]
    assert reject[0].payload["medium"] == {"sip": {"outgoing": {}}}  # never the password
    assert rows(engine, "SELECT count(DISTINCT call_key) FROM scheduled_calls") == [(1234,)]


def test_a_driver_error_in_a_bulk_statement_is_a_database_error_and_rolls_back(
    setup: Setup,
) -> None:
    engine = setup.engine
    # Make the database refuse one kind of child row, as a real constraint would.
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_all BEFORE INSERT ON scheduled_call_metadata "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "ALTER TABLE scheduled_call_metadata ADD CONSTRAINT refuse_all CHECK (1 = 0)"
            )
    records = generate_calls(setup.batch.batch_id, 10, seed=9)

    with pytest.raises(DBAPIError):
        setup.new_loader().load_page(as_page(1, records), UNFILTERED)

    assert rows(engine, "SELECT count(*) FROM scheduled_calls")[0][0] == 0


# -- which stored row a record is (SCHEMA.md, "Call identity") -------------------------------


def test_identical_calls_listed_in_another_order_change_nothing(setup: Setup) -> None:
    b = setup.batch
    twins = [call(b, "FUTURE"), call(b, "PENDING"), call(b, "EXPIRED"), call(b, "FUTURE")]
    setup.load(twins)
    before = snapshot(setup.engine)

    [result] = setup.load(list(reversed(twins)))

    assert (result.counts.unchanged, result.counts.updated, result.counts.inserted) == (4, 0, 0)
    assert snapshot(setup.engine) == before


def test_a_call_with_a_call_id_is_always_the_row_with_that_call_id(setup: Setup) -> None:
    b = setup.batch
    c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
    setup.load([call(b, "PENDING"), call(b, "PENDING")])
    setup.load([call(b, "SUCCESS", c1), call(b, "SUCCESS", c2)])
    c = scheduled_calls.c
    keys = dict(fetch(setup.engine, select(c.call_id, c.call_key)))

    # Listed the other way round, and one of them with an error filled in later.
    [result] = setup.load([call(b, "ERROR", c2, error="SIP 486"), call(b, "SUCCESS", c1)])

    assert result.counts.rejected == 0 and result.counts.inserted == 0
    assert dict(fetch(setup.engine, select(c.call_id, c.call_key))) == keys
    assert ("ERROR", "SIP 486") in [
        tuple(r) for r in fetch(setup.engine, select(c.status, c.error))
    ]


def test_without_call_ids_twins_match_by_state_and_never_move_back(setup: Setup) -> None:
    b = setup.batch
    setup.load([call(b, "FUTURE"), call(b, "EXPIRED"), call(b, "PENDING")])
    before = {key: status for key, status, _ in stored_states(setup.engine)}

    # The PENDING one moved on, the FUTURE one too; listed in another order.
    setup.load([call(b, "PENDING"), call(b, "EXPIRED"), call(b, "ERROR", error="busy")])

    after = {key: status for key, status, _ in stored_states(setup.engine)}
    assert after.keys() == before.keys()  # no new row: each record is one of the three
    assert sorted(after.values()) == ["ERROR", "EXPIRED", "PENDING"]
    # Twins are told apart by state only, so either of the waiting rows may be the one that
    # failed; but no row moved back, and the final one stayed as it was.
    for key in after:
        assert status_rank(after[key]) >= status_rank(before[key])
    assert [k for k in after if before[k] == "EXPIRED"] == [
        k for k in after if after[k] == "EXPIRED"
    ]
    h = scheduled_call_status_changes.c
    changes = fetch(
        setup.engine, select(h.from_status, h.to_status).where(h.from_status.is_not(None))
    )
    assert 1 <= len(changes) <= 2
    assert all(status_rank(new) > status_rank(old) for old, new in changes)


def test_a_twin_that_vanishes_from_the_middle_is_the_one_marked_removed(setup: Setup) -> None:
    b = setup.batch
    first, middle, last = (
        call(b, "SUCCESS", str(uuid.uuid4())),
        call(b, "FUTURE"),
        call(b, "PENDING"),
    )
    setup.load([first, middle, last])
    c = scheduled_calls.c
    ids = dict(fetch(setup.engine, select(c.status, c.id)))

    setup.load([first, last])

    removed = fetch(setup.engine, select(c.id).where(c.removed_at.is_not(None)))
    assert [r.id for r in removed] == [ids["FUTURE"]]


def test_twins_read_on_one_page_are_not_handed_out_again_once_a_later_page_claims_them(
    setup: Setup,
) -> None:
    b = setup.batch
    setup.load([call(b, "FUTURE")] * 4 + [call(b, "PENDING")] * 2)
    before = {key: status for key, status, _ in stored_states(setup.engine)}

    # A page each. The first page reads the definition's six rows to match the EXPIRED call
    # (a PENDING row: the furthest along); the third claims a FUTURE row by its digest; the
    # fourth matches its PENDING call by state again, from what the first page read: that
    # must be one of the three FUTURE rows still unclaimed, never the one the third claimed.
    states = ["EXPIRED", "PENDING", "FUTURE", "PENDING", "FUTURE", "FUTURE"]
    results = setup.load(*[[call(b, s)] for s in states])

    assert sum(r.counts.updated for r in results) == 2
    assert sum(r.counts.inserted for r in results) == 0
    after = {key: status for key, status, _ in stored_states(setup.engine)}
    assert after.keys() == before.keys()
    assert sorted(after.values()) == sorted(states)
    assert all(status_rank(after[k]) >= status_rank(before[k]) for k in after)
    c = scheduled_calls.c
    assert fetch(setup.engine, select(c.id).where(c.removed_at.is_not(None))) == []


def test_a_final_row_is_never_matched_to_a_waiting_record(setup: Setup) -> None:
    b = setup.batch
    setup.load([call(b, "EXPIRED")])
    [(expired_key, _, _)] = stored_states(setup.engine)

    # The API now shows a FUTURE twin and no EXPIRED one: that is another call, not a regression.
    setup.load([call(b, "FUTURE")])

    states = stored_states(setup.engine)
    assert ("EXPIRED" in {s for _, s, _ in states}) and len(states) == 2
    c = scheduled_calls.c
    [(removed_key,)] = fetch(setup.engine, select(c.call_key).where(c.removed_at.is_not(None)))
    assert removed_key == expired_key


def test_a_call_id_listed_twice_is_rejected_and_the_rest_loads_every_run(setup: Setup) -> None:
    b = setup.batch
    placed = str(uuid.uuid4())
    other = call(b, "FUTURE", templateContext={"n": 2})
    page = [call(b, "SUCCESS", placed), call(b, "ERROR", placed.upper(), error="x"), other]

    for _ in range(2):  # the batch is never jammed: the next run does the same
        [result] = setup.load(page)
        assert result.counts.rejected == 1
        assert result.rejected[0].reason == f"callId {placed} is listed twice in this batch"
    assert sorted(s for _, s, _ in stored_states(setup.engine)) == ["FUTURE", "SUCCESS"]


def test_a_call_id_of_another_batch_is_rejected(setup: Setup) -> None:
    placed = str(uuid.uuid4())
    setup.load([call(setup.batch, "SUCCESS", placed)])
    other = BatchRef(AGENT_ID, str(uuid.uuid4()))
    with setup.engine.begin() as conn:
        batch_store.store_batch_details(conn, other, {}, T0)
    run, _lock = RunRecorder(setup.engine, Clock()).start_run(ProcessLocalLocks())
    with setup.engine.connect() as conn:
        loader = ScheduledCallLoader(BatchContext(other, run.run_id, conn, Clock()))
        result = loader.load_page(as_page(1, [call(other, "SUCCESS", placed)]), UNFILTERED)

    assert [r.reason for r in result.rejected] == [
        f"callId {placed} belongs to a call of batch {setup.batch.batch_id}"
    ]


# -- pages that come again (etl.load.page_memory) -----------------------------------------


def test_a_page_that_comes_again_is_claimed_without_a_statement(setup: Setup) -> None:
    records = generate_calls(setup.batch.batch_id, 30, seed=11)
    setup.load(records[:15], records[15:])
    statements: list[str] = []
    loader = setup.new_loader()
    event.listen(loader.context.conn, "before_cursor_execute", lambda *a: statements.append(a[2]))

    counts = [loader.load_page(as_page(n, part), UNFILTERED).counts for n, part in
              enumerate((records[:15], records[15:]), 1)]  # fmt: skip

    assert [(c.unchanged, c.updated, c.inserted) for c in counts] == [(15, 0, 0), (15, 0, 0)]
    # Two reads of what the batch holds, one of each page's memory; nothing written.
    sent = [s for s in statements if not s.startswith("BEGIN")]
    assert [s.split()[0] for s in sent] == ["SELECT"] * (2 + 2), sent
    assert loader.finish(listed_to_end=True, complete=True) == 0


def test_a_remembered_page_whose_row_was_marked_removed_is_read_again(setup: Setup) -> None:
    records = generate_calls(setup.batch.batch_id, 10, seed=12)
    setup.load(records)
    with setup.engine.begin() as conn:
        conn.execute(text("UPDATE scheduled_calls SET removed_at = first_seen_at WHERE id = 1"))

    [result] = setup.load(records)

    assert (result.counts.updated, result.counts.unchanged) == (1, 9)
    assert rows(setup.engine, "SELECT count(*) FROM scheduled_calls WHERE removed_at IS NULL") == [
        (10,)
    ]


def test_a_page_with_a_rejected_record_is_never_remembered(setup: Setup) -> None:
    records: list[Any] = [call(setup.batch), {**call(setup.batch), "metadata": [1]}]
    for _ in range(2):
        [result] = setup.load(records)
        assert result.counts.rejected == 1 and len(result.rejected) == 1
    assert rows(setup.engine, "SELECT count(*) FROM etl_listing_pages") == [(0,)]


def test_a_listing_that_writes_forgets_the_pages_of_the_other_listings(setup: Setup) -> None:
    b = setup.batch
    setup.load([call(b, "FUTURE", templateContext={"n": 1}), call(b, "ERROR", error="x")])
    assert rows(setup.engine, "SELECT count(*) FROM etl_listing_pages") == [(1,)]
    errors = Listing({"status": "ERROR"}, shows_every_record=False)
    loader = setup.new_loader()

    loader.load_page(as_page(1, [call(b, "ERROR", error="y")]), errors)  # a change

    listings = rows(setup.engine, "SELECT listing FROM etl_listing_pages")
    assert [r.listing.split(":", 1)[1] for r in listings] == ["status=ERROR"]


def test_stored_definitions_never_miss_one_and_rarely_ask_about_one_never_stored() -> None:
    stored = StoredDefinitions()
    rng = random.Random(0)
    digests = [f"{rng.getrandbits(128):032x}" for _ in range(200_000)]
    mine, others = digests[:100_000], digests[100_000:]
    for definition in mine:
        stored.note(definition, 1)
    stored.note(mine[0], 2)
    stored.note(mine[0], 3)

    known, ask = stored.highest(mine)
    assert known == {mine[0]: 3} and ask == set(mine[1:])  # each stored one: never "none"
    known, ask = stored.highest(others)
    assert len(ask) < 100  # expected about 33 of 100,000 (3 hashes into 2^22 bits)
    assert known == dict.fromkeys(set(others) - ask, 0)
