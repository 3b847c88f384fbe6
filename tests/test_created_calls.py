"""The created-calls stream: Call records normalized purely, then synced end to end.

The unit tests feed `normalize_call` records shaped by the official OpenAPI schema (`Call`);
the end-to-end tests run the real CLI against the fake API, whose Calls follow their
scheduled calls (a callId appears → a Call exists; billing and summaries arrive a step later),
on every database.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from etl.fake_api import SECRET_MARK, FakeBatch, FakeUltravox, call_secrets, generate_calls
from etl.load.keyed_rows import SeenKeys
from etl.load.schema import call_metadata, calls
from etl.normalize.json_values import RecordError
from etl.streams import page_size_of
from etl.streams.created_calls import (
    CREATED_CALLS,
    normalize_call,
    record_digest,
    without_call_secrets,
)
from etl.streams.scheduled_calls import SCHEDULED_CALLS
from tests.conftest import AGENT_ID, TEST_API_KEY, dump_all_tables, rows, write_config
from tests.test_sync_e2e import snapshot

CALL_ID = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
BOTH_STREAMS = {"created_calls": True}

# A Call as the schema describes it: every required property, and the secrets it carries.
DOC_CALL: dict[str, Any] = {
    "callId": CALL_ID.upper(),
    "clientVersion": None,
    "created": "2026-05-01T10:00:00.123456Z",
    "joined": "2026-05-01T10:00:05+02:00",
    "ended": "2026-05-01T10:03:20.5Z",
    "endReason": "hangup",
    "billedDuration": "195.377s",
    "billedSideInputTokens": 1200,
    "billedSideOutputTokens": 845,
    "billingStatus": "BILLING_STATUS_BILLED",
    "firstSpeaker": "FIRST_SPEAKER_USER",
    "firstSpeakerSettings": {"user": {}},
    "initialOutputMedium": "MESSAGE_MEDIUM_VOICE",
    "initialState": {},
    "joinUrl": "wss://voice.ultravox.ai/calls/x?token=secret-join-token",
    "languageHint": "en-US",
    "maxDuration": "3600s",
    "medium": {"sip": {"outgoing": {"to": "sip:a@example.com", "password": "secret-sip-pw"}}},
    "model": "ultravox-v0.7",
    "recordingEnabled": False,
    "voice": "Mark",
    "shortSummary": "Booked a table.",
    "summary": "The caller booked a table for two.",
    "agent": {"agentId": AGENT_ID, "name": "Booker"},
    "agentId": AGENT_ID,
    "experimentalSettings": None,
    "metadata": {"campaign": "spring", "customer": "c-1"},
    "requestContext": {},
    "callbacks": {
        "ended": {"url": "https://hooks.example.com/ended", "secrets": ["secret-callback"]},
    },
    "dataConnectionConfig": {
        "websocketUrl": "wss://data.example.com",
        "headers": {"Authorization": "Bearer secret-header"},
    },
    "sipDetails": {"billedDuration": "196s", "terminationReason": "SIP_TERMINATION_NORMAL"},
    "futureField": {"kept": True},
}
SECRETS = ("secret-join-token", "secret-sip-pw", "secret-callback", "secret-header")


# -- normalization --------------------------------------------------------------------------


def test_a_documented_call_becomes_its_columns() -> None:
    rows_ = normalize_call(DOC_CALL, record_digest(DOC_CALL), False)

    v = rows_.values
    assert rows_.key == CALL_ID
    assert v["created_at"] == datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert v["joined_at"] == datetime(2026, 5, 1, 8, 0, 5, tzinfo=UTC)  # to UTC
    assert v["ended_at"] == datetime(2026, 5, 1, 10, 3, 20, 500000, tzinfo=UTC)
    assert v["billed_duration_seconds"] == Decimal("195.377")
    assert v["max_duration_seconds"] == Decimal("3600")
    assert v["sip_billed_duration_seconds"] == Decimal("196")
    assert v["sip_termination_reason"] == "SIP_TERMINATION_NORMAL"
    assert (v["end_reason"], v["billing_status"]) == ("hangup", "BILLING_STATUS_BILLED")
    assert (v["billed_side_input_tokens"], v["billed_side_output_tokens"]) == (1200, 845)
    assert (v["short_summary"], v["medium_type"], v["model"], v["voice"]) == (
        "Booked a table.",
        "sip",
        "ultravox-v0.7",
        "Mark",
    )
    assert (v["recording_enabled"], v["join_url_set"], v["agent_id"]) == (False, True, AGENT_ID)
    assert json.loads(v["metadata"]) == DOC_CALL["metadata"]
    assert rows_.children["call_metadata"] == (("campaign", "spring"), ("customer", "c-1"))
    extra = json.loads(v["extra"])
    # Everything no column holds, as sent: nothing lost but the secrets.
    assert extra["futureField"] == {"kept": True}
    assert extra["agent"] == DOC_CALL["agent"]
    assert extra["medium"] == {"sip": {"outgoing": {"to": "sip:a@example.com"}}}
    assert extra["callbacks"] == {"ended": {"url": "https://hooks.example.com/ended"}}
    assert extra["dataConnectionConfig"] == {"websocketUrl": "wss://data.example.com"}
    assert "sipDetails" not in extra and "billedDuration" not in extra and "joinUrl" not in extra
    assert rows_.new_values == frozenset()


def test_no_secret_is_in_the_rows_the_digest_or_a_rejected_payload() -> None:
    rows_ = normalize_call(DOC_CALL, record_digest(DOC_CALL), True)
    text = repr(rows_) + json.dumps(without_call_secrets(DOC_CALL))
    for secret in SECRETS:
        assert secret not in text
    # The digest does not hash a secret: another secret, the same digest.
    other = json.loads(json.dumps(DOC_CALL).replace("secret-", "other-secret-"))
    assert record_digest(other) == record_digest(DOC_CALL)
    assert record_digest({**DOC_CALL, "summary": "changed"}) != record_digest(DOC_CALL)
    # Whether a join URL was sent is a column, so the digest sees it come or go.
    assert record_digest({**DOC_CALL, "joinUrl": None}) != record_digest(DOC_CALL)


def test_values_a_column_cannot_hold_stay_in_extra() -> None:
    record = {
        **DOC_CALL,
        "billedDuration": "about three minutes",
        "billedSideInputTokens": 2**40,
        "ended": "yesterday",
        "endReason": "operator_transfer",
        "recordingEnabled": "yes",
    }
    rows_ = normalize_call(record, record_digest(record), False)
    v, extra = rows_.values, json.loads(rows_.values["extra"])
    assert (
        v.get("billed_duration_seconds") is None
        and extra["billedDuration"] == "about three minutes"
    )
    assert v.get("billed_side_input_tokens") is None and extra["billedSideInputTokens"] == 2**40
    assert v.get("ended_at") is None and extra["ended"] == "yesterday"
    assert v.get("recording_enabled") is None and extra["recordingEnabled"] == "yes"
    # A new end reason is stored as sent, and reported.
    assert v["end_reason"] == "operator_transfer"
    assert rows_.new_values == {("endReason", "operator_transfer")}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({**DOC_CALL, "callId": None}, "missing 'callId'"),
        ({**DOC_CALL, "callId": "x" * 65}, "missing 'callId', or longer than 64 characters"),
        ({**DOC_CALL, "requestContext": {"n": float("nan")}}, "holds a number JSON cannot"),
    ],
    ids=["not-an-object", "no-call-id", "call-id-too-long", "nan"],
)
def test_a_call_that_cannot_be_stored_is_rejected(record: Any, reason: str) -> None:
    with pytest.raises(RecordError, match=reason.replace("(", r"\(")):
        normalize_call(record, record_digest(record), True)


# -- end to end -------------------------------------------------------------------------------


def add_campaign(fake: FakeUltravox, size: int, *, seed: int = 0) -> FakeBatch:
    batch_id = str(uuid.uuid4())
    return fake.add_batch(
        AGENT_ID,
        batch_id,
        generate_calls(batch_id, size, seed=seed),
        created="2026-05-01T09:00:00Z",
    )


def utc(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    return value


def seconds(value: Any) -> float | None:
    if isinstance(value, str):
        value = value.removesuffix("s")
    return None if value is None else round(float(value), 6)


def api_outcomes(fake: FakeUltravox, batch_id: str) -> dict[str, tuple[Any, ...]]:
    """The outcome columns of each Call the API lists for the batch, by callId."""
    return {
        call["callId"].lower(): (
            utc(call["created"]),
            utc(call["joined"]),
            utc(call["ended"]),
            call["endReason"],
            seconds(call["billedDuration"]),
            call["billingStatus"],
            call["shortSummary"],
            call["summary"],
        )
        for call in fake.created_calls(batch_id)
    }


def db_outcomes(engine: Engine, batch_id: str) -> dict[str, tuple[Any, ...]]:
    k = calls.c
    found = fetch(
        engine,
        select(
            k.call_id,
            k.created_at,
            k.joined_at,
            k.ended_at,
            k.end_reason,
            k.billed_duration_seconds,
            k.billing_status,
            k.short_summary,
            k.summary,
        ).where((k.batch_id == batch_id) & k.removed_at.is_(None)),
    )
    return {r[0]: (*map(utc, r[1:4]), r[4], seconds(r[5]), *r[6:]) for r in found}


def fetch(engine: Engine, stmt: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def calls_snapshot(engine: Engine) -> dict[str, Any]:
    version = "xmin::text AS v, " if engine.dialect.name == "postgresql" else ""
    taken: dict[str, Any] = {
        t: sorted(map(tuple, rows(engine, f"SELECT {version}* FROM {t}")), key=str)
        for t in ("calls", "call_metadata")
    }
    return {**taken, **snapshot(engine)}


def test_calls_equal_the_api_as_statuses_move_and_a_rerun_rewrites_nothing(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batches = [add_campaign(fake_api, 60, seed=n) for n in range(2)]
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(AGENT_ID, b.batch_id) for b in batches],
        database_url=database_url,
        sync=BOTH_STREAMS,
    )
    seen_pending = False
    for step in range(4):  # the statuses move; billing and summaries arrive a step later
        result = run_cli("sync", "--config", str(config))
        assert result.exit_code == 0, result.stderr
        for batch in batches:
            api = api_outcomes(fake_api, batch.batch_id)
            assert api, "the fake created calls"
            assert db_outcomes(engine, batch.batch_id) == api
            seen_pending |= any(o[5] == "BILLING_STATUS_PENDING" for o in api.values())
        fake_api.advance_batches(0.3, seed=step + 1)
    assert seen_pending, "some calls were synced while their billing was pending"

    synced = run_cli("sync", "--config", str(config))
    assert synced.exit_code == 0, synced.stderr
    before = calls_snapshot(engine)
    again = run_cli("sync", "--config", str(config))

    assert again.exit_code == 0, again.stderr
    assert calls_snapshot(engine) == before
    # Every batch either listed both streams and changed nothing, or (ended, everything
    # final, billed and summarized) was skipped at the cost of one request.
    for batch in batches:
        line = next(ln for ln in again.stdout.splitlines() if batch.batch_id in ln)
        listed = len(fake_api.created_calls(batch.batch_id))
        assert (
            "calls pages=" in line
            and f"fetched={listed}/{listed} inserted=0 updated=0 unchanged={listed}" in line
        ) or (
            line.startswith(f"batch {batch.batch_id}: skipped (")
            and f"calls: ended; all {listed} stored calls are billed, with their summaries" in line
        ), line


def test_created_calls_are_asked_in_smaller_pages_than_scheduled_calls(
    fake_api: FakeUltravox, tmp_path: Path, run_cli: Any
) -> None:
    batch = add_campaign(fake_api, 1500)
    listed = len(fake_api.created_calls(batch.batch_id))
    assert listed > CREATED_CALLS.max_page_size  # type: ignore[operator]
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(AGENT_ID, batch.batch_id)],
        database_url=f"sqlite:///{tmp_path / 'etl.db'}",
        sync=BOTH_STREAMS,
        page_size=1000,
    )

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if batch.batch_id in ln)
    assert "scheduled_calls pages=2 fetched=1500/1500 inserted=1500 " in line, line
    pages = -(-listed // 250)
    assert f"calls pages={pages} fetched={listed}/{listed} inserted={listed} " in line, line
    assert page_size_of(CREATED_CALLS, 1000) == 250
    assert page_size_of(CREATED_CALLS, 100) == 100
    assert page_size_of(SCHEDULED_CALLS, 1000) == 1000


def test_a_call_deleted_by_retention_is_marked_removed_and_its_metadata_kept(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_campaign(fake_api, 40)
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(AGENT_ID, batch.batch_id)],
        database_url=database_url,
        sync=BOTH_STREAMS,
    )
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    gone = next(c["callId"] for c in fake_api.created_calls(batch.batch_id) if c["metadata"])
    fake_api.remove_created_call(batch.batch_id, gone)

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    k = calls.c
    removed = fetch(engine, select(k.call_id).where(k.removed_at.is_not(None)))
    assert [r.call_id for r in removed] == [gone.lower()]
    assert fetch(engine, select(call_metadata.c.key).where(call_metadata.c.call_id == gone.lower()))
    assert db_outcomes(engine, batch.batch_id) == api_outcomes(fake_api, batch.batch_id)


def test_no_secret_of_a_call_reaches_the_database_or_the_logs(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    capture_all_logs: pytest.LogCaptureFixture,
) -> None:
    batch = add_campaign(fake_api, 40, seed=3)
    fake_api.advance_batches(0.5, seed=1)  # calls in both phases: pending and billed
    # A hand-made call whose record is rejected, carrying every secret.
    fake_api.add_created_call(
        batch.batch_id, {**DOC_CALL, "callId": str(uuid.uuid4()), "metadata": {"n": 1e400}}
    )
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(AGENT_ID, batch.batch_id)],
        database_url=database_url,
        sync=BOTH_STREAMS,
    )
    planted = {s for c in fake_api.created_calls(batch.batch_id) for s in call_secrets(c)}
    planted |= set(SECRETS)
    assert any(SECRET_MARK in s for s in planted) and len(planted) > 10

    result = run_cli("sync", "-v", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert rows(engine, "SELECT count(*) FROM rejected_records WHERE stream = 'calls'") == [(1,)]
    stored = dump_all_tables(engine)
    logged = "\n".join(
        [*(f"{r.getMessage()} {r.args!r}" for r in capture_all_logs.records), result.stderr]
    )
    for secret in sorted(planted):
        assert secret not in stored, secret
        assert secret not in logged, secret
        assert secret not in result.stdout, secret
    assert TEST_API_KEY not in stored + logged
    assert rows(engine, "SELECT count(*) FROM calls WHERE join_url_set IS NOT NULL")[0][0] > 0


def test_seen_keys_know_every_key_added_across_merges_and_no_other() -> None:
    seen = SeenKeys()
    # Numbers alike in their high half, and random ones (a callId is a random UUID).
    rng = random.Random(0)
    ids = [str(uuid.UUID(int=n * 7_919_993_123_456_789 + 1)) for n in range(40_000)]
    ids += [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(40_000)]
    added, others = ids[::2], ids[1::2]  # 40,000 each: the added ones cross two merges
    lettered = next(key for key in added if key != key.upper())
    odd = ["not-a-uuid", lettered.upper(), added[1][:-1], ""]
    seen.update(added[:20_000])
    for key in [*added[20_000:], odd[0]]:
        seen.add(key)

    assert all(key in seen for key in added) and odd[0] in seen
    assert not any(key in seen for key in [*others, *odd[1:]])
