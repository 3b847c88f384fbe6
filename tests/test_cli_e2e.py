"""End to end through the real CLI: the fake Ultravox API over HTTP, SQLite and PostgreSQL.

Most runs go through `cli.main` in this process (`run_cli`); the installed console script
runs where the process boundary matters: exit codes, stderr, the environment, a bad config.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select

from etl.fake_api import ALL_MEDIUM_KEYS, FakeBatch, FakeUltravox
from etl.load.database import head_revision
from etl.load.schema import (
    etl_batch_runs,
    etl_runs,
    rejected_records,
    scheduled_batches,
    scheduled_call_data_messages,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_call_status_changes,
    scheduled_calls,
)
from tests.conftest import (
    AGENT_ID,
    TEST_API_KEY,
    CliResult,
    add_batch,
    dump_all_tables,
    rows,
    run_console_script,
    write_config,
)
from tests.test_sync_e2e import add_generated_batch, api_view, db_view, snapshot

SIP_PASSWORD_MARK = "s3cr3t-sip-pw-"
"""Every SIP password of the generated data (and of the hand-made calls here) contains it."""

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


# -- helpers ---------------------------------------------------------------------------------


def config_for(
    fake: FakeUltravox,
    tmp_path: Path,
    database_url: str | None,
    batches: list[FakeBatch] | list[tuple[str, str]],
    **api: Any,
) -> Path:
    refs = [(b.agent_id, b.batch_id) if isinstance(b, FakeBatch) else b for b in batches]
    return write_config(
        tmp_path / "etl.toml", fake.base_url, refs, database_url=database_url, **api
    )


def call(tag: str, status: str = "FUTURE", **fields: Any) -> dict[str, Any]:
    """A scheduled call whose definition is unique through its metadata `tag`."""
    return {
        "status": status,
        "callId": None,
        "error": None,
        "medium": {"twilio": {"outgoing": {"to": "+14155550123", "from": "+14155550100"}}},
        "metadata": {"tag": tag},
        **fields,
    }


def fetch(engine: Engine, stmt: Any) -> list[Any]:
    """Rows of a Core statement: typed values (JSON decoded, aware datetimes, booleans)."""
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def calls_by_tag(engine: Engine, batch_id: str) -> dict[str, Any]:
    """scheduled_calls rows of a batch keyed by their metadata `tag` (see `call`)."""
    c = scheduled_calls.c
    return {
        r.metadata["tag"]: r
        for r in fetch(engine, select(scheduled_calls).where(c.batch_id == batch_id))
    }


def batch_runs(engine: Engine, batch_id: str) -> list[Any]:
    t = etl_batch_runs.c
    return fetch(engine, select(etl_batch_runs).where(t.batch_id == batch_id).order_by(t.run_id))


def runs(engine: Engine) -> list[Any]:
    return fetch(engine, select(etl_runs).order_by(etl_runs.c.run_id))


def summary_line(batch: FakeBatch, result: CliResult) -> str:
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(f"batch {batch.batch_id}")]
    return line


def calls_requests(fake: FakeUltravox, batch: FakeBatch) -> int:
    path = f"/scheduled_batches/{batch.batch_id}/scheduled_calls"
    return sum(1 for r in fake.requests if r.path.endswith(path))


def page_payload(results: list[Any], *, total: int | None = None) -> dict[str, Any]:
    """A complete one-page listing, as the API would send it."""
    return {
        "results": results,
        "next": None,
        "previous": None,
        "total": len(results) if total is None else total,
    }


def assert_nothing_written(engine: Engine) -> None:
    """No SQLite file was created; a PostgreSQL database is still without a single table."""
    if engine.dialect.name == "sqlite":
        assert engine.url.database
        assert not Path(engine.url.database).exists()
    else:
        assert inspect(engine).get_table_names() == []


def sip_password_sent(medium: Any) -> bool:
    sip = medium.get("sip") if isinstance(medium, dict) else None
    outgoing = sip.get("outgoing") if isinstance(sip, dict) else None
    return isinstance(outgoing, dict) and bool(outgoing.get("password"))


# -- what lands where ------------------------------------------------------------------------

_ABSENT = object()
_DTMF = {
    "ignore": False,
    "userTextMessage": {"text": "pressed {digits}", "urgency": "URGENCY_SOON"},
}

# tag -> (medium as sent, or _ABSENT; expected scheduled_call_media columns; expected flags)
MEDIUM_CASES: dict[str, tuple[Any, dict[str, Any], dict[str, bool]]] = {
    "twilio": (
        {
            "twilio": {
                "outgoing": {
                    "to": "+14155550101",
                    "from": "+14155550100",
                    "additionalParams": {"record": True},
                }
            }
        },
        {
            "medium_type": "twilio",
            "direction": "outgoing",
            "to_address": "+14155550101",
            "from_address": "+14155550100",
            "additional_params": {"record": True},
        },
        {},
    ),
    "twilio-new-field": (
        {
            "twilio": {
                "outgoing": {
                    "to": "+14155550102",
                    "from": "+14155550100",
                    "machineDetection": "On",
                },
                "dtmfHandling": _DTMF,
            }
        },
        {
            "medium_type": "twilio",
            "direction": "outgoing",
            "to_address": "+14155550102",
            "from_address": "+14155550100",
            "dtmf_handling": _DTMF,
            "extra": {"twilio": {"outgoing": {"machineDetection": "On"}}},
        },
        {},
    ),
    "telnyx": (
        {"telnyx": {"outgoing": {"to": "+12125550103", "from": "+12125550100"}}},
        {
            "medium_type": "telnyx",
            "direction": "outgoing",
            "to_address": "+12125550103",
            "from_address": "+12125550100",
        },
        {},
    ),
    "plivo": (
        {
            "plivo": {
                "outgoing": {
                    "to": "+13125550104<+13125550105",
                    "from": "+13125550100",
                    "additionalParams": {"ring_timeout": 45},
                }
            }
        },
        {
            "medium_type": "plivo",
            "direction": "outgoing",
            "to_address": "+13125550104<+13125550105",
            "from_address": "+13125550100",
            "additional_params": {"ring_timeout": 45},
        },
        {},
    ),
    "exotel": (
        {"exotel": {"dtmfHandling": _DTMF}},
        {"medium_type": "exotel", "dtmf_handling": _DTMF},
        {},
    ),
    "sip-outgoing": (
        {
            "sip": {
                "outgoing": {
                    "to": "sip:alice@example.com",
                    "from": "sip:ultravox@pbx.example.com",
                    "username": "agent07",
                    "password": f"{SIP_PASSWORD_MARK}case",
                }
            }
        },
        {
            "medium_type": "sip",
            "direction": "outgoing",
            "to_address": "sip:alice@example.com",
            "from_address": "sip:ultravox@pbx.example.com",
            "sip_username": "agent07",
            "sip_password_set": True,
        },
        {},
    ),
    "sip-no-password": (
        {"sip": {"outgoing": {"to": "sip:bob@example.com", "username": "agent08"}}},
        {
            "medium_type": "sip",
            "direction": "outgoing",
            "to_address": "sip:bob@example.com",
            "sip_username": "agent08",
            "sip_password_set": False,
        },
        {},
    ),
    "sip-incoming": (
        {"sip": {"incoming": {}}},
        {"medium_type": "sip", "direction": "incoming"},
        {},
    ),
    "server-websocket": (
        {
            "serverWebSocket": {
                "inputSampleRate": 16000,
                "outputSampleRate": 24000,
                "clientBufferSizeMs": 60,
                "mediaIdleTimeout": "30s",
                "dataMessages": {"pong": True, "transcript": False, "callStarted": True},
            }
        },
        {
            "medium_type": "serverWebSocket",
            "input_sample_rate": 16000,
            "output_sample_rate": 24000,
            "client_buffer_size_ms": 60,
            "media_idle_timeout": "30s",
        },
        {"pong": True, "transcript": False, "callStarted": True},
    ),
    "webrtc": (
        {"webRtc": {"dataMessages": {"state": False, "clientToolInvocation": True}}},
        {"medium_type": "webRtc"},
        {"state": False, "clientToolInvocation": True},
    ),
    "webrtc-empty": ({"webRtc": {}}, {"medium_type": "webRtc"}, {}),
    "absent": (_ABSENT, {"medium_type": "webRtc"}, {}),
    "null": (None, {"medium_type": "webRtc"}, {}),
    "unknown-variant": (
        {"vonage": {"outgoing": {"to": "+447700900123", "region": "eu"}}},
        {
            "medium_type": "vonage",
            "extra": {"vonage": {"outgoing": {"to": "+447700900123", "region": "eu"}}},
        },
        {},
    ),
}


def test_every_medium_variant_lands_with_its_type_and_media_columns(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    hand_made = []
    for tag, (medium, _, _) in MEDIUM_CASES.items():
        record = call(tag)
        del record["medium"]
        if medium is not _ABSENT:
            record["medium"] = medium
        hand_made.append(record)
    cases = add_batch(fake_api, hand_made)
    generated = add_generated_batch(fake_api, 40, seed=3, off_spec=True)
    assert any("medium" in c and c["medium"] is None for c in generated.calls)
    config = config_for(fake_api, tmp_path, database_url, [cases, generated])

    result = run_cli("sync", "--config", str(config))
    assert result.exit_code == 0, result.stderr

    by_tag = calls_by_tag(engine, cases.batch_id)
    assert set(by_tag) == set(MEDIUM_CASES)
    media = {r.scheduled_call_id: r._asdict() for r in fetch(engine, select(scheduled_call_media))}
    flags: dict[int, dict[str, bool]] = {}
    for r in fetch(engine, select(scheduled_call_data_messages)):
        flags.setdefault(r.scheduled_call_id, {})[r.message] = r.enabled
    for tag, (_, expected_media, expected_flags) in MEDIUM_CASES.items():
        row = by_tag[tag]
        assert row.medium_type == expected_media["medium_type"], tag
        expected = dict.fromkeys(scheduled_call_media.c.keys()) | expected_media
        expected["scheduled_call_id"] = row.id
        assert media[row.id] == expected, tag
        assert flags.get(row.id, {}) == expected_flags, tag

    # The generated batch: every medium key, absent, null (off-spec: asked for) and an
    # unknown variant.
    assert db_view(engine, generated.batch_id) == api_view(fake_api, generated.batch_id)
    c = scheduled_calls.c
    types = fetch(
        engine,
        select(c.medium_type, scheduled_call_media.c.medium_type)
        .join(scheduled_call_media, scheduled_call_media.c.scheduled_call_id == c.id)
        .where(c.batch_id == generated.batch_id),
    )
    assert len(types) == 40
    assert all(a == b for a, b in types)
    assert {a for a, _ in types} == {*ALL_MEDIUM_KEYS, "vonage"}
    api_flags = sum(
        len(variant.get("dataMessages", {}))
        for record in generated.calls
        for key, variant in (record.get("medium") or {}).items()
        if key in ("webRtc", "serverWebSocket")
    )
    db_flags = rows(
        engine,
        "SELECT count(*) FROM scheduled_call_data_messages m "
        "JOIN scheduled_calls c ON c.id = m.scheduled_call_id WHERE c.batch_id = :b",
        b=generated.batch_id,
    )[0][0]
    assert api_flags > 0
    assert db_flags == api_flags
    password_sent = Counter(sip_password_sent(r.get("medium")) for r in generated.calls)
    stored = Counter(
        bool(r.sip_password_set)
        for r in fetch(
            engine,
            select(scheduled_call_media.c.sip_password_set)
            .join(scheduled_calls, scheduled_calls.c.id == scheduled_call_media.c.scheduled_call_id)
            .where(scheduled_calls.c.batch_id == generated.batch_id),
        )
    )
    assert stored[True] == password_sent[True] > 0


# -- identity, pagination, re-runs -----------------------------------------------------------


def test_a_multi_page_batch_loads_every_call_exactly_once(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # 47 calls in pages of 5: 10 pages; the generated repeats straddle page boundaries.
    batch = add_generated_batch(fake_api, 47, seed=1)
    config = config_for(fake_api, tmp_path, database_url, [batch], page_size=5)

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert calls_requests(fake_api, batch) == 10
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    keys = [r.call_key for r in fetch(engine, select(scheduled_calls.c.call_key))]
    assert len(keys) == len(set(keys)) == 47
    (batch_run,) = batch_runs(engine, batch.batch_id)
    assert (batch_run.status, batch_run.pages, batch_run.fetched, batch_run.api_total) == (
        "succeeded",
        10,
        47,
        47,
    )
    assert (batch_run.inserted, batch_run.updated, batch_run.unchanged) == (47, 0, 0)
    assert summary_line(batch, result) == (
        f"batch {batch.batch_id}: succeeded: scheduled_calls pages=10 fetched=47/47 "
        "inserted=47 updated=0 unchanged=0 removed=0 rejected=0"
    )


@pytest.mark.parametrize("page_size", [100, 1], ids=["one-page", "a-page-each"])
def test_two_identical_calls_in_one_batch_are_two_rows(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    page_size: int,
) -> None:
    # On pages of one, the second twin comes on a later page of a first sync: its number
    # comes from what that sync stored, not from a lookup.
    twin = call("same-number-twice")
    batch = add_batch(fake_api, [twin, call("other"), copy.deepcopy(twin)])
    config = config_for(fake_api, tmp_path, database_url, [batch], page_size=page_size)

    first = run_cli("sync", "--config", str(config))
    assert first.exit_code == 0, first.stderr

    c = scheduled_calls.c
    found = fetch(engine, select(c.id, c.call_key, c.metadata).order_by(c.id))
    twins = sorted(r.call_key for r in found if r.metadata == {"tag": "same-number-twice"})
    assert len(found) == 3
    assert len(twins) == 2
    digest = twins[0].rsplit("#", 1)[0]
    assert twins == [f"{digest}#1", f"{digest}#2"]

    second = run_cli("sync", "--config", str(config))
    assert second.exit_code == 0, second.stderr
    assert "inserted=0 updated=0 unchanged=3" in summary_line(batch, second)
    assert fetch(engine, select(c.id, c.call_key, c.metadata).order_by(c.id)) == found


def test_a_rerun_that_changes_nothing_rewrites_no_row(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 45, seed=2)
    config = config_for(fake_api, tmp_path, database_url, [batch], page_size=10)
    first = run_cli("sync", "--config", str(config))
    assert first.exit_code == 0, first.stderr
    before = snapshot(engine)
    batch_row = fetch(engine, select(scheduled_batches.c.first_seen_at))

    second = run_cli("sync", "--config", str(config))

    assert second.exit_code == 0, second.stderr
    assert snapshot(engine) == before
    assert fetch(engine, select(scheduled_batches.c.first_seen_at)) == batch_row
    assert summary_line(batch, second) == (
        f"batch {batch.batch_id}: succeeded: scheduled_calls pages=5 fetched=45/45 "
        "inserted=0 updated=0 unchanged=45 removed=0 rejected=0"
    )
    assert [(r.status, r.calls_inserted, r.calls_unchanged) for r in runs(engine)] == [
        ("succeeded", 45, 0),
        ("succeeded", 0, 45),
    ]


def test_a_call_placed_later_updates_the_same_row_and_records_its_history(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [call("a"), call("b"), call("c")])
    generated = add_generated_batch(fake_api, 30, seed=4)
    config = config_for(fake_api, tmp_path, database_url, [batch, generated])
    first = run_cli("sync", "--config", str(config))
    assert first.exit_code == 0, first.stderr
    before = calls_by_tag(engine, batch.batch_id)
    generated_ids = {r.id for r in fetch(engine, select(scheduled_calls.c.id))}

    placed = str(uuid.uuid4())
    fake_api.set_call(batch.batch_id, 1, status="SUCCESS", call_id=placed)
    assert fake_api.advance(generated.batch_id, 0.5, seed=1) > 0
    second = run_cli("sync", "--config", str(config))

    assert second.exit_code == 0, second.stderr
    after = calls_by_tag(engine, batch.batch_id)
    b_before, b_after = before["b"], after["b"]
    assert (b_after.status, b_after.call_id) == ("SUCCESS", placed)
    assert b_after.id == b_before.id
    assert b_after.first_seen_at == b_before.first_seen_at
    assert b_after.updated_at > b_before.updated_at
    assert after["a"] == before["a"] and after["c"] == before["c"]
    h = scheduled_call_status_changes.c
    history = fetch(
        engine,
        select(h.run_id, h.from_status, h.to_status, h.call_id)
        .where(h.scheduled_call_id == b_after.id)
        .order_by(h.id),
    )
    first_run, second_run = (r.run_id for r in runs(engine))
    assert [tuple(r) for r in history] == [
        (first_run, None, "FUTURE", None),
        (second_run, "FUTURE", "SUCCESS", placed),
    ]
    assert "inserted=0 updated=1 unchanged=2" in summary_line(batch, second)

    # Every transition of the generated batch also updated rows in place.
    assert {r.id for r in fetch(engine, select(scheduled_calls.c.id))} == generated_ids
    assert db_view(engine, generated.batch_id) == api_view(fake_api, generated.batch_id)


def test_a_call_missing_from_a_complete_listing_is_removed_and_cleared_when_back(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [call(tag) for tag in "abcd"])
    config = config_for(fake_api, tmp_path, database_url, [batch])
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    original = calls_by_tag(engine, batch.batch_id)

    gone = batch.calls.pop(1)
    second = run_cli("sync", "--config", str(config))
    assert second.exit_code == 0, second.stderr
    removed = calls_by_tag(engine, batch.batch_id)
    assert removed["b"].removed_at is not None
    assert [t for t, r in removed.items() if r.removed_at is not None] == ["b"]
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert "removed=1" in summary_line(batch, second)
    assert batch_runs(engine, batch.batch_id)[-1].removed == 1
    assert runs(engine)[-1].calls_removed == 1

    batch.calls.insert(1, gone)
    third = run_cli("sync", "--config", str(config))
    assert third.exit_code == 0, third.stderr
    back = calls_by_tag(engine, batch.batch_id)
    assert back["b"].removed_at is None
    assert back["b"].id == original["b"].id
    assert back["b"].first_seen_at == original["b"].first_seen_at
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert "removed=0" in summary_line(batch, third)
    # Its status never changed: the first sighting is its only history row.
    h = scheduled_call_status_changes.c
    assert len(fetch(engine, select(h.id).where(h.scheduled_call_id == back["b"].id))) == 1


def test_a_listing_that_disagrees_with_the_api_total_marks_nothing_removed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [call(tag) for tag in "abcde"])
    config = config_for(fake_api, tmp_path, database_url, [batch])
    assert run_cli("sync", "--config", str(config)).exit_code == 0

    batch.calls.pop(2)
    # The listing says 5 calls but holds 4: not a listing to remove anything by.
    fake_api.inject_payload(page_payload(list(batch.calls), total=5), path_contains="calls")
    second = run_cli("sync", "--config", str(config))

    assert second.exit_code == 0, second.stderr
    assert all(r.removed_at is None for r in calls_by_tag(engine, batch.batch_id).values())
    last = batch_runs(engine, batch.batch_id)[-1]
    assert (last.fetched, last.api_total, last.removed) == (4, 5, 0)
    assert "fetched=4/5" in summary_line(batch, second)
    assert "no record is marked removed" in second.stderr

    # The next consistent listing does remove it.
    third = run_cli("sync", "--config", str(config))
    assert third.exit_code == 0, third.stderr
    assert [t for t, r in calls_by_tag(engine, batch.batch_id).items() if r.removed_at] == ["c"]


# -- the API misbehaving ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429-retry-after-7", "503", "connection-reset"])
def test_a_transient_failure_is_retried_and_all_data_loads(
    fault: str,
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    retry_waits: list[float],
    tmp_path: Path,
) -> None:
    batch = add_generated_batch(fake_api, 25, seed=5)
    config = config_for(fake_api, tmp_path, database_url, [batch], page_size=10)
    # Strike in the middle of the listing: the second page's request carries a cursor.
    if fault == "429-retry-after-7":
        fake_api.inject(429, retry_after="7", path_contains="cursor=")
    elif fault == "503":
        fake_api.inject(503, path_contains="cursor=")
    else:
        fake_api.inject_connection_reset(path_contains="cursor=")

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert calls_requests(fake_api, batch) == 4  # three pages, one of them twice
    assert len(retry_waits) == 1
    if fault == "429-retry-after-7":
        assert retry_waits == [7.0]
        assert "HTTP 429" in result.stderr and "retrying in 7.0s" in result.stderr
    else:
        # The default backoff: 0.5 s, plus up to 0.5 s of jitter.
        assert 0.5 <= retry_waits[0] <= 1.0
    assert summary_line(batch, result) == (
        f"batch {batch.batch_id}: succeeded: scheduled_calls pages=3 fetched=25/25 "
        "inserted=25 updated=0 unchanged=0 removed=0 rejected=0"
    )


def test_a_listing_that_breaks_off_fails_its_batch_and_marks_nothing_removed(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    retry_waits: list[float],
    tmp_path: Path,
) -> None:
    batch = add_generated_batch(fake_api, 25, seed=7)
    other = add_generated_batch(fake_api, 4, seed=8)
    config = config_for(fake_api, tmp_path, database_url, [batch, other], max_attempts=2)
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    del batch.calls[-3:]
    placed = str(uuid.uuid4())
    fake_api.set_call(batch.batch_id, 5, status="SUCCESS", call_id=placed)  # on page 1
    fake_api.set_call(other.batch_id, 2, status="PENDING")
    # Page 2 of the batch answers 503 to both attempts.
    fake_api.inject(503, times=2, path_contains="cursor=")

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 1
    assert len(retry_waits) == 1
    failed, synced = batch_runs(engine, batch.batch_id)[-1], batch_runs(engine, other.batch_id)[-1]
    assert (failed.status, failed.pages, failed.fetched, failed.removed) == ("failed", 1, 10, 0)
    assert f"{batch.batch_id}/scheduled_calls failed after 2 attempts: HTTP 503" in failed.error
    assert synced.status == "succeeded"
    assert db_view(engine, other.batch_id) == api_view(fake_api, other.batch_id)
    c = scheduled_calls.c
    stored = fetch(
        engine,
        select(c.status, c.call_id, c.removed_at).where(c.batch_id == batch.batch_id),
    )
    # The committed first page stays; the three calls gone from the API are not removed.
    assert len(stored) == 25
    assert all(r.removed_at is None for r in stored)
    assert ("SUCCESS", placed) in [(r.status, r.call_id) for r in stored]
    assert runs(engine)[-1].status == "partial"


def test_a_refused_api_key_exits_1_and_never_shows_the_key(
    fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    batches = [add_generated_batch(fake_api, 5, seed=n) for n in range(2)]
    config = config_for(fake_api, tmp_path, database_url, batches)
    wrong_key = "wrong-key-0d5e8b2a-keep-it-secret"

    result = run_console_script(
        "sync", "--config", str(config), "-v", env={"ULTRAVOX_API_KEY": wrong_key}
    )

    assert result.exit_code == 1
    assert "refused the API key" in result.stderr
    assert "ULTRAVOX_API_KEY" in result.stderr
    for output in (result.stdout, result.stderr):
        assert wrong_key not in output
        assert TEST_API_KEY not in output
    # Nothing else could succeed, so the run stops at once: batches already started on other
    # worker threads made one request each, and none made a second.
    paths = [r.path for r in fake_api.requests]
    assert 1 <= len(paths) <= len(batches) and len(set(paths)) == len(paths)
    (run,) = runs(engine)
    assert run.status == "failed"
    assert "refused the API key" in run.error
    records = [batch_runs(engine, b.batch_id)[0] for b in batches]
    assert [r.status for r in records] == ["failed", "failed"]
    for record in records:  # refused itself, or never started because another one was
        assert "refused the API key" in record.error or record.error == (
            "not attempted: the API key was refused"
        )
    assert rows(engine, "SELECT count(*) FROM scheduled_calls")[0][0] == 0
    assert wrong_key not in dump_all_tables(engine)


def test_a_missing_batch_fails_alone_and_the_run_is_partial(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    good = [add_generated_batch(fake_api, size, seed=n) for n, size in enumerate((12, 21))]
    missing = str(uuid.uuid4())
    config = config_for(
        fake_api,
        tmp_path,
        database_url,
        [(AGENT_ID, good[0].batch_id), (AGENT_ID, missing), (AGENT_ID, good[1].batch_id)],
    )

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 1
    for batch in good:
        assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
        assert batch_runs(engine, batch.batch_id)[0].status == "succeeded"
    (failed,) = batch_runs(engine, missing)
    assert failed.status == "failed"
    assert "not found" in failed.error and "404" in failed.error
    (run,) = runs(engine)
    assert (run.status, run.batches_ok, run.batches_failed) == ("partial", 2, 1)
    assert (run.calls_fetched, run.calls_inserted) == (33, 33)
    assert fetch(engine, select(scheduled_batches.c.batch_id).order_by("batch_id")) == sorted(
        (b.batch_id,) for b in good
    )
    assert f"batch {missing}: failed; error: " in result.stdout
    assert "run 1: partial: 2 of 3 batches synced" in result.stdout


def test_a_rejected_record_is_kept_aside_and_the_rest_of_its_page_loads(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [call(f"call-{n}") for n in range(6)])
    config = config_for(fake_api, tmp_path, database_url, [batch])
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    before = calls_by_tag(engine, batch.batch_id)

    fake_api.set_call(batch.batch_id, 0, status="PENDING")
    bad = {**batch.calls[3], "metadata": ["not", "an", "object"], "status": "PENDING"}
    results = [*batch.calls[:3], bad, *batch.calls[4:]]
    fake_api.inject_payload(page_payload(results), path_contains="scheduled_calls")
    second = run_cli("sync", "--config", str(config))

    assert second.exit_code == 0, second.stderr  # a rejected record does not fail the run
    after = calls_by_tag(engine, batch.batch_id)
    assert after["call-0"].status == "PENDING"  # the rest of the page loaded
    # The listing was incomplete: the call behind the bad record is kept, as it was.
    assert after["call-3"] == before["call-3"]
    r = rejected_records.c
    (rejected,) = fetch(
        engine, select(r.run_id, r.batch_id, r.page, r.position, r.reason, r.payload)
    )
    assert tuple(rejected) == (
        runs(engine)[-1].run_id,
        batch.batch_id,
        1,
        3,
        "'metadata' is neither an object nor null",
        bad,
    )
    last = batch_runs(engine, batch.batch_id)[-1]
    assert (last.fetched, last.updated, last.unchanged, last.rejected, last.removed) == (
        6,
        1,
        4,
        1,
        0,
    )
    assert "rejected=1" in summary_line(batch, second)
    assert "record 3 rejected: 'metadata' is neither an object nor null" in second.stderr


def test_a_new_status_value_is_stored_as_sent_with_a_warning(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [call("a"), call("b", "CANCELLED"), call("c", "CANCELLED")])
    config = config_for(fake_api, tmp_path, database_url, [batch])

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    stored = calls_by_tag(engine, batch.batch_id)
    assert {t: r.status for t, r in stored.items()} == {
        "a": "FUTURE",
        "b": "CANCELLED",
        "c": "CANCELLED",
    }
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    warning = "new status value 'CANCELLED' stored as sent"
    assert result.stderr.count(warning) == 1
    h = scheduled_call_status_changes.c
    assert sorted(r.to_status for r in fetch(engine, select(h.to_status))) == [
        "CANCELLED",
        "CANCELLED",
        "FUTURE",
    ]


# -- secrets ---------------------------------------------------------------------------------


def test_no_sip_password_or_api_key_is_stored_or_logged(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    capture_all_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = add_generated_batch(fake_api, 40, seed=6)
    assert SIP_PASSWORD_MARK in json.dumps(batch.calls)
    # A rejected record carrying a SIP password: rejected_records keeps the record, not it.
    bad = {**call("bad", metadata=["x"]), "batchId": batch.batch_id}
    bad["medium"] = MEDIUM_CASES["sip-outgoing"][0]
    fake_api.inject_payload(page_payload([*batch.calls, bad]), path_contains="scheduled_calls")
    config = config_for(fake_api, tmp_path, database_url, [batch], page_size=100)

    result = run_cli("sync", "-v", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert rows(engine, "SELECT count(*) FROM rejected_records")[0][0] == 1
    dumped = dump_all_tables(engine)
    assert "sip:alice@example.com" in dumped  # the dump holds the SIP media rows
    assert SIP_PASSWORD_MARK not in dumped
    assert TEST_API_KEY not in dumped
    assert batch.webhook_secret and batch.webhook_secret not in dumped
    logged = "\n".join(
        [
            *(f"{r.name} {r.getMessage()} {r.args!r}" for r in capture_all_logs.records),
            result.stderr,
        ]
    )
    assert "urllib3" in {r.name.split(".")[0] for r in capture_all_logs.records}
    assert "page 1 with 41 results" in logged
    for output in (logged, result.stdout):
        assert SIP_PASSWORD_MARK not in output
        assert TEST_API_KEY not in output


# -- configuration and the database ----------------------------------------------------------


@pytest.mark.parametrize(
    "problem", ["missing file", "unknown key", "malformed UUID", "missing API key"]
)
def test_a_bad_config_exits_2_with_one_line_and_writes_nothing(
    problem: str, fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 5)
    config = config_for(fake_api, tmp_path, database_url, [batch])
    env = {"ULTRAVOX_API_KEY": TEST_API_KEY}
    if problem == "missing file":
        config = tmp_path / "nowhere.toml"
        expected = f"{config}: config file not found"
    elif problem == "unknown key":
        config.write_text(config.read_text().replace("page_size", "page_sise"))
        expected = "[api] unknown key 'page_sise'"
    elif problem == "malformed UUID":
        config.write_text(config.read_text().replace(batch.batch_id, "batch-0001"))
        expected = "[[batches]] #1: batch_id 'batch-0001' is not a UUID"
    else:
        env = {}
        expected = "ULTRAVOX_API_KEY is not set"

    result = run_console_script(
        "sync", "--config", str(config), "--database-url", database_url, env=env
    )

    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ultravox-etl: config error: ")
    assert expected in lines[0]
    assert fake_api.requests == []
    assert_nothing_written(engine)


def test_the_console_script_prints_a_summary_line_per_batch(
    fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    batches = [add_generated_batch(fake_api, n, seed=n) for n in (25, 7, 0)]
    config = config_for(fake_api, tmp_path, database_url, batches)

    result = run_console_script(
        "sync", "--config", str(config), env={"ULTRAVOX_API_KEY": TEST_API_KEY}
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"batch {batches[0].batch_id}: succeeded: scheduled_calls pages=3 fetched=25/25 "
        "inserted=25 updated=0 unchanged=0 removed=0 rejected=0",
        f"batch {batches[1].batch_id}: succeeded: scheduled_calls pages=1 fetched=7/7 inserted=7 "
        "updated=0 unchanged=0 removed=0 rejected=0",
        f"batch {batches[2].batch_id}: succeeded: scheduled_calls pages=1 fetched=0/0 inserted=0 "
        "updated=0 unchanged=0 removed=0 rejected=0",
        "run 1: succeeded: 3 of 3 batches synced",
    ]
    for batch in batches:
        assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert TEST_API_KEY not in result.stdout + result.stderr


def test_the_database_url_environment_variable_and_flag_override_the_config_file(
    fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 8)
    from_file = tmp_path / "from-file.db"
    from_env = tmp_path / "from-env.db"
    config = config_for(fake_api, tmp_path, f"sqlite:///{from_file}", [batch])
    key = {"ULTRAVOX_API_KEY": TEST_API_KEY}

    by_env = run_console_script(
        "sync", "--config", str(config), env={**key, "ULTRAVOX_ETL_DATABASE_URL": database_url}
    )
    assert by_env.exit_code == 0, by_env.stderr
    assert not from_file.exists()
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert len(runs(engine)) == 1

    by_flag = run_console_script(
        "sync",
        "--config",
        str(config),
        "--database-url",
        database_url,
        env={**key, "ULTRAVOX_ETL_DATABASE_URL": f"sqlite:///{from_env}"},
    )
    assert by_flag.exit_code == 0, by_flag.stderr
    assert not from_file.exists() and not from_env.exists()
    assert [r.calls_unchanged for r in runs(engine)] == [0, 8]


def test_migrate_creates_the_schema_without_an_api_key(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 6)
    config = config_for(fake_api, tmp_path, database_url, [batch])

    result = run_cli("migrate", "--config", str(config), api_key=None)

    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().endswith("is at head")
    assert set(inspect(engine).get_table_names()) >= CONTRACT_TABLES
    assert rows(engine, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert rows(engine, "SELECT count(*) FROM etl_runs") == [(0,)]
    assert fake_api.requests == []
    assert run_cli("migrate", "--config", str(config), api_key=None).exit_code == 0

    synced = run_cli("sync", "--no-migrate", "--config", str(config))
    assert synced.exit_code == 0, synced.stderr
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)


def test_sync_no_migrate_on_an_empty_database_refuses_and_writes_nothing(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 6)
    config = config_for(fake_api, tmp_path, database_url, [batch])

    result = run_cli("sync", "--no-migrate", "--config", str(config))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "ultravox-etl: database error:" in result.stderr
    assert "run `ultravox-etl migrate`" in result.stderr
    assert fake_api.requests == []
    assert_nothing_written(engine)


def test_metadata_rows_hold_strings_as_sent_and_other_values_as_json_text(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(
        fake_api,
        [call("plain"), call("typed", metadata={"tag": "typed", "n": 3, "list": [1, "x"]})],
    )
    config = config_for(fake_api, tmp_path, database_url, [batch])
    assert run_cli("sync", "--config", str(config)).exit_code == 0

    m = scheduled_call_metadata.c
    stored = {(r.key, r.value) for r in fetch(engine, select(m.key, m.value))}
    assert stored == {("tag", "plain"), ("tag", "typed"), ("n", "3"), ("list", '[1,"x"]')}
    assert rows(engine, "SELECT count(*) FROM scheduled_call_metadata") == [(4,)]
