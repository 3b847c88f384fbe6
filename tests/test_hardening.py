"""Hardening, end to end: a faulty API, killed and interrupted runs, overlapping runs, vanished
data, records that do not fit, text PostgreSQL refuses, extreme values, and secrets.

Every test drives the real CLI against the fake Ultravox API over real HTTP, on SQLite and on
PostgreSQL, then compares the database with what the fake holds. Runs go through `run_cli`
(in this process, retry pauses recorded instead of slept) unless a process boundary matters:
signals, SIGKILL and overlapping runs use child processes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from etl.fake_api import FakeBatch, FakeResponse, FakeUltravox, retry_after_date
from etl.load import scheduled_calls as scheduled_call_loader
from etl.load.schema import (
    etl_batch_runs,
    etl_runs,
    rejected_records,
    scheduled_batches,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_calls,
)
from etl.streams import scheduled_calls as scheduled_calls_stream
from tests.conftest import (
    AGENT_ID,
    TEST_API_KEY,
    CliResult,
    add_batch,
    dump_all_tables,
    rows,
    write_config,
)
from tests.test_sync_e2e import add_generated_batch, api_view, db_view, expected_medium_type

SCRIPT = Path(sys.executable).with_name("ultravox-etl")
SIP_PASSWORD_MARK = "s3cr3t-sip-pw-"
"""Every SIP password of the generated data contains it; so do the hand-made ones here."""
DB_PASSWORD = "s3cretpw"


# -- helpers: config, views of the API and of the database ------------------------------------


def make_config(
    fake: FakeUltravox,
    tmp_path: Path,
    database_url: str | None,
    batches: list[FakeBatch] | list[tuple[str, str]],
    *,
    sync: dict[str, Any] | None = None,
    name: str = "etl.toml",
    **api: Any,
) -> Path:
    """write_config for fake batches."""
    refs = [(b.agent_id, b.batch_id) if isinstance(b, FakeBatch) else b for b in batches]
    return write_config(
        tmp_path / name, fake.base_url, refs, database_url=database_url, sync=sync, **api
    )


def call(tag: str, status: str = "FUTURE", **fields: Any) -> dict[str, Any]:
    """A scheduled call made unique by its `error` text (any text is fine for the API)."""
    return {
        "status": status,
        "callId": None,
        "error": tag,
        "medium": {"twilio": {"outgoing": {"to": "+14155550123", "from": "+14155550100"}}},
        "metadata": {"tag": tag},
        **fields,
    }


def page_payload(results: list[Any], *, total: int | None = None, next_url: Any = None) -> Any:
    return {
        "results": results,
        "next": next_url,
        "previous": None,
        "total": len(results) if total is None else total,
    }


def cursor(offset: int, salt: str = "") -> str:
    """A cursor the fake accepts (extra query fields are ignored by it)."""
    raw = f"o={offset}{salt}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii")


def strip_password(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_password(v) for k, v in value.items() if k != "password"}
    if isinstance(value, list):
        return [strip_password(v) for v in value]
    return value


def fetch(engine: Engine, stmt: Any) -> list[Any]:
    """Rows of a Core statement, typed (JSON decoded, aware datetimes, booleans)."""
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def by_error(engine: Engine, batch_id: str) -> dict[str, Any]:
    """scheduled_calls rows of a batch by their `error` (see `call`)."""
    c = scheduled_calls.c
    found = fetch(engine, select(scheduled_calls).where(c.batch_id == batch_id))
    return {r.error: r for r in found}


def _json(value: Any) -> str:
    if isinstance(value, str):  # SQLite hands JSON back as text through text() queries
        value = json.loads(value)
    return json.dumps(value, sort_keys=True)


def _metadata_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _api_call_view(record: dict[str, Any]) -> tuple[Any, ...]:
    medium = record.get("medium") or {}
    flags: list[tuple[str, bool]] = []
    for key in ("webRtc", "serverWebSocket"):
        variant = medium.get(key)
        if isinstance(variant, dict) and isinstance(variant.get("dataMessages"), dict):
            flags += [(m, bool(v)) for m, v in variant["dataMessages"].items()]
    metadata = record.get("metadata") or {}
    return (
        record["status"],
        record["callId"],
        record["error"],
        expected_medium_type(record),
        json.dumps(record.get("metadata"), sort_keys=True),
        json.dumps(record.get("templateContext"), sort_keys=True),
        expected_medium_type(record),  # the media row's own type
        tuple(sorted(flags)),
        tuple(sorted((k, _metadata_value(v)) for k, v in metadata.items())),
    )


def api_full_view(fake: FakeUltravox, batch_id: str) -> Counter[tuple[Any, ...]]:
    """Like api_view, with each call's media type, data message flags and metadata rows."""
    return Counter(_api_call_view(c) for c in fake.batches[batch_id].calls)


def db_full_view(engine: Engine, batch_id: str) -> Counter[tuple[Any, ...]]:
    """The stored, not removed calls of a batch with their child rows, as api_full_view."""
    calls = rows(
        engine,
        "SELECT c.id, c.status, c.call_id, c.error, c.medium_type, c.metadata, "
        "c.template_context, m.medium_type AS media_type "
        "FROM scheduled_calls c LEFT JOIN scheduled_call_media m ON m.scheduled_call_id = c.id "
        "WHERE c.batch_id = :b AND c.removed_at IS NULL",
        b=batch_id,
    )
    flags: dict[int, list[tuple[str, bool]]] = {}
    for r in rows(
        engine, "SELECT scheduled_call_id, message, enabled FROM scheduled_call_data_messages"
    ):
        flags.setdefault(r.scheduled_call_id, []).append((r.message, bool(r.enabled)))
    entries: dict[int, list[tuple[str, str]]] = {}
    for r in fetch(engine, select(scheduled_call_metadata)):
        entries.setdefault(r.scheduled_call_id, []).append((r.key, r.value))
    return Counter(
        (
            r.status,
            r.call_id,
            r.error,
            r.medium_type,
            _json(r.metadata),
            _json(r.template_context),
            r.media_type,
            tuple(sorted(flags.get(r.id, []))),
            tuple(sorted(entries.get(r.id, []))),
        )
        for r in calls
    )


def count(engine: Engine, sql: str, **params: Any) -> int:
    return int(rows(engine, sql, **params)[0][0])


def assert_consistent(
    engine: Engine,
    fake: FakeUltravox,
    batches: list[FakeBatch],
    earlier: dict[str, Counter[tuple[Any, ...]]] | None = None,
) -> int:
    """Every stored call is a call of the API (as it is, or as it was: `earlier`), with all
    its child rows; nothing is marked removed; no call is stored twice. Returns the calls."""
    stored_total = 0
    for batch in batches:
        stored = db_full_view(engine, batch.batch_id)
        now = api_full_view(fake, batch.batch_id)
        allowed = set(now) | set((earlier or {}).get(batch.batch_id, Counter()))
        wrong = [row for row in stored if row not in allowed]
        assert wrong == [], f"stored calls that the API never had: {wrong[:2]}"
        if earlier is None:
            assert not stored - now, "a call is stored more often than the API has it"
        assert stored.total() <= max(now.total(), (earlier or {}).get(batch.batch_id, now).total())
        stored_total += stored.total()
    assert count(engine, "SELECT count(*) FROM scheduled_calls WHERE removed_at IS NOT NULL") == 0
    assert count(engine, "SELECT count(*) FROM scheduled_batches WHERE removed_at IS NOT NULL") == 0
    assert count(engine, "SELECT count(*) FROM scheduled_calls") == stored_total
    # Children only of stored calls, and the history has a first sighting for each call.
    assert count(engine, "SELECT count(*) FROM scheduled_call_media") == stored_total
    assert (
        count(
            engine,
            "SELECT count(*) FROM scheduled_calls c WHERE NOT EXISTS (SELECT 1 FROM "
            "scheduled_call_status_changes h WHERE h.scheduled_call_id = c.id)",
        )
        == 0
    )
    return stored_total


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def details_requests(fake: FakeUltravox, batch: FakeBatch) -> int:
    return sum(1 for r in fake.requests if r.path.endswith(f"/scheduled_batches/{batch.batch_id}"))


