"""End to end through the real CLI: status history, batch discovery and details, incremental
skipping and status filters, against the fake API over HTTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from etl.domain import status_rank
from etl.fake_api import FakeBatch, FakeUltravox, generate_calls
from etl.load.schema import (
    etl_batch_runs,
    etl_runs,
    scheduled_batches,
    scheduled_call_status_changes,
    scheduled_calls,
)
from etl.streams.scheduled_calls import definition_digest
from tests.conftest import AGENT_ID, CliResult, dump_all_tables, write_config
from tests.test_sync_e2e import add_generated_batch, api_view, db_view, snapshot

OTHER_AGENT = "22222222-3333-4444-8555-666666666666"
UNRELATED_AGENT = "33333333-4444-4555-8666-777777777777"

# -- helpers (also used by tests/test_reporting_views.py) -------------------------------------


def sched_call(
    tag: str,
    status: str = "FUTURE",
    *,
    to: str | None = "+14155550100",
    call_id: str | None = None,
    error: str | None = None,
    campaign: str | None = None,
    medium: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A scheduled call whose definition is unique through its metadata `tag`.

    The medium is twilio outgoing to `to` unless `medium` is given.
    """
    metadata: dict[str, Any] = {"tag": tag}
    if campaign is not None:
        metadata["campaign"] = campaign
    if medium is None:
        medium = {"twilio": {"outgoing": {"to": to, "from": "+14155550199"}}}
    return {
        "status": status,
        "callId": call_id,
        "error": error,
        "medium": medium,
        "metadata": metadata,
    }


def new_batch(
    fake: FakeUltravox,
    agent_id: str,
    calls: Sequence[dict[str, Any]],
    batch_id: str | None = None,
    **fields: Any,
) -> FakeBatch:
    """A batch of hand-made calls (their `batchId` filled in); `fields` as FakeBatch's."""
    batch_id = batch_id or str(uuid.uuid4())
    return fake.add_batch(agent_id, batch_id, [{**c, "batchId": batch_id} for c in calls], **fields)


def sync_config(
    tmp_path: Path,
    fake: FakeUltravox,
    database_url: str,
    *,
    batches: Iterable[FakeBatch | tuple[FakeBatch, Sequence[str]]] = (),
    agents: Iterable[str | tuple[str, Sequence[str]]] = (),
    sync: dict[str, Any] | None = None,
    **api: Any,
) -> Path:
    """A config file with [[batches]] and [[agents]], each with optional `statuses`."""
    path = write_config(
        tmp_path / "etl.toml", fake.base_url, [], database_url=database_url, sync=sync, **api
    )
    lines: list[str] = []

    def statuses_line(statuses: Sequence[str]) -> list[str]:
        return ["statuses = [" + ", ".join(f'"{s}"' for s in statuses) + "]"] if statuses else []

    for entry in batches:
        batch, statuses = entry if isinstance(entry, tuple) else (entry, ())
        lines += ["", "[[batches]]", f'agent_id = "{batch.agent_id}"']
        lines += [f'batch_id = "{batch.batch_id}"', *statuses_line(statuses)]
    for agent in agents:
        agent_id, statuses = agent if isinstance(agent, tuple) else (agent, ())
        lines += ["", "[[agents]]", f'agent_id = "{agent_id}"', *statuses_line(statuses)]
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def synced(run_cli: Any, config: Path, *args: str) -> CliResult:
    """`ultravox-etl sync --config CONFIG ARGS`, which must exit 0."""
    result: CliResult = run_cli("sync", "--config", str(config), *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


_PATH = re.compile(
    r"^/api/agents/(?P<agent>[^/]+)/scheduled_batches(?:/(?P<batch>[^/]+)(?P<calls>/scheduled_calls)?)?$"
)


def request_kinds(fake: FakeUltravox) -> Counter[tuple[str, ...]]:
    """The requests the fake received, as ("list", agent), ("details", batch) or
    ("calls", batch, status filter or "")."""
    kinds: Counter[tuple[str, ...]] = Counter()
    for request in fake.requests:
        match = _PATH.match(request.path)
        assert match is not None, request.path
        if match["batch"] is None:
            kinds["list", match["agent"]] += 1
        elif match["calls"] is None:
            kinds["details", match["batch"]] += 1
        else:
            kinds["calls", match["batch"], request.query.get("status", "")] += 1
    return kinds


def fetch(engine: Engine, stmt: Any) -> list[Any]:
    """Rows of a Core statement: typed values (JSON decoded, aware datetimes, booleans)."""
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def run_ids(engine: Engine) -> list[int]:
    return [r.run_id for r in fetch(engine, select(etl_runs.c.run_id).order_by(etl_runs.c.run_id))]


def run_window(engine: Engine, run_id: int) -> tuple[datetime, datetime]:
    (run,) = fetch(engine, select(etl_runs).where(etl_runs.c.run_id == run_id))
    return run.started_at, run.finished_at


def summary_line(result: CliResult, batch: FakeBatch | str) -> str:
    batch_id = batch if isinstance(batch, str) else batch.batch_id
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(f"batch {batch_id}:")]
    return line