def calls_requests(fake: FakeUltravox, batch: FakeBatch) -> int:
    path = f"/scheduled_batches/{batch.batch_id}/scheduled_calls"
    return sum(1 for r in fake.requests if r.path.endswith(path))


def summary_line(batch: FakeBatch, stdout: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(f"batch {batch.batch_id}")]
    return line


def batch_runs(engine: Engine, batch_id: str) -> list[Any]:
    t = etl_batch_runs.c
    return fetch(engine, select(etl_batch_runs).where(t.batch_id == batch_id).order_by(t.run_id))


def runs(engine: Engine) -> list[Any]:
    return fetch(engine, select(etl_runs).order_by(etl_runs.c.run_id))


# -- helpers: the fake misbehaving -----------------------------------------------------------


class Interposer:
    """Runs a hook before the fake picks the fault (if any) for each authenticated request.

    The hook may sleep, block, or queue a fault for the request's own target.
    """

    def __init__(self, fake: FakeUltravox, hook: Callable[[str], None]) -> None:
        self._original = fake._take_fault
        self._hook = hook
        fake._take_fault = self._take  # type: ignore[method-assign]

    def _take(self, target: str) -> Any:
        self._hook(target)
        return self._original(target)


class SteadyFaults:
    """Every `every`-th request meets the next fault of `kinds`, round and round."""

    def __init__(
        self, fake: FakeUltravox, kinds: list[str], *, every: int, stall_seconds: float
    ) -> None:
        self.fake = fake
        self.kinds = kinds
        self.every = every
        self.stall_seconds = stall_seconds
        self.served: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._n = 0
        self._per_target: Counter[str] = Counter()
        Interposer(fake, self._hook)

    def _hook(self, target: str) -> None:
        with self._lock:
            self._n += 1
            # At most two faults in a row for one request, so max_attempts is never reached.
            if self._n % self.every or self._per_target[target] >= 2:
                return
            kind = self.kinds[self.served.total() % len(self.kinds)]
            self.served[kind] += 1
            self._per_target[target] += 1
        fake = self.fake
        if kind == "503":
            fake.inject(503, path_contains=target)
        elif kind == "500":
            fake.inject(500, path_contains=target)
        elif kind == "502-html":
            fake.inject(502, path_contains=target, body=b"<html><h1>502 Bad Gateway</h1></html>")
        elif kind == "429":
            fake.inject(429, path_contains=target)
        elif kind == "429-retry-after":
            fake.inject(429, path_contains=target, retry_after="3")
        elif kind == "429-retry-after-date":
            fake.inject(429, path_contains=target, retry_after=retry_after_date(2))
        elif kind == "reset":
            fake.inject_connection_reset(path_contains=target)
        elif kind == "truncated":
            fake.inject_truncated_body(path_contains=target)
        elif kind == "invalid-json":
            fake.inject_invalid_json(path_contains=target)
        elif kind == "timeout":
            time.sleep(self.stall_seconds)  # past the client's timeout; then drop it
            fake.inject_connection_reset(path_contains=target)
        else:
            raise AssertionError(kind)


def closed_gate(fake: FakeUltravox, path_contains: str) -> threading.Event:
    """Requests whose target contains `path_contains` wait until the returned event is set."""
    gate = threading.Event()

    def hook(target: str) -> None:
        if path_contains in target:
            gate.wait(60)

    Interposer(fake, hook)
    return gate


# -- helpers: child processes ----------------------------------------------------------------

KILL_AT_SQL = r"""
import os, re, signal, sys, threading
from sqlalchemy import Engine, event

mode, pattern, nth = sys.argv[1], re.compile(sys.argv[2], re.S), int(sys.argv[3])
seen = 0
marked = set()
lock = threading.Lock()

def _count() -> None:
    global seen
    with lock:
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)

@event.listens_for(Engine, "before_cursor_execute")
def _statement(conn, cursor, statement, parameters, context, executemany):
    if pattern.search(statement):
        if mode == "statement":
            _count()
        else:
            marked.add(id(conn))

@event.listens_for(Engine, "commit")
def _commit(conn):
    if mode == "worker-commit" and threading.current_thread().name.startswith(pattern.pattern):
        _count()
    elif id(conn) in marked:
        marked.discard(id(conn))
        _count()

@event.listens_for(Engine, "rollback")
def _rollback(conn):
    marked.discard(id(conn))

from etl import cli
sys.exit(cli.main(sys.argv[4:]))
"""
"""`python -c KILL_AT_SQL MODE PATTERN N ARGS…`: the CLI, SIGKILLed just before it sends the
Nth SQL statement matching PATTERN (MODE `statement`), just before it commits the Nth
transaction that sent one (MODE `commit`), or just before the Nth commit on a thread whose
name starts with PATTERN (MODE `worker-commit`: the bulk statements of a page go to the
driver directly, unseen here): that transaction never commits."""


def _default_sigint() -> None:
    # A child started from a shell's background job inherits SIGINT ignored; Python then
    # installs no KeyboardInterrupt handler. Cron and terminals deliver it normally.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def finish(self, timeout: float = 60) -> CliResult:
        code = self.proc.wait(timeout)
        return CliResult(code, self.out.read_text(), self.err.read_text())

    def stderr(self) -> str:
        return self.err.read_text()