def history_by_tag(engine: Engine, batch_id: str) -> list[tuple[Any, ...]]:
    """(run_id, tag, from_status, to_status, call_id, error) of a hand-made batch's history."""
    h, c = scheduled_call_status_changes.c, scheduled_calls.c
    found = fetch(
        engine,
        select(h.run_id, c.metadata, h.from_status, h.to_status, h.call_id, h.error)
        .join_from(scheduled_call_status_changes, scheduled_calls, h.scheduled_call_id == c.id)
        .where(c.batch_id == batch_id),
    )
    return sorted(
        (r.run_id, r.metadata["tag"], r.from_status, r.to_status, r.call_id, r.error) for r in found
    )


def assert_history_ends_in_current_state(engine: Engine) -> None:
    """Every stored call has history, and its newest row is the call's current state."""
    h, c = scheduled_call_status_changes.c, scheduled_calls.c
    latest: dict[int, tuple[Any, ...]] = {}
    for r in fetch(
        engine, select(h.scheduled_call_id, h.to_status, h.call_id, h.error).order_by(h.id)
    ):
        latest[r.scheduled_call_id] = (r.to_status, r.call_id, r.error)
    current = {
        r.id: (r.status, r.call_id, r.error)
        for r in fetch(engine, select(c.id, c.status, c.call_id, c.error))
    }
    assert latest == current


def api_states(batch: FakeBatch) -> list[tuple[Any, Any, Any]]:
    return [(c["status"], c["callId"], c["error"]) for c in batch.calls]


def expected_changes(
    before: list[tuple[Any, Any, Any]] | None, after: list[tuple[Any, Any, Any]]
) -> Counter[tuple[Any, ...]]:
    """(from_status, to_status, call_id, error) of every call whose state differs."""
    if before is None:
        return Counter((None, *state) for state in after)
    return Counter((old[0], *new) for old, new in zip(before, after, strict=True) if old != new)


def changes_in_run(
    engine: Engine, batch_id: str, run_id: int, *, twins: bool | None = None
) -> Counter[tuple[Any, ...]]:
    """(from_status, to_status, call_id, error) of the run's history rows of the batch; only
    of calls with identical twins (`twins=True`) or without (`twins=False`), if asked."""
    h, c = scheduled_call_status_changes.c, scheduled_calls.c
    query = (
        select(h.from_status, h.to_status, h.call_id, h.error)
        .join_from(scheduled_call_status_changes, scheduled_calls, h.scheduled_call_id == c.id)
        .where((c.batch_id == batch_id) & (h.run_id == run_id))
    )
    if twins is not None:
        shared = (
            select(c.definition_digest)
            .where(c.batch_id == batch_id)
            .group_by(c.definition_digest)
            .having(func.count() > 1)
        )
        in_twins = c.definition_digest.in_(shared)
        query = query.where(in_twins if twins else ~in_twins)
    return Counter(tuple(r) for r in fetch(engine, query))


def batch_row(engine: Engine, batch_id: str) -> Any:
    (row,) = fetch(
        engine, select(scheduled_batches).where(scheduled_batches.c.batch_id == batch_id)
    )
    return row


def parse_api_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# -- 1. status history -----------------------------------------------------------------------

CID_A = "aaaaaaaa-1111-4111-8111-000000000001"
CID_B = "aaaaaaaa-1111-4111-8111-000000000002"
CID_C = "aaaaaaaa-1111-4111-8111-000000000003"
CID_D = "aaaaaaaa-1111-4111-8111-000000000004"
NOT_A_NUMBER = "Call creation failed: 'to' is not a valid phone number"