class Children:
    """Child processes of one test; whatever is still running at its end is killed."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Child] = []

    def start(self, *args: str, api_key: str = TEST_API_KEY) -> Child:
        n = len(self.started)
        out, err = self.tmp_path / f"child{n}.out", self.tmp_path / f"child{n}.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ULTRAVOX")}
        env["ULTRAVOX_API_KEY"] = api_key
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                list(args),
                stdout=stdout,
                stderr=stderr,
                env=env,
                preexec_fn=_default_sigint,
            )
        child = Child(proc, out, err)
        self.started.append(child)
        return child

    def cli(self, *args: str) -> Child:
        return self.start(str(SCRIPT), *args)

    def cli_killed_at_sql(self, mode: str, pattern: str, nth: int, *args: str) -> Child:
        return self.start(sys.executable, "-c", KILL_AT_SQL, mode, pattern, str(nth), *args)

    def close(self) -> None:
        for child in self.started:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    started = Children(tmp_path)
    yield started
    started.close()


# == 1. A faulty API -----------------------------------------------------------------------

ALL_FAULTS = [
    "503",
    "429-retry-after",
    "reset",
    "500",
    "429",
    "truncated",
    "timeout",
    "502-html",
    "429-retry-after-date",
    "invalid-json",
]


def test_a_steady_share_of_faults_is_retried_and_every_call_loads(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    retry_waits: list[float],
    tmp_path: Path,
) -> None:
    batches = [add_generated_batch(fake_api, n, seed=n) for n in (64, 41, 27)]
    faults = SteadyFaults(fake_api, ALL_FAULTS, every=3, stall_seconds=0.6)
    config = make_config(
        fake_api, tmp_path, database_url, batches, page_size=5, timeout_seconds=0.3, max_attempts=6
    )

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    # One request in three met a fault (no request more than twice), every kind of them.
    assert set(faults.served) == set(ALL_FAULTS)
    assert faults.served.total() >= 10
    assert len(retry_waits) == faults.served.total()
    for batch in batches:
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
        pages = -(-len(batch.calls) // 5)
        assert summary_line(batch, result.stdout) == (
            f"batch {batch.batch_id}: succeeded: scheduled_calls pages={pages} "
            f"fetched={len(batch.calls)}/{len(batch.calls)} inserted={len(batch.calls)} "
            "updated=0 unchanged=0 removed=0 rejected=0"
        )
    # Retry-After is obeyed (seconds and HTTP-date forms); other pauses are the bounded backoff.
    assert 3.0 in retry_waits
    assert max(retry_waits) <= 3.0 and min(retry_waits) >= 0.5  # backoff: 0.5-1 s, 1-1.5 s
    assert "retrying in" in result.stderr
    assert TEST_API_KEY not in result.stderr + result.stdout
    (run,) = runs(engine)
    assert (run.status, run.batches_ok, run.batches_failed, run.calls_fetched) == (
        "succeeded",
        3,
        0,
        132,
    )


@pytest.mark.parametrize("limit", ["max_attempts", "max_wait_seconds"])
def test_a_batch_that_exhausts_its_retries_fails_alone_and_the_others_commit(
    limit: str,
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    retry_waits: list[float],
    tmp_path: Path,
) -> None:
    doomed, fine, also_fine = (add_generated_batch(fake_api, 23, seed=n) for n in range(3))
    doomed_calls = f"{doomed.batch_id}/scheduled_calls"
    if limit == "max_attempts":
        # Three attempts at the second page, each answered differently: the third is the last.
        fake_api.inject(503, path_contains=f"{doomed_calls}?pageSize=10&cursor=")
        fake_api.inject_connection_reset(path_contains=f"{doomed_calls}?pageSize=10&cursor=")
        fake_api.inject(429, path_contains=f"{doomed_calls}?pageSize=10&cursor=", times=5)
        config = make_config(
            fake_api, tmp_path, database_url, [doomed, fine, also_fine], max_attempts=3
        )
        expected_waits, attempts, last = 2, 3, "HTTP 429"
    else:
        # Retry-After: one hour, cut to retry_after_max_seconds (120); a second pause would
        # bring the total past max_wait_seconds (200).
        fake_api.inject(
            429, retry_after="3600", path_contains=f"{doomed_calls}?pageSize=10&cursor=", times=9
        )
        config = make_config(
            fake_api, tmp_path, database_url, [doomed, fine, also_fine], max_wait_seconds=200
        )
        expected_waits, attempts, last = 1, 2, "HTTP 429"

    started = time.monotonic()
    result = run_cli("sync", "--config", str(config))

    assert time.monotonic() - started < 20
    assert result.exit_code == 1
    assert len(retry_waits) == expected_waits
    if limit == "max_wait_seconds":
        assert retry_waits == [120.0]
    else:
        assert all(0.5 <= w <= 2.0 for w in retry_waits)  # 0.5 s, 1 s: plus jitter
    (failed,) = batch_runs(engine, doomed.batch_id)
    assert failed.status == "failed"
    assert failed.error == (
        f"GET /api/agents/{AGENT_ID}/scheduled_batches/{doomed_calls} failed after "
        f"{attempts} attempts: {last} on GET /api/agents/{AGENT_ID}/scheduled_batches/"
        f"{doomed_calls}"
    )
    assert (failed.pages, failed.fetched, failed.removed) == (1, 10, 0)
    assert f"batch {doomed.batch_id}: failed:" in result.stdout
    assert f"failed after {attempts} attempts" in result.stderr
    for batch in (fine, also_fine):
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
        assert batch_runs(engine, batch.batch_id)[0].status == "succeeded"
    (run,) = runs(engine)
    assert (run.status, run.batches_ok, run.batches_failed) == ("partial", 2, 1)
    assert "run 1: partial: 2 of 3 batches synced" in result.stdout


def _throttle(fake: FakeUltravox, per_second: int) -> list[float]:
    """The fake answers 429 once more than `per_second` requests came within one second."""
    arrivals: list[float] = []
    throttled: list[float] = []
    lock = threading.Lock()

    def hook(target: str) -> None:
        now = time.monotonic()
        with lock:
            arrivals.append(now)
            recent = sum(1 for t in arrivals if t > now - 1.0)
            if recent <= per_second:
                return
            throttled.append(now)
        fake.inject(429, path_contains=target)

    Interposer(fake, hook)
    return throttled


def test_the_client_side_rate_cap_keeps_the_job_from_causing_429s(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    retry_waits: list[float],
    tmp_path: Path,
) -> None:
    batches = [add_generated_batch(fake_api, 28, seed=n) for n in range(3)]
    throttled = _throttle(fake_api, per_second=23)  # Ultravox's real limit is far higher
    config = make_config(fake_api, tmp_path, database_url, batches, page_size=4)
    # No max_requests_per_second: the default (20 a second) applies.
    config.write_text(config.read_text().replace("max_requests_per_second = 1000.0\n", ""))
    assert "max_requests_per_second" not in config.read_text()

    started = time.monotonic()
    result = run_cli("sync", "--config", str(config))
    elapsed = time.monotonic() - started

    assert result.exit_code == 0, result.stderr
    assert throttled == []
    assert retry_waits == []
    arrivals = sorted(r.at for r in fake_api.requests)
    assert len(arrivals) == 24  # 3 details + 3 x 7 pages
    assert elapsed >= 23 / 20 - 0.05
    for first, later in zip(arrivals, arrivals[20:], strict=False):
        assert later - first >= 0.95  # never more than 20 requests within a second
    for batch in batches:
        assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)

    # The same job without the cap does run into the limit (and recovers by retrying).
    uncapped = make_config(
        fake_api, tmp_path, database_url, batches, page_size=4, name="uncapped.toml"
    )
    uncapped_run = run_cli("sync", "--config", str(uncapped))
    assert len(throttled) > 0
    assert "HTTP 429" in uncapped_run.stderr


# == 2. Killed and interrupted runs -------------------------------------------------------


def test_a_run_killed_with_sigkill_at_any_point_leaves_a_consistent_database(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    batches = [add_generated_batch(fake_api, 60, seed=n) for n in range(3)]
    config = make_config(fake_api, tmp_path, database_url, batches, page_size=10)
    sync = ("sync", "--config", str(config))
    killed = 0

    def killed_at_sql(mode: str, pattern: str, nth: int) -> None:
        nonlocal killed
        child = children.cli_killed_at_sql(mode, pattern, nth, *sync)
        result = child.finish()
        assert result.exit_code == -signal.SIGKILL, (pattern, result.stderr)
        killed += 1

    # Mid-listing, by the clock: a slow API, killed after its 8th request.
    fake_api.latency_seconds = 0.02
    child = children.cli(*sync)
    wait_for(lambda: len(fake_api.requests) >= 8, "8 requests")
    child.proc.kill()
    assert child.finish().exit_code == -signal.SIGKILL
    killed += 1
    fake_api.latency_seconds = 0
    assert_consistent(engine, fake_api, batches)

    # Each page is loaded in one transaction on its batch worker's thread (so are the
    # batch's details and the end of its listing): just before an early commit there...
    killed_at_sql("worker-commit", "batch-worker", 3)
    assert_consistent(engine, fake_api, batches)
    # ...and just before a later one.
    killed_at_sql("worker-commit", "batch-worker", 30)
    assert 0 < assert_consistent(engine, fake_api, batches) < 180

    # After every page, before the run record is closed: all data in, the run left `running`.
    killed_at_sql("statement", r"^UPDATE etl_runs SET finished_at=.*batches_ok", 1)
    assert assert_consistent(engine, fake_api, batches) == 180
    assert runs(engine)[-1].status == "running"

    # Calls vanish and change; the run dies after marking them removed, before committing.
    old = {b.batch_id: api_full_view(fake_api, b.batch_id) for b in batches}
    placed = [n for n, c in enumerate(batches[0].calls) if c["callId"]]
    gone = [batches[0].calls.pop(placed[3]), batches[0].calls.pop(placed[0])]
    assert fake_api.advance(batches[1].batch_id, 0.5, seed=3) > 0
    killed_at_sql("statement", r"^UPDATE scheduled_batches SET last_synced_at", 1)
    assert_consistent(engine, fake_api, batches, earlier=old)
    stored_ids = {r.call_id for r in fetch(engine, select(scheduled_calls.c.call_id))}
    assert {g["callId"] for g in gone} <= stored_ids

    # While closing the record of a run an earlier one left behind.
    killed_at_sql("statement", r"^UPDATE etl_runs SET finished_at=[^,]+, status=[^,]+, error=", 1)
    assert_consistent(engine, fake_api, batches, earlier=old)

    final = run_cli(*sync)

    assert final.exit_code == 0, final.stderr
    for batch in batches:
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
    c = scheduled_calls.c
    removed = fetch(engine, select(c.call_id, c.batch_id).where(c.removed_at.is_not(None)))
    assert sorted(removed) == sorted((g["callId"], batches[0].batch_id) for g in gone)
    assert "removed=2" in summary_line(batches[0], final.stdout)
    history = runs(engine)
    assert [r.status for r in history] == ["abandoned"] * killed + ["succeeded"]
    assert all(r.finished_at is not None for r in history)
    assert "marked abandoned" in final.stderr
    assert count(engine, "SELECT count(*) FROM etl_batch_runs WHERE status = 'running'") == 0
    keys = rows(engine, "SELECT batch_id, call_key FROM scheduled_calls")
    assert len(keys) == len(set(keys)) == 180


def test_a_run_killed_while_creating_the_schema_leaves_a_database_the_next_run_can_use(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    batch = add_generated_batch(fake_api, 12)
    config = make_config(fake_api, tmp_path, database_url, [batch])

    child = children.cli_killed_at_sql(
        "statement", r"^CREATE INDEX", 2, "sync", "--config", str(config)
    )
    assert child.finish().exit_code == -signal.SIGKILL

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_the_run_within_seconds_and_record_it_failed(
    signum: signal.Signals,
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    batches = [add_generated_batch(fake_api, 100, seed=n) for n in range(2)]
    config = make_config(fake_api, tmp_path, database_url, batches, page_size=5)
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    old = {b.batch_id: api_full_view(fake_api, b.batch_id) for b in batches}
    for batch in batches:
        del batch.calls[-3:]  # a complete listing would mark these removed
        fake_api.advance(batch.batch_id, 0.6, seed=1)
    fake_api.latency_seconds = 0.05
    seen = len(fake_api.requests)

    child = children.cli("sync", "--config", str(config))
    wait_for(lambda: len(fake_api.requests) - seen >= 10, "10 requests")
    child.proc.send_signal(signum)
    signalled = time.monotonic()
    result = child.finish(timeout=30)
    stopped_after = time.monotonic() - signalled

    assert result.exit_code == 128 + signum
    assert stopped_after < 5
    assert f"ultravox-etl: stopped by {signum.name}" in result.stderr
    assert "Traceback" not in result.stderr
    assert TEST_API_KEY not in result.stderr + result.stdout
    stopped = runs(engine)[-1]
    assert (stopped.run_id, stopped.status) == (2, "failed")
    assert stopped.error == f"interrupted by {signum.name}"
    assert stopped.finished_at is not None
    states = {b.batch_id: b.status for b in fetch(engine, select(etl_batch_runs)) if b.run_id == 2}
    assert set(states) <= {b.batch_id for b in batches}
    assert "running" not in states.values()
    assert "failed" in states.values()
    assert count(engine, "SELECT count(*) FROM scheduled_calls") == 200
    assert_consistent(engine, fake_api, batches, earlier=old)

    fake_api.latency_seconds = 0
    final = run_cli("sync", "--config", str(config))

    assert final.exit_code == 0, final.stderr
    for batch in batches:
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
        assert "removed=3" in summary_line(batch, final.stdout)
    assert [r.status for r in runs(engine)] == ["succeeded", "failed", "succeeded"]


@pytest.mark.parametrize("pausing", ["batch details", "second page"])
def test_sigterm_during_a_long_retry_pause_stops_the_run_and_closes_every_record(
    pausing: str,
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    batch = add_generated_batch(fake_api, 30)
    config = make_config(fake_api, tmp_path, database_url, [batch])
    assert run_cli("migrate", "--config", str(config)).exit_code == 0
    # A 429 with a minute to wait: the run is pausing when the signal comes.
    target = batch.batch_id if pausing == "batch details" else "&cursor="
    fake_api.inject(429, retry_after="60", path_contains=target)
    child = children.cli("sync", "--config", str(config))
    wait_for(lambda: "retrying in 60.0s" in child.stderr(), "the retry pause")

    child.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    result = child.finish(timeout=30)

    assert result.exit_code == 128 + signal.SIGTERM
    assert time.monotonic() - signalled < 8
    (run,) = runs(engine)
    assert (run.status, run.error) == ("failed", "interrupted by SIGTERM")
    (batch_run,) = batch_runs(engine, batch.batch_id)
    assert batch_run.status == "failed"
    assert batch_run.finished_at is not None
    assert "interrupted" in batch_run.error
    # Page 1 may or may not have been loaded before the signal; nothing is half done.
    assert assert_consistent(engine, fake_api, [batch]) in (0, 10)


# == 3. Overlapping runs ------------------------------------------------------------------


def _no_db_trouble(*results: CliResult) -> None:
    for result in results:
        text = (result.stdout + result.stderr).lower()
        for word in ("deadlock", "database error", "traceback", "database is locked"):
            assert word not in text, result.stderr


def test_a_run_finding_its_batch_locked_waits_then_skips_it_and_exits_75(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    batch = add_generated_batch(fake_api, 30)
    config = make_config(
        fake_api,
        tmp_path,
        database_url,
        [batch],
        timeout_seconds=30,
        sync={"lock_wait_seconds": 0.5},
    )
    assert run_cli("migrate", "--config", str(config)).exit_code == 0
    gate = closed_gate(fake_api, "/scheduled_calls")
    first = children.cli("sync", "--config", str(config))
    wait_for(lambda: details_requests(fake_api, batch) == 1, "the first run to hold the batch")

    started = time.monotonic()
    second = children.cli("sync", "--config", str(config)).finish()
    waited = time.monotonic() - started
    gate.set()
    done = first.finish()

    assert second.exit_code == 75, second.stderr
    assert waited >= 0.5
    assert details_requests(fake_api, batch) == 1  # the second run never touched the batch
    line = summary_line(batch, second.stdout)
    assert line.startswith(f"batch {batch.batch_id}: locked (run 1 has been syncing it since ")
    assert line.endswith("; waited 0.5s, try later)")
    assert "run 2: " in second.stdout and "0 of 1 batches synced, 1 locked by another run" in (
        second.stdout
    )
    assert f"batch {batch.batch_id} not synced: run 1 has been syncing it" in second.stderr
    assert done.exit_code == 0, done.stderr
    _no_db_trouble(done, second)
    assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
    assert [(r.run_id, r.status) for r in batch_runs(engine, batch.batch_id)] == [
        (1, "succeeded"),
        (2, "locked"),
    ]


def test_overlapping_runs_on_the_same_batches_take_turns_and_lose_no_update(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    children: Children,
) -> None:
    batches = [add_generated_batch(fake_api, 40, seed=n) for n in range(2)]
    config = make_config(
        fake_api,
        tmp_path,
        database_url,
        batches,
        timeout_seconds=30,
        sync={"lock_wait_seconds": 60},
    )
    assert run_cli("migrate", "--config", str(config)).exit_code == 0
    gate = closed_gate(fake_api, "cursor=")  # page 1 of each batch passes, page 2 waits
    first = children.cli("sync", "--config", str(config))
    wait_for(
        lambda: all(calls_requests(fake_api, b) == 2 for b in batches),
        "the first run to read page 1 of both batches",
    )
    second = children.cli("sync", "--config", str(config))
    wait_for(lambda: "run 2 started" in second.stderr(), "the second run to start")
    time.sleep(0.5)
    # The second run waits for the batches instead of syncing them alongside.
    assert [details_requests(fake_api, b) for b in batches] == [1, 1]
    assert [calls_requests(fake_api, b) for b in batches] == [2, 2]
    # The API moves on: the first run read page 1 before, the rest after.
    for batch in batches:
        fake_api.advance(batch.batch_id, 0.7, seed=2)
    gate.set()
    one, two = first.finish(), second.finish()

    assert (one.exit_code, two.exit_code) == (0, 0), (one.stderr, two.stderr)
    _no_db_trouble(one, two)
    for batch in batches:
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
        # The second run found what the first one wrote from the stale page 1, and fixed it.
        line = summary_line(batch, two.stdout)
        assert "inserted=0" in line and "updated=0" not in line
        windows = [(r.run_id, r.status) for r in batch_runs(engine, batch.batch_id)]
        assert windows == [(1, "succeeded"), (2, "succeeded")]
    assert count(engine, "SELECT count(*) FROM scheduled_calls") == 80
    keys = rows(engine, "SELECT batch_id, call_key FROM scheduled_calls")
    assert len(set(keys)) == 80


def test_runs_on_different_batches_proceed_in_parallel_even_on_a_new_database(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    children: Children,
) -> None:
    batches = [add_generated_batch(fake_api, 35, seed=n) for n in range(2)]
    config = make_config(
        fake_api,
        tmp_path,
        database_url,
        batches,
        timeout_seconds=30,
        sync={"lock_wait_seconds": 60},
    )
    gate = closed_gate(fake_api, "/scheduled_calls")
    # All start on an empty database, and each creates the schema if it is not there yet.
    started = [
        children.cli("sync", "--config", str(config), "--batch", b.batch_id) for b in batches
    ]
    migrating = children.cli("migrate", "--config", str(config))
    # Each run holds its own batch at the same time as the other.
    wait_for(
        lambda: all(details_requests(fake_api, b) == 1 for b in batches),
        "both runs to hold their batch",
    )
    gate.set()
    results = [child.finish() for child in [*started, migrating]]

    assert [r.exit_code for r in results] == [0, 0, 0], [r.stderr for r in results]
    _no_db_trouble(*results)
    for batch in batches:
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
        assert [r.status for r in batch_runs(engine, batch.batch_id)] == ["succeeded"]
    one, two = runs(engine)
    assert (one.status, two.status) == ("succeeded", "succeeded")
    assert one.started_at < two.finished_at and two.started_at < one.finished_at
    assert count(engine, "SELECT count(*) FROM scheduled_calls") == 70


# == 4. Vanished data ---------------------------------------------------------------------


def test_a_known_batch_that_answers_404_is_marked_removed_and_its_calls_are_kept(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    doomed, other = (add_generated_batch(fake_api, n, seed=n) for n in (21, 9))
    config = make_config(fake_api, tmp_path, database_url, [doomed, other])
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    kept = db_full_view(engine, doomed.batch_id)

    fake_api.remove_batch(doomed.batch_id)
    gone = run_cli("sync", "--config", str(config))

    assert gone.exit_code == 0, gone.stderr
    assert summary_line(doomed, gone.stdout) == (
        f"batch {doomed.batch_id}: removed (the API no longer has this batch; its calls are kept)"
    )
    assert "run 2: succeeded: 2 of 2 batches synced" in gone.stdout
    b = scheduled_batches.c
    removed_at = dict(fetch(engine, select(b.batch_id, b.removed_at)))
    assert removed_at[doomed.batch_id] is not None and removed_at[other.batch_id] is None
    assert db_full_view(engine, doomed.batch_id) == kept  # every call kept, none removed
    assert count(engine, "SELECT count(*) FROM scheduled_calls WHERE removed_at IS NOT NULL") == 0
    assert [r.status for r in runs(engine)] == ["succeeded", "succeeded"]
    assert batch_runs(engine, doomed.batch_id)[-1].status == "removed"

    # A batch the job never saw that answers 404 is a failure of that batch alone.
    never = (AGENT_ID, str(uuid.uuid4()))
    with_unknown = make_config(
        fake_api,
        tmp_path,
        database_url,
        [(doomed.agent_id, doomed.batch_id), never, (other.agent_id, other.batch_id)],
        name="u.toml",
    )
    failing = run_cli("sync", "--config", str(with_unknown))
    assert failing.exit_code == 1
    (unknown,) = batch_runs(engine, never[1])
    assert unknown.status == "failed" and "404" in unknown.error
    assert batch_runs(engine, doomed.batch_id)[-1].status == "removed"
    assert batch_runs(engine, other.batch_id)[-1].status == "succeeded"
    assert runs(engine)[-1].status == "partial"
    assert never[1] not in dict(fetch(engine, select(b.batch_id, b.removed_at)))

    # The batch comes back (restored): its removed_at is cleared.
    fake_api.add_batch(doomed.agent_id, doomed.batch_id, doomed.calls)
    back = run_cli("sync", "--config", str(config))
    assert back.exit_code == 0, back.stderr
    assert dict(fetch(engine, select(b.batch_id, b.removed_at)))[doomed.batch_id] is None
    assert db_full_view(engine, doomed.batch_id) == api_full_view(fake_api, doomed.batch_id)


BROKEN_LISTINGS = {
    # how the listing breaks: whether its batch fails (else it succeeds, removing nothing)
    "repeated cursor": True,
    "next link without a cursor": True,
    "invalid cursor (404)": True,
    "page that is not an object": True,
    "page without results": True,
    "total larger than the listing": False,
    "total smaller than the listing": False,
    "total changed between pages": False,
    "a call vanished mid-listing": False,
}


def test_listings_that_end_inconsistently_mark_nothing_removed(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    retry_waits: list[float],
    tmp_path: Path,
) -> None:
    # One batch per way of breaking, all in the same runs.
    cases = {
        name: add_batch(fake_api, [call(f"{name}: c{n:02d}") for n in range(25)])
        for name in BROKEN_LISTINGS
    }
    config = make_config(fake_api, tmp_path, database_url, list(cases.values()), concurrency=3)
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    original = {name: by_error(engine, b.batch_id) for name, b in cases.items()}
    everything = {name: list(b.calls) for name, b in cases.items()}
    vanished = {name: [b.calls.pop(21), b.calls.pop(3)] for name, b in cases.items()}

    # 23 calls: pages of 10, 10 and 3.
    for name, batch in cases.items():
        listing = f"{fake_api.base_url}/api/agents/{AGENT_ID}/scheduled_batches/{batch.batch_id}"
        listing += "/scheduled_calls?pageSize=10&cursor="
        page2 = f"{batch.batch_id}/scheduled_calls?pageSize=10&cursor=bz0xMA%3D%3D"
        page3 = f"{batch.batch_id}/scheduled_calls?pageSize=10&cursor=bz0yMA%3D%3D"
        middle = batch.calls[10:20]
        if name == "repeated cursor":
            payload = page_payload(middle, total=23, next_url=listing + cursor(10))
            fake_api.inject_payload(payload, path_contains=page2)
        elif name == "next link without a cursor":
            payload = page_payload(middle, total=23, next_url=listing.replace("&cursor=", ""))
            fake_api.inject_payload(payload, path_contains=page2)
        elif name == "invalid cursor (404)":
            fake_api.inject(404, path_contains=page2, body=b'{"detail":"Invalid cursor"}')
        elif name == "page that is not an object":
            fake_api.inject_payload([{"status": "FUTURE"}], path_contains=page2)
        elif name == "page without results":
            fake_api.inject_payload({"next": None, "total": 23}, path_contains=page2)
        elif name == "total larger than the listing":
            fake_api.inject_payload(page_payload(batch.calls[20:], total=25), path_contains=page3)
        elif name == "total smaller than the listing":
            fake_api.inject_payload(page_payload(batch.calls[20:], total=20), path_contains=page3)
        elif name == "total changed between pages":
            payload = page_payload(middle, total=24, next_url=listing + cursor(20))
            fake_api.inject_payload(payload, path_contains=page2)
        else:
            assert name == "a call vanished mid-listing"

            # Deleted while the job pages through the batch: the offsets shift, so the next
            # page skips a call that is still there. Count and final total agree all the same.
            def vanish(target: str, batch: FakeBatch = batch, page2: str = page2) -> None:
                if page2 in target and len(batch.calls) == 23:
                    vanished["a call vanished mid-listing"].append(batch.calls.pop(2))

            Interposer(fake_api, vanish)

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 1
    for name, batch in cases.items():
        last = batch_runs(engine, batch.batch_id)[-1]
        assert (last.status, last.removed) == (
            "failed" if BROKEN_LISTINGS[name] else "succeeded",
            0,
        ), name
        after = by_error(engine, batch.batch_id)
        assert [t for t, r in after.items() if r.removed_at is not None] == [], name
        assert set(after) == set(original[name])
        if BROKEN_LISTINGS[name]:
            assert last.error, name
            assert f"batch {batch.batch_id}: failed:" in result.stdout
        else:
            warned = [ln for ln in result.stderr.splitlines() if batch.batch_id in ln]
            assert any("no record is marked removed" in ln for ln in warned), name
    assert retry_waits == []
    assert len(vanished["a call vanished mid-listing"]) == 3

    # The next complete listing removes them; when they come back, it is cleared.
    clean = run_cli("sync", "--config", str(config))
    assert clean.exit_code == 0, clean.stderr
    for name, batch in cases.items():
        removed = sorted(t for t, r in by_error(engine, batch.batch_id).items() if r.removed_at)
        assert removed == sorted(v["error"] for v in vanished[name]), name
        batch.calls[:] = everything[name]
    back = run_cli("sync", "--config", str(config))
    assert back.exit_code == 0, back.stderr
    for name, batch in cases.items():
        final = by_error(engine, batch.batch_id)
        assert all(r.removed_at is None for r in final.values())
        assert {t: r.id for t, r in final.items()} == {t: r.id for t, r in original[name].items()}
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)


def test_a_filtered_listing_never_marks_a_call_removed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(fake_api, [call(f"c{n}", "FUTURE" if n % 2 else "PENDING") for n in range(8)])
    config = make_config(fake_api, tmp_path, database_url, [batch])
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    filtered = tmp_path / "filtered.toml"
    filtered.write_text(config.read_text() + 'statuses = ["FUTURE"]\n')
    del batch.calls[0]  # a PENDING call: absent from the FUTURE listing either way
    del batch.calls[0]  # a FUTURE call

    result = run_cli("sync", "--config", str(filtered))

    assert result.exit_code == 0, result.stderr
    assert count(engine, "SELECT count(*) FROM scheduled_calls WHERE removed_at IS NOT NULL") == 0
    assert count(engine, "SELECT count(*) FROM scheduled_calls") == 8


# == 5. Records that do not fit -----------------------------------------------------------

OTHER_BATCH = "0b7e4d52-aaaa-4bbb-8ccc-0123456789ab"
BAD_RECORDS: list[tuple[str, Any]] = [
    # (a word the reason must name, the record; "batchId": None is filled with the batch's)
    ("status", {"batchId": None, "callId": None, "metadata": {"tag": "no-status"}}),
    ("status", {"batchId": None, "status": 7, "metadata": {"tag": "int-status"}}),
    ("status", {"batchId": None, "status": None}),
    ("status", {"batchId": None, "status": ""}),
    ("batchId", {"status": "FUTURE", "metadata": {"tag": "no-batch"}}),
    ("batchId", {"status": "FUTURE", "batchId": OTHER_BATCH}),
    ("batchId", {"status": "FUTURE", "batchId": 12}),
    ("callId", {"batchId": None, "status": "SUCCESS", "callId": 42}),
    ("error", {"batchId": None, "status": "ERROR", "error": {"code": 500}}),
    ("medium", {"batchId": None, "status": "FUTURE", "medium": "twilio"}),
    ("metadata", {"batchId": None, "status": "FUTURE", "metadata": ["not", "an", "object"]}),
    ("metadata", {"batchId": None, "status": "FUTURE", "metadata": "campaign=x"}),
    (
        "metadata",
        {
            "batchId": None,
            "status": "FUTURE",
            "metadata": 5,
            "medium": {
                "sip": {
                    "outgoing": {
                        "to": "sip:carol@example.com",
                        "username": "agent09",
                        "password": f"{SIP_PASSWORD_MARK}rejected",
                    }
                }
            },
        },
    ),
    ("object", "just a string"),
    ("object", None),
    ("object", 42),
    ("object", ["FUTURE"]),
]


def test_records_that_do_not_fit_are_rejected_and_the_rest_of_the_page_loads(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    good = [call(f"good-{n}") for n in range(6)] + [call("new-status", "CANCELLED")]
    batch = add_batch(fake_api, good)
    batch.calls[1]["batchId"] = batch.batch_id.upper()  # the same batch, in capitals
    bad = []
    for _, record in BAD_RECORDS:
        if isinstance(record, dict) and "batchId" in record and record["batchId"] is None:
            record = {**record, "batchId": batch.batch_id}
        bad.append(record)
    # Good and bad records interleaved on one page, as the API lists them.
    listing: list[Any] = []
    positions = []
    for n, record in enumerate(bad):
        positions.append(len(listing))
        listing.append(record)
        if n < len(batch.calls):
            listing.append(batch.calls[n])
    assert len(listing) == len(bad) + len(good)
    fake_api.inject_payload(page_payload(listing), path_contains="scheduled_calls", times=2)
    config = make_config(fake_api, tmp_path, database_url, [batch], page_size=100)

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
    assert by_error(engine, batch.batch_id)["new-status"].status == "CANCELLED"
    assert result.stderr.count("new status value 'CANCELLED' stored as sent") == 1
    r = rejected_records.c
    stored = fetch(
        engine, select(r.run_id, r.batch_id, r.page, r.position, r.reason, r.payload).order_by(r.id)
    )
    assert len(stored) == len(bad)
    for row, (word, _), record, position in zip(stored, BAD_RECORDS, bad, positions, strict=True):
        assert (row.run_id, row.batch_id, row.page, row.position) == (
            1,
            batch.batch_id,
            1,
            position,
        )
        assert word in row.reason, (row.reason, record)
        assert row.payload == strip_password(record)
        assert f"page 1 record {position} rejected: {row.reason}" in result.stderr
    line = summary_line(batch, result.stdout)
    assert f"fetched={len(listing)}/{len(listing)} inserted={len(good)}" in line
    assert f"rejected={len(bad)}" in line
    (batch_run,) = batch_runs(engine, batch.batch_id)
    assert (batch_run.status, batch_run.rejected, batch_run.removed) == ("succeeded", len(bad), 0)
    assert runs(engine)[0].calls_rejected == len(bad)
    dumped = dump_all_tables(engine)
    assert "agent09" in dumped and SIP_PASSWORD_MARK not in dumped

    # --strict: the same page fails its batch (and the run).
    strict = run_cli("sync", "--strict", "--config", str(config))
    assert strict.exit_code == 1
    last = batch_runs(engine, batch.batch_id)[-1]
    assert (last.status, last.rejected, last.removed) == ("failed", len(bad), 0)
    assert f"{len(bad)} records rejected (strict mode)" in last.error
    assert f"batch {batch.batch_id}: failed:" in strict.stdout
    assert runs(engine)[-1].status == "failed"
    assert count(engine, "SELECT count(*) FROM rejected_records WHERE run_id = 2") == len(bad)
    assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)


def test_an_unexpected_error_in_one_batch_fails_that_batch_alone(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches = [add_generated_batch(fake_api, 15, seed=n) for n in range(3)]
    crashing = batches[0]
    check = scheduled_calls_stream.check_record

    def buggy(record: Any, batch: Any, **kwargs: Any) -> None:
        if batch.batch_id == crashing.batch_id:
            raise RuntimeError("a bug in normalization")
        check(record, batch, **kwargs)

    monkeypatch.setattr(scheduled_call_loader, "check_record", buggy)
    # One worker: the batches after the crashed one must still be synced.
    config = make_config(fake_api, tmp_path, database_url, batches, concurrency=1)

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 1
    (crashed,) = batch_runs(engine, crashing.batch_id)
    assert crashed.status == "failed"
    assert crashed.error == "crashed: RuntimeError: a bug in normalization"
    assert f"batch {crashing.batch_id}: failed" in result.stdout
    assert "Traceback" in result.stderr and "a bug in normalization" in result.stderr
    assert TEST_API_KEY not in result.stderr
    for batch in batches[1:]:
        assert batch_runs(engine, batch.batch_id)[0].status == "succeeded"
        assert db_full_view(engine, batch.batch_id) == api_full_view(fake_api, batch.batch_id)
    (run,) = runs(engine)
    assert (run.status, run.batches_ok, run.batches_failed) == ("partial", 2, 1)
    assert "run 1: partial: 2 of 3 batches synced" in result.stdout


def test_a_lone_surrogate_escape_in_a_record_does_not_stop_its_page(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # "\ud800" is valid JSON text, but no UTF-8 database column can hold what it decodes to.
    batch = add_batch(fake_api, [call("fine-1"), call("fine-2")])
    listing = json.dumps(page_payload([*batch.calls, call("odd", batchId=batch.batch_id)]))
    listing = listing.replace('"tag": "odd"', '"tag": "odd \\ud800 one"')
    assert "\\ud800" in listing
    fake_api.inject(200, body=listing.encode(), path_contains="scheduled_calls")
    config = make_config(fake_api, tmp_path, database_url, [batch])

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    stored = by_error(engine, batch.batch_id)
    assert stored["fine-1"].metadata == {"tag": "fine-1"}
    assert stored["fine-2"].metadata == {"tag": "fine-2"}
    kept = count(engine, "SELECT count(*) FROM scheduled_calls WHERE error = 'odd'")
    rejected = count(engine, "SELECT count(*) FROM rejected_records")
    assert kept + rejected == 1  # stored (in some documented form) or set aside, not lost


# == 6. Text PostgreSQL refuses: U+0000 ---------------------------------------------------

NUL = "\x00"
NUL_RECORDS: dict[str, dict[str, Any]] = {
    "in a metadata value": {"metadata": {"note": f"before{NUL}after", "plain": "ok"}},
    "in a metadata key": {"metadata": {f"k{NUL}ey": "v", "plain": "ok"}},
    "in the template context": {
        "templateContext": {"a": [f"x{NUL}", {"deep": NUL * 3}], f"key{NUL}": 1}
    },
    "in the error": {"status": "ERROR", "error_suffix": f" at byte{NUL}0"},
    "in the medium, beside a SIP password": {
        "medium": {
            "sip": {
                "outgoing": {
                    "to": f"sip:nul{NUL}@example.com",
                    "username": f"agent{NUL}10",
                    "password": f"{SIP_PASSWORD_MARK}{NUL}nul",
                }
            }
        }
    },
    "in experimental settings": {"experimentalSettings": {"flag": f"on{NUL}"}},
    "everywhere": {
        "metadata": {NUL: NUL},
        "templateContext": {NUL: [NUL]},
        "experimentalSettings": {"x": NUL},
        "error_suffix": NUL,
    },
}


def _nul_call(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    record = call(f"nul {name}" + spec.get("error_suffix", ""), spec.get("status", "FUTURE"))
    record.update({k: v for k, v in spec.items() if k not in ("error_suffix", "status")})
    return record


def _fffd(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, "\ufffd")
    if isinstance(value, dict):
        return {_fffd(k): _fffd(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fffd(v) for v in value]
    return value


def test_nul_characters_are_stored_losslessly_and_never_crash_a_batch(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    records = [_nul_call(name, spec) for name, spec in NUL_RECORDS.items()]
    batch = add_batch(fake_api, [*records, call("no nul here")])
    bad = {**_nul_call("rejected", {"metadata": [f"x{NUL}"]}), "batchId": batch.batch_id}
    listing = page_payload([*batch.calls, bad])
    fake_api.inject_payload(listing, path_contains="scheduled_calls")
    config = make_config(fake_api, tmp_path, database_url, [batch], page_size=100)

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    assert f"batch {batch.batch_id}: succeeded:" in summary_line(batch, result.stdout)
    stored = {r.error: r for r in by_error(engine, batch.batch_id).values()}
    assert len(stored) == len(batch.calls)
    media = {r.scheduled_call_id: r for r in fetch(engine, select(scheduled_call_media))}
    m = scheduled_call_metadata.c
    entries: dict[int, dict[str, str]] = {}
    for row in fetch(engine, select(m.scheduled_call_id, m.key, m.value)):
        entries.setdefault(row.scheduled_call_id, {})[row.key] = row.value
    for record in batch.calls:
        row = stored[_fffd(record["error"])]
        # Columns: U+0000 became U+FFFD, nothing else changed.
        assert row.status == record["status"]
        assert row.metadata == _fffd(record.get("metadata"))
        assert row.template_context == _fffd(record.get("templateContext"))
        assert row.experimental_settings == _fffd(record.get("experimentalSettings"))
        assert entries.get(row.id, {}) == _fffd(record["metadata"] or {})
        if record["error"] == "no nul here":
            assert row.nul_escaped_record is None
            continue
        # The exact record, as JSON text (SIP password removed).
        assert json.loads(row.nul_escaped_record) == strip_password(record)
        assert NUL not in row.nul_escaped_record and "\\u0000" in row.nul_escaped_record
    sip = next(r for r in records if "medium" in r and "sip" in r["medium"])
    sip_row = media[stored[_fffd(sip["error"])].id]
    assert (sip_row.to_address, sip_row.sip_username, sip_row.sip_password_set) == (
        "sip:nul\ufffd@example.com",
        "agent\ufffd10",
        True,
    )
    (reject,) = fetch(engine, select(rejected_records.c.reason, rejected_records.c.payload))
    assert "metadata" in reject.reason
    assert reject.payload == _fffd(bad)
    dumped = dump_all_tables(engine)
    assert SIP_PASSWORD_MARK not in dumped

    # Stored once, not rewritten by the next run.
    again = run_cli("sync", "--config", str(config))
    assert again.exit_code == 0, again.stderr
    assert f"inserted=0 updated=0 unchanged={len(batch.calls)}" in summary_line(batch, again.stdout)


# == 7. Extreme values --------------------------------------------------------------------

MEGABYTE_VALUE = "é" + "x" * 1_000_000 + "🚀"
EXTREME_RECORDS: dict[str, dict[str, Any]] = {
    "megabyte metadata value": {"metadata": {"tag": "mb", "blob": MEGABYTE_VALUE}},
    "unicode keys and values": {
        "metadata": {
            "名前": "Zoë 🚀",
            "עברית": "שלום עולם",
            "combining": "e\u0301 vs \u00e9",
            "emoji 👩‍👩‍👧 key": "👩‍👩‍👧",
            "zero\u200bwidth": "\u200b\ufeff",
            "bidi": "\u202eevil\u202c",
            "astral": "\U0001d518\U0001d529 \U00010348 \U0001f9ea",
        },
        "templateContext": {"客户": {"名字": "José", "langs": ["es", "中文", "🏳️‍🌈"]}},
    },
    "sql-looking strings": {
        "metadata": {
            "'; DROP TABLE scheduled_calls; --": "' OR '1'='1",
            "%s": "%(x)s %% :param $1 ? @p",
            "back\\slash": '\\"\\n"\n\t\r',
            'quote"key': "Robert'); DELETE FROM etl_runs;--",
        },
        "templateContext": {"sql": "SELECT * FROM scheduled_calls WHERE 1=1; --"},
    },
    "empty objects": {
        "medium": {},
        "metadata": {},
        "templateContext": {},
        "experimentalSettings": {},
    },
    "empty values": {
        "metadata": {"": "", " ": " "},
        "templateContext": {"list": [], "obj": {}, "s": "", "none": None, "f": False, "z": 0},
        "experimentalSettings": {"nested": [[], [{}], [[[]]]]},
    },
    "numbers": {
        "templateContext": {
            "big": 2**70,
            "bigger": -(10**30),
            "double": 9007199254740993,
            "small": 1e-7,
            "tenth": 0.1,
        },
    },
    "deeply nested": {"templateContext": {"d": [[[[[[[[[[[[[[[[["bottom"]]]]]]]]]]]]]]]]]}},
}


def _extreme_call(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    record = call(f"case {name}")
    record.update(spec)
    return record


def test_long_unicode_sql_looking_and_empty_values_round_trip_exactly(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    batch = add_batch(
        fake_api, [_extreme_call(name, spec) for name, spec in EXTREME_RECORDS.items()]
    )
    empty = add_batch(fake_api, [])
    # An empty page in the middle of a listing (its next link leads on to the rest).
    paged = add_batch(fake_api, [call(f"p{n}") for n in range(7)])
    base = f"{fake_api.base_url}/api/agents/{AGENT_ID}/scheduled_batches/{paged.batch_id}"
    fake_api.inject_payload(
        page_payload(
            [], total=7, next_url=f"{base}/scheduled_calls?pageSize=3&cursor={cursor(3, '&e=1')}"
        ),
        path_contains=f"{paged.batch_id}/scheduled_calls?pageSize=3&cursor=",
    )
    config = make_config(fake_api, tmp_path, database_url, [batch, empty, paged], page_size=3)

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    stored = by_error(engine, batch.batch_id)
    assert set(stored) == {r["error"] for r in batch.calls}
    m = scheduled_call_metadata.c
    entries: dict[int, dict[str, str]] = {}
    for row in fetch(engine, select(m.scheduled_call_id, m.key, m.value)):
        entries.setdefault(row.scheduled_call_id, {})[row.key] = row.value
    for record in batch.calls:
        row = stored[record["error"]]
        assert row.metadata == record["metadata"], record["error"]
        assert row.template_context == record.get("templateContext"), record["error"]
        assert row.experimental_settings == record.get("experimentalSettings"), record["error"]
        assert json.dumps(row.template_context, sort_keys=True) == json.dumps(
            record.get("templateContext"), sort_keys=True
        )
        assert entries.get(row.id, {}) == {
            k: _metadata_value(v) for k, v in (record["metadata"] or {}).items()
        }
        assert row.nul_escaped_record is None
    assert entries[stored["case megabyte metadata value"].id]["blob"] == MEGABYTE_VALUE
    assert stored["case empty objects"].medium_type == "webRtc"
    assert count(engine, "SELECT count(*) FROM etl_runs") == 1  # no statement was injected
    assert count(engine, "SELECT count(*) FROM scheduled_calls") == len(batch.calls) + 7
    assert summary_line(empty, result.stdout).startswith(
        f"batch {empty.batch_id}: succeeded: scheduled_calls pages=1 fetched=0/0 inserted=0"
    )
    assert summary_line(paged, result.stdout).startswith(
        f"batch {paged.batch_id}: succeeded: scheduled_calls pages=4 fetched=7/7 inserted=7"
    )
    assert db_full_view(engine, paged.batch_id) == api_full_view(fake_api, paged.batch_id)

    again = run_cli("sync", "--config", str(config))
    assert again.exit_code == 0, again.stderr
    assert f"inserted=0 updated=0 unchanged={len(batch.calls)} removed=0" in summary_line(
        batch, again.stdout
    )


def test_a_very_long_metadata_key_is_kept_in_the_metadata_json(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> None:
    # Incompressible, and longer than a PostgreSQL btree entry may be (about 2.7 kB).
    long_key = f"{random.Random(7).getrandbits(4 * 4000):04000x}"
    assert len(long_key) == 4000
    batch = add_batch(fake_api, [call("long", metadata={long_key: "v", "tag": "long"}), call("x")])
    config = make_config(fake_api, tmp_path, database_url, [batch])

    result = run_cli("sync", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    stored = by_error(engine, batch.batch_id)
    assert stored["long"].metadata == {long_key: "v", "tag": "long"}
    m = scheduled_call_metadata.c
    keys = fetch(engine, select(m.key).where(m.scheduled_call_id == stored["long"].id))
    # Too long for a PostgreSQL index: no key/value row (on either database, alike), and
    # the whole object stays in scheduled_calls.metadata, so nothing is lost.
    assert sorted(k for (k,) in keys) == ["tag"]


# == 8. Secrets ---------------------------------------------------------------------------


def test_secrets_never_reach_logs_errors_the_database_or_another_host(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    retry_waits: list[float],
    tmp_path: Path,
    capture_all_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = add_generated_batch(fake_api, 40, seed=6)
    assert SIP_PASSWORD_MARK in json.dumps(batch.calls)
    paged = add_generated_batch(fake_api, 25, seed=9)
    echoing = add_generated_batch(fake_api, 5, seed=7)
    redirected = add_generated_batch(fake_api, 5, seed=8)
    everyone = [batch, paged, echoing, redirected]
    secrets = [TEST_API_KEY, SIP_PASSWORD_MARK, DB_PASSWORD]
    secrets += [b.webhook_secret for b in everyone if b.webhook_secret]
    assert len(secrets) == 7

    with FakeUltravox(api_key=TEST_API_KEY) as elsewhere:
        # Next links point at another host; only their cursor may be used.
        fake_api.next_link_base = elsewhere.base_url
        # A record with the SIP password and U+0000, and a rejected one with the password.
        sip = {
            "sip": {"outgoing": {"to": "sip:x@example.com", "password": f"{SIP_PASSWORD_MARK}z"}}
        }
        batch.calls.append(call(f"nul{NUL}", medium=sip, batchId=batch.batch_id))
        rejected = call("bad", metadata=[1], medium=sip, batchId=batch.batch_id)
        listing = page_payload([*batch.calls, rejected])
        fake_api.inject_payload(listing, path_contains=f"{batch.batch_id}/scheduled_calls")
        # An error body that quotes the key: transient once, then for good.
        echo = f'{{"detail":"invalid key {TEST_API_KEY}"}}'.encode()
        fake_api.inject(500, body=echo, path_contains=echoing.batch_id)
        fake_api.inject(400, body=echo, path_contains=echoing.batch_id)
        # A redirect to the other host.
        route = fake_api._route

        def redirecting(path: str, query: Any, link_base: str) -> Any:
            if path.endswith(redirected.batch_id):
                return FakeResponse(302, b"", [("Location", f"{elsewhere.base_url}{path}")])
            return route(path, query, link_base)

        monkeypatch.setattr(fake_api, "_route", redirecting)
        url = make_url(database_url)
        if url.get_backend_name() == "postgresql":
            url = url.set(password=DB_PASSWORD)  # trust auth accepts any password
        config = make_config(fake_api, tmp_path, None, everyone, page_size=10)

        result = run_cli(
            "sync",
            "-v",
            "--config",
            str(config),
            "--database-url",
            url.render_as_string(hide_password=False),
        )
        # A database that cannot be reached, with a password in its URL.
        unreachable = run_cli(
            "sync",
            "-v",
            "--config",
            str(config),
            "--database-url",
            f"postgresql://root:{DB_PASSWORD}@127.0.0.1:1/nowhere",
        )
        elsewhere_requests = list(elsewhere.requests)

    assert result.exit_code == 1  # the echoing and the redirected batch failed
    assert elsewhere_requests == []
    assert "next link points to host" in result.stderr
    expected = Counter(_api_call_view(_fffd(c)) for c in batch.calls)
    assert db_full_view(engine, batch.batch_id) == expected
    assert db_full_view(engine, paged.batch_id) == api_full_view(fake_api, paged.batch_id)
    assert calls_requests(fake_api, paged) == 3
    errors = {b.batch_id: batch_runs(engine, b.batch_id)[0] for b in (echoing, redirected)}
    assert errors[echoing.batch_id].status == "failed"
    assert "HTTP 400" in errors[echoing.batch_id].error
    assert "invalid key [API key]" in errors[echoing.batch_id].error
    assert errors[redirected.batch_id].status == "failed"
    assert "HTTP 302 redirect" in errors[redirected.batch_id].error
    assert len(retry_waits) == 1
    assert unreachable.exit_code == 1
    assert "ultravox-etl: database error:" in unreachable.stderr
    assert "***" in unreachable.stderr

    logged = [result.stdout, result.stderr, unreachable.stdout, unreachable.stderr]
    for record in capture_all_logs.records:
        logged.append(f"{record.name} {record.getMessage()} {record.args!r}")
        if record.exc_info:
            logged.append(logging.Formatter().formatException(record.exc_info))
    text = "\n".join(logged)
    assert "urllib3" in {r.name.split(".")[0] for r in capture_all_logs.records}
    assert "sqlalchemy" in {r.name.split(".")[0] for r in capture_all_logs.records}
    assert "page 1 with 42 results" in text
    dumped = dump_all_tables(engine)
    assert "sip:x@example.com" in dumped
    for secret in secrets:
        assert secret not in text, secret
        assert secret not in dumped, secret
    # The key went to the configured API only, in its header only.
    assert {r.header("x-api-key") for r in fake_api.requests} == {TEST_API_KEY}
    assert all(TEST_API_KEY not in r.path + json.dumps(r.query) for r in fake_api.requests)