def test_three_runs_write_one_history_row_per_observed_change_and_no_other(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = new_batch(
        fake_api,
        AGENT_ID,
        [sched_call(f"h{n}") for n in range(1, 6)]
        + [sched_call("h6", "ERROR", error="SIP 486 Busy Here")],
    )
    # A fixed id, so advance() moves the same calls every time.
    generated_id = "bbbbbbbb-2222-4222-8222-000000000040"
    generated = fake_api.add_batch(AGENT_ID, generated_id, generate_calls(generated_id, 40))
    config = sync_config(tmp_path, fake_api, database_url, batches=[batch, generated])
    states = [api_states(generated)]

    first = synced(run_cli, config)
    # status, callId and error change; the others stay as they are.
    fake_api.set_call(batch.batch_id, 0, status="PENDING")
    fake_api.set_call(batch.batch_id, 1, status="SUCCESS", call_id=CID_A)
    fake_api.set_call(batch.batch_id, 2, status="ERROR", error=NOT_A_NUMBER)
    assert fake_api.advance(generated.batch_id, 0.4, seed=1) == 16
    states.append(api_states(generated))
    assert_history_ends_in_current_state(engine)

    second = synced(run_cli, config)
    assert_history_ends_in_current_state(engine)
    fake_api.set_call(batch.batch_id, 0, status="SUCCESS", call_id=CID_B)
    fake_api.set_call(batch.batch_id, 2, status="ERROR", call_id=CID_C, error=NOT_A_NUMBER)
    fake_api.set_call(batch.batch_id, 3, status="EXPIRED")
    fake_api.set_call(batch.batch_id, 5, status="ERROR", error="SIP 503 Service Unavailable")
    assert fake_api.advance(generated.batch_id, 0.4, seed=2) == 16
    assert generated.ended_at is None  # still open: run 4 lists it
    states.append(api_states(generated))

    third = synced(run_cli, config)
    assert_history_ends_in_current_state(engine)
    before_no_change = snapshot(engine)
    fourth = synced(run_cli, config)

    r1, r2, r3, r4 = run_ids(engine)
    assert history_by_tag(engine, batch.batch_id) == sorted(
        [
            (r1, "h1", None, "FUTURE", None, None),
            (r1, "h2", None, "FUTURE", None, None),
            (r1, "h3", None, "FUTURE", None, None),
            (r1, "h4", None, "FUTURE", None, None),
            (r1, "h5", None, "FUTURE", None, None),
            (r1, "h6", None, "ERROR", None, "SIP 486 Busy Here"),
            (r2, "h1", "FUTURE", "PENDING", None, None),
            (r2, "h2", "FUTURE", "SUCCESS", CID_A, None),
            (r2, "h3", "FUTURE", "ERROR", None, NOT_A_NUMBER),
            (r3, "h1", "PENDING", "SUCCESS", CID_B, None),
            (r3, "h3", "ERROR", "ERROR", CID_C, NOT_A_NUMBER),  # only callId changed
            (r3, "h4", "FUTURE", "EXPIRED", None, None),
            (r3, "h6", "ERROR", "ERROR", None, "SIP 503 Service Unavailable"),  # only error
        ]
    )
    # The generated batch: exactly the transitions the API made between the runs, for each
    # call with a definition of its own. Identical calls (twins) are told apart by state
    # only, so which twin made which move is not known; but none moved back.
    twins = {
        n for n, c in enumerate(generated.calls)
        if sum(definition_digest(d) == definition_digest(c) for d in generated.calls) > 1
    }  # fmt: skip
    assert twins, "the generated batch holds identical calls"
    for run_id, before, after in zip((r1, r2, r3), [None, *states[:-1]], states, strict=True):
        singles = [n for n in range(len(after)) if n not in twins]
        expected = expected_changes(
            None if before is None else [before[n] for n in singles], [after[n] for n in singles]
        )
        assert changes_in_run(engine, generated.batch_id, run_id, twins=False) == expected
        moves = changes_in_run(engine, generated.batch_id, run_id, twins=True)
        assert all(old is None or status_rank(new) >= status_rank(old) for old, new, *_ in moves)
    assert sum(changes_in_run(engine, generated.batch_id, r1).values()) == 40
    # A run that observes no change writes no history (and no other row).
    assert changes_in_run(engine, batch.batch_id, r4) == Counter()
    assert changes_in_run(engine, generated.batch_id, r4) == Counter()
    assert snapshot(engine) == before_no_change

    assert "inserted=6 updated=0 unchanged=0" in summary_line(first, batch)
    assert "inserted=0 updated=3 unchanged=3" in summary_line(second, batch)
    assert "inserted=0 updated=4 unchanged=2" in summary_line(third, batch)
    assert "inserted=0 updated=0 unchanged=6" in summary_line(fourth, batch)
    assert "inserted=0 updated=0 unchanged=40" in summary_line(fourth, generated)

    # "When did this call go from FUTURE to SUCCESS" is one query: within run 3, for h1.
    h, c = scheduled_call_status_changes.c, scheduled_calls.c
    (answer,) = fetch(
        engine,
        select(h.from_status, h.observed_at)
        .join_from(scheduled_call_status_changes, scheduled_calls, h.scheduled_call_id == c.id)
        .where((c.call_id == CID_B) & (h.to_status == "SUCCESS")),
    )
    start, end = run_window(engine, r3)
    assert answer.from_status == "PENDING" and start <= answer.observed_at <= end


def test_history_rows_commit_with_their_page_and_a_failed_page_writes_none(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = new_batch(fake_api, AGENT_ID, [sched_call(f"t{n}") for n in range(6)])
    config = sync_config(
        tmp_path, fake_api, database_url, batches=[batch], page_size=3, max_attempts=1
    )
    synced(run_cli, config)
    for n in range(6):
        fake_api.set_call(batch.batch_id, n, status="PENDING")
    fake_api.inject(500, times=1, path_contains="cursor=")  # page 2 fails

    failed = run_cli("sync", "--config", str(config))

    assert failed.exit_code == 1
    assert (
        "failed: scheduled_calls pages=1 fetched=3/6 inserted=0 updated=3 unchanged=0 removed=0"
        in summary_line(failed, batch)
    )
    _, r2 = run_ids(engine)
    run2 = [
        (tag, old, new)
        for run, tag, old, new, _, _ in history_by_tag(engine, batch.batch_id)
        if run == r2
    ]
    assert run2 == [
        ("t0", "FUTURE", "PENDING"),
        ("t1", "FUTURE", "PENDING"),
        ("t2", "FUTURE", "PENDING"),
    ]
    assert_history_ends_in_current_state(engine)

    synced(run_cli, config)
    r3 = run_ids(engine)[-1]
    run3 = [
        (tag, old, new)
        for run, tag, old, new, _, _ in history_by_tag(engine, batch.batch_id)
        if run == r3
    ]
    assert run3 == [
        ("t3", "FUTURE", "PENDING"),
        ("t4", "FUTURE", "PENDING"),
        ("t5", "FUTURE", "PENDING"),
    ]
    assert len(history_by_tag(engine, batch.batch_id)) == 12
    assert_history_ends_in_current_state(engine)


# -- 2 and 3. batch details, discovery -------------------------------------------------------


def test_agents_discover_batches_details_are_kept_and_a_gone_batch_is_marked_removed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    b1 = new_batch(
        fake_api,
        AGENT_ID,
        [sched_call("b1-0", "SUCCESS", call_id=CID_A), sched_call("b1-1", "SUCCESS", call_id=CID_B)]
        + [sched_call(f"b1-{n}") for n in range(2, 5)],
        window_start="2025-03-01T09:00:00Z",
        window_end="2025-03-01T17:30:00.250000Z",
        throttle="10/m",
        paused=True,
        webhook_secret="whsec_do-not-store-b1",
    )
    b2 = new_batch(fake_api, AGENT_ID, [sched_call(f"b2-{n}") for n in range(3)])
    b3 = new_batch(
        fake_api, AGENT_ID, [], ended_at="2025-02-01T00:00:00Z", webhook_url=None,
        webhook_secret="whsec_do-not-store-b3",
    )  # fmt: skip
    unrelated = new_batch(fake_api, UNRELATED_AGENT, [sched_call("x")])
    # [[batches]] names b2, which its agent's list also holds; pages of 2: the list has 2.
    config = sync_config(
        tmp_path, fake_api, database_url, batches=[b2], agents=[AGENT_ID], page_size=2
    )

    first = synced(run_cli, config)

    assert request_kinds(fake_api) == Counter(
        {
            ("list", AGENT_ID): 2,
            ("details", b2.batch_id): 1,  # only the [[batches]] entry asks for its details
            ("calls", b1.batch_id, ""): 3,
            ("calls", b2.batch_id, ""): 2,  # listed once, not once per configuration
            ("calls", b3.batch_id, ""): 1,
        }
    )
    assert {r.batch_id for r in fetch(engine, select(scheduled_batches.c.batch_id))} == {
        b1.batch_id,
        b2.batch_id,
        b3.batch_id,
    }
    # One batch run each, though b2 is both configured and listed.
    assert sorted((r.batch_id, r.status) for r in fetch(engine, select(etl_batch_runs))) == sorted(
        (b.batch_id, "succeeded") for b in (b1, b2, b3)
    )
    assert first.stdout.splitlines()[-1] == "run 1: succeeded: 3 of 3 batches synced"
    for batch in (b1, b2, b3):
        row = batch_row(engine, batch.batch_id)
        api = batch.as_api()
        assert row.agent_id == AGENT_ID
        assert row.created == parse_api_time(api["created"])
        assert row.window_start == parse_api_time(api["windowStart"])
        assert row.window_end == parse_api_time(api["windowEnd"])
        assert row.ended_at == parse_api_time(api["endedAt"])
        assert (row.throttle, row.paused, row.webhook_url) == (
            api["throttle"],
            api["paused"],
            api["webhookUrl"],
        )
        assert (row.total_count, row.completed_count) == (api["totalCount"], api["completedCount"])
        assert row.removed_at is None
    r1 = batch_row(engine, b1.batch_id)
    assert (r1.throttle, r1.paused, r1.total_count, r1.completed_count) == ("10/m", True, 5, 2)
    assert r1.window_end.isoformat() == "2025-03-01T17:30:00.250000+00:00"
    assert batch_row(engine, b3.batch_id).webhook_url is None
    assert (
        batch_row(engine, b2.batch_id).webhook_url
        == f"https://hooks.example.com/ultravox/{b2.batch_id}"
    )
    # webhookSecret is never stored (nor printed).
    stored = dump_all_tables(engine)
    for batch in (b1, b2, b3):
        assert batch.webhook_secret is not None and batch.webhook_secret not in stored
        assert batch.webhook_secret not in first.stdout + first.stderr
    assert "whsec_" not in stored
    assert unrelated.batch_id not in stored

    # A new batch of the agent, and b1 deleted from the API.
    b4 = new_batch(fake_api, AGENT_ID, [sched_call("b4-1"), sched_call("b4-2")])
    fake_api.remove_batch(b1.batch_id)
    fake_api.requests.clear()

    second = synced(run_cli, config)

    assert request_kinds(fake_api) == Counter(
        {
            ("list", AGENT_ID): 2,
            ("details", b2.batch_id): 1,
            ("calls", b2.batch_id, ""): 2,
            ("calls", b4.batch_id, ""): 1,  # b3: ended and listed (empty) in run 1: skipped
        }
    )
    assert summary_line(second, b3) == (
        f"batch {b3.batch_id}: skipped (scheduled_calls: ended; all 0 stored calls are final; "
        "sync --full lists it anyway)"
    )
    assert "succeeded: scheduled_calls pages=1 fetched=2/2 inserted=2" in summary_line(second, b4)
    assert b1.batch_id not in second.stdout
    assert (
        f"batch {b1.batch_id} is gone from agent {AGENT_ID}'s list; marked removed" in second.stderr
    )
    assert second.stdout.splitlines()[-1] == "run 2: succeeded: 3 of 3 batches synced"
    start, end = run_window(engine, 2)
    gone = batch_row(engine, b1.batch_id)
    assert gone.removed_at is not None and start <= gone.removed_at <= end
    new = batch_row(engine, b4.batch_id)
    assert start <= new.first_seen_at <= end and new.total_count == 2 and new.removed_at is None
    assert db_view(engine, b4.batch_id) == api_view(fake_api, b4.batch_id)
    # The removed batch's calls are kept as they were.
    c = scheduled_calls.c
    kept = fetch(engine, select(c.status, c.removed_at).where(c.batch_id == b1.batch_id))
    assert sorted(r.status for r in kept) == ["FUTURE", "FUTURE", "FUTURE", "SUCCESS", "SUCCESS"]
    assert all(r.removed_at is None for r in kept)
    assert [batch_row(engine, b.batch_id).removed_at for b in (b2, b3)] == [None, None]

    # The batch comes back: removed_at is cleared, and its calls are unchanged.
    fake_api.add_batch(AGENT_ID, b1.batch_id, b1.calls, created=b1.created)
    third = synced(run_cli, config)
    assert batch_row(engine, b1.batch_id).removed_at is None
    assert "inserted=0 updated=0 unchanged=5 removed=0" in summary_line(third, b1)


def test_a_batch_deleted_from_the_api_in_batches_only_is_marked_removed_and_kept(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = new_batch(fake_api, AGENT_ID, [sched_call("a"), sched_call("b")])
    other = new_batch(fake_api, AGENT_ID, [sched_call("c")])
    config = sync_config(tmp_path, fake_api, database_url, batches=[batch, other])
    synced(run_cli, config)
    fake_api.remove_batch(batch.batch_id)

    second = synced(run_cli, config)

    assert summary_line(second, batch).startswith(f"batch {batch.batch_id}: removed (")
    assert "the API no longer has this batch; its calls are kept" in summary_line(second, batch)
    assert batch_row(engine, batch.batch_id).removed_at is not None
    assert batch_row(engine, other.batch_id).removed_at is None
    c = scheduled_calls.c
    assert len(fetch(engine, select(c.id).where(c.batch_id == batch.batch_id))) == 2


def test_a_failed_agent_listing_marks_nothing_removed_and_the_other_batches_sync(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    listed = new_batch(fake_api, AGENT_ID, [sched_call("l1")])
    configured = new_batch(fake_api, OTHER_AGENT, [sched_call("c1")])
    config = sync_config(
        tmp_path, fake_api, database_url, batches=[configured], agents=[AGENT_ID], max_attempts=1
    )
    synced(run_cli, config)
    fake_api.set_call(configured.batch_id, 0, status="PENDING")
    fake_api.inject(500, path_contains=f"/api/agents/{AGENT_ID}/scheduled_batches?")

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 1
    assert "inserted=0 updated=1 unchanged=0" in summary_line(result, configured)
    assert listed.batch_id not in result.stdout
    last = result.stdout.splitlines()[-1]
    assert last.startswith("run 2: partial: 1 of 1 batches synced; ")
    assert f"agent {AGENT_ID}: listing its batches failed" in last
    assert batch_row(engine, listed.batch_id).removed_at is None
    assert [
        r.status for r in fetch(engine, select(etl_runs.c.status).order_by(etl_runs.c.run_id))
    ] == ["succeeded", "partial"]


def test_an_agent_list_that_is_not_complete_marks_no_batch_removed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    first_batch = new_batch(fake_api, AGENT_ID, [sched_call("one")])
    second_batch = new_batch(fake_api, AGENT_ID, [sched_call("two")])
    config = sync_config(tmp_path, fake_api, database_url, agents=[AGENT_ID])
    synced(run_cli, config)
    listing = f"/api/agents/{AGENT_ID}/scheduled_batches?"

    # The list shows one batch but says there are two (a batch shifted between pages).
    page = {"results": [second_batch.as_api()], "next": None, "previous": None, "total": 2}
    fake_api.inject_payload(page, path_contains=listing)
    short = run_cli("sync", "--config", str(config))
    # An entry without a usable batchId could be either batch.
    no_id = {**first_batch.as_api(), "batchId": None}
    page = {"results": [no_id, second_batch.as_api()], "next": None, "previous": None, "total": 2}
    fake_api.inject_payload(page, path_contains=listing)
    unreadable = run_cli("sync", "--config", str(config))

    for result in (short, unreadable):
        assert result.exit_code == 0, result.stderr
        assert "inserted=0 updated=0 unchanged=1" in summary_line(result, second_batch)
        assert "is gone from agent" not in result.stderr
    assert batch_row(engine, first_batch.batch_id).removed_at is None
    assert (
        f"agent {AGENT_ID}: listed 1 batches but the API's total is 2; "
        "no batch is marked removed this run"
    ) in short.stderr
    assert (
        f"agent {AGENT_ID}: 1 listed batches have no usable batchId; "
        "no batch is marked removed this run"
    ) in unreadable.stderr
    # With the whole list again, everything is as before.
    third = synced(run_cli, config)
    assert "inserted=0 updated=0 unchanged=1" in summary_line(third, first_batch)


# -- 4. incremental skipping -----------------------------------------------------------------


def finish(fake: FakeUltravox, batch: FakeBatch) -> None:
    """Advance every call to a final status; the fake then sets endedAt."""
    for seed in range(10):
        if batch.ended_at is not None:
            return
        fake.advance(batch.batch_id, 1.0, seed=seed)
    raise AssertionError("the batch did not end")


def test_an_ended_batch_with_all_calls_final_costs_one_request_until_sync_full(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # 25 calls in pages of 10: a full listing is 3 pages, plus the details request.
    batch = add_generated_batch(fake_api, 25, seed=5)
    discovered = new_batch(
        fake_api,
        OTHER_AGENT,
        [sched_call("f1", "SUCCESS", call_id=CID_A), sched_call("f2", "EXPIRED")],
        ended_at="2025-02-01T12:00:00Z",
    )
    config = sync_config(
        tmp_path, fake_api, database_url, batches=[batch], agents=[OTHER_AGENT], page_size=10
    )
    synced(run_cli, config)  # batch still open; discovered: ended and final, first listing
    finish(fake_api, batch)
    fake_api.requests.clear()

    # The batch ended, but stored calls are not final yet: listed in full.
    ended = synced(run_cli, config)
    assert request_kinds(fake_api) == Counter(
        {
            ("details", batch.batch_id): 1,
            ("calls", batch.batch_id, ""): 3,
            ("list", OTHER_AGENT): 1,  # discovered: its list entry carries its details
        }
    )
    assert summary_line(ended, batch).startswith(
        f"batch {batch.batch_id}: succeeded: scheduled_calls pages=3"
    )
    assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert summary_line(ended, discovered) == (
        f"batch {discovered.batch_id}: skipped "
        "(scheduled_calls: ended; all 2 stored calls are final; sync --full lists it anyway)"
    )
    fake_api.requests.clear()
    before = snapshot(engine)

    skipped = synced(run_cli, config)

    # One request per batch: the details of the configured one, the list of the agent.
    assert request_kinds(fake_api) == Counter(
        {("details", batch.batch_id): 1, ("list", OTHER_AGENT): 1}
    )
    assert summary_line(skipped, batch) == (
        f"batch {batch.batch_id}: skipped (scheduled_calls: ended; all 25 stored calls are final; "
        "sync --full lists it anyway)"
    )
    assert skipped.stdout.splitlines()[-1] == "run 3: succeeded: 2 of 2 batches synced"
    assert snapshot(engine) == before
    b = etl_batch_runs.c
    recorded = fetch(
        engine,
        select(b.status, b.pages, b.error, b.note)
        .where(b.run_id == 3)
        .where(b.batch_id == batch.batch_id),
    )
    assert [tuple(r) for r in recorded] == [
        (
            "skipped",
            0,
            None,
            "scheduled_calls: ended; all 25 stored calls are final; sync --full lists it anyway",
        )
    ]
    fake_api.requests.clear()

    full = synced(run_cli, config, "--full")

    assert request_kinds(fake_api) == Counter(
        {
            ("details", batch.batch_id): 1,
            ("calls", batch.batch_id, ""): 3,
            ("list", OTHER_AGENT): 1,
            ("calls", discovered.batch_id, ""): 1,
        }
    )
    assert (
        "succeeded: scheduled_calls pages=3 fetched=25/25 inserted=0 updated=0 unchanged=25"
        in summary_line(full, batch)
    )
    assert (
        "succeeded: scheduled_calls pages=1 fetched=2/2 inserted=0 updated=0 unchanged=2"
        in summary_line(full, discovered)
    )

    # The stored count must equal totalCount: a call deleted from the API means a listing.
    del batch.calls[-1]
    fake_api.requests.clear()
    shrunk = synced(run_cli, config)
    assert request_kinds(fake_api)["calls", batch.batch_id, ""] == 3
    assert "fetched=24/24 inserted=0 updated=0 unchanged=24 removed=1" in summary_line(
        shrunk, batch
    )
    fake_api.requests.clear()
    again = synced(run_cli, config)
    assert request_kinds(fake_api) == Counter(
        {("details", batch.batch_id): 1, ("list", OTHER_AGENT): 1}
    )
    assert "(scheduled_calls: ended; all 24 stored calls are final" in summary_line(again, batch)


def test_an_open_batch_or_one_with_a_call_not_final_is_listed_every_run(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # All final but not ended; ended but one call still PENDING.
    open_batch = new_batch(fake_api, AGENT_ID, [sched_call("o1", "SUCCESS", call_id=CID_A)])
    pending = new_batch(
        fake_api,
        AGENT_ID,
        [sched_call("p1", "EXPIRED"), sched_call("p2", "PENDING")],
        ended_at="2025-02-01T12:00:00Z",
    )
    config = sync_config(tmp_path, fake_api, database_url, batches=[open_batch, pending])
    synced(run_cli, config)
    fake_api.requests.clear()

    second = synced(run_cli, config)

    assert request_kinds(fake_api) == Counter(
        {
            ("details", open_batch.batch_id): 1,
            ("calls", open_batch.batch_id, ""): 1,
            ("details", pending.batch_id): 1,
            ("calls", pending.batch_id, ""): 1,
        }
    )
    assert (
        "succeeded: scheduled_calls pages=1 fetched=1/1 inserted=0 updated=0 unchanged=1"
        in summary_line(second, open_batch)
    )
    assert (
        "succeeded: scheduled_calls pages=1 fetched=2/2 inserted=0 updated=0 unchanged=2"
        in summary_line(second, pending)
    )


# -- 5. status filters -----------------------------------------------------------------------


def test_status_filters_pass_the_api_filter_and_never_mark_anything_removed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    errors = new_batch(
        fake_api,
        AGENT_ID,
        [
            sched_call("g1", "ERROR", error="SIP 486 Busy Here"),
            sched_call("g2"),
            sched_call("g3", "SUCCESS", call_id=CID_A),
            sched_call("g4", "ERROR", call_id=CID_B, error=NOT_A_NUMBER),
            sched_call("g5", "PENDING"),
        ],
    )
    finals = new_batch(
        fake_api,
        OTHER_AGENT,
        [
            sched_call("k1", "SUCCESS", call_id=CID_C),
            sched_call("k2"),
            sched_call("k3", "EXPIRED"),
            sched_call("k4", "PENDING"),
        ],
    )
    config = sync_config(
        tmp_path,
        fake_api,
        database_url,
        batches=[(errors, ["ERROR"])],
        agents=[(OTHER_AGENT, ["SUCCESS", "EXPIRED"])],
    )

    first = synced(run_cli, config)

    assert request_kinds(fake_api) == Counter(
        {
            ("details", errors.batch_id): 1,
            ("calls", errors.batch_id, "ERROR"): 1,
            ("list", OTHER_AGENT): 1,
            ("calls", finals.batch_id, "SUCCESS"): 1,
            ("calls", finals.batch_id, "EXPIRED"): 1,
        }
    )
    assert "fetched=2/2 inserted=2" in summary_line(first, errors)
    assert "fetched=2/2 inserted=2" in summary_line(first, finals)
    c = scheduled_calls.c

    def stored(batch: FakeBatch) -> list[tuple[str, str, Any]]:
        found = fetch(
            engine, select(c.metadata, c.status, c.removed_at).where(c.batch_id == batch.batch_id)
        )
        return sorted((r.metadata["tag"], r.status, r.removed_at) for r in found)

    assert stored(errors) == [("g1", "ERROR", None), ("g4", "ERROR", None)]
    assert stored(finals) == [("k1", "SUCCESS", None), ("k3", "EXPIRED", None)]

    # g4 and k1 vanish from the API; g2 fails and k2 succeeds.
    del errors.calls[3]
    del finals.calls[0]
    fake_api.set_call(errors.batch_id, 1, status="ERROR", error=NOT_A_NUMBER)
    fake_api.set_call(finals.batch_id, 0, status="SUCCESS", call_id=CID_D)

    second = synced(run_cli, config)

    assert "fetched=2/2 inserted=1 updated=0 unchanged=1 removed=0" in summary_line(second, errors)
    assert "fetched=2/2 inserted=1 updated=0 unchanged=1 removed=0" in summary_line(second, finals)
    assert stored(errors) == [("g1", "ERROR", None), ("g2", "ERROR", None), ("g4", "ERROR", None)]
    assert stored(finals) == [
        ("k1", "SUCCESS", None),
        ("k2", "SUCCESS", None),
        ("k3", "EXPIRED", None),
    ]
    # One history row per sighting; nothing was marked removed.
    assert [row[1:4] for row in history_by_tag(engine, errors.batch_id)] == [
        ("g1", None, "ERROR"),
        ("g4", None, "ERROR"),
        ("g2", None, "ERROR"),
    ]


def test_a_filtered_listing_keeps_each_repeated_call_on_its_own_row(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # Two scheduled calls with one definition (the same number called twice): the second
    # fails first. Only the ERROR listing is read.
    twin = sched_call("same-number-twice")
    batch = new_batch(
        fake_api, AGENT_ID, [twin, {**twin, "status": "ERROR", "error": "SIP 486 Busy Here"}]
    )
    config = sync_config(tmp_path, fake_api, database_url, batches=[(batch, ["ERROR"])])
    synced(run_cli, config)
    c = scheduled_calls.c
    (first_row,) = fetch(engine, select(c.id, c.error))
    assert first_row.error == "SIP 486 Busy Here"

    fake_api.set_call(batch.batch_id, 0, status="ERROR", error=NOT_A_NUMBER)
    synced(run_cli, config)

    # The call stored by run 1 is the one that failed with "SIP 486 Busy Here"; it has not
    # changed, so its row must not change, and the other call is a new row.
    rows_now = {r.id: r.error for r in fetch(engine, select(c.id, c.error))}
    assert rows_now[first_row.id] == "SIP 486 Busy Here"
    assert sorted(rows_now.values()) == sorted(["SIP 486 Busy Here", NOT_A_NUMBER])
    h = scheduled_call_status_changes.c
    history = fetch(
        engine,
        select(h.scheduled_call_id, h.from_status).where(h.scheduled_call_id == first_row.id),
    )
    assert [tuple(r) for r in history] == [(first_row.id, None)]
