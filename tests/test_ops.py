"""Unattended operation: the Python API, JSON logs, -q, progress, `runs`, the metrics file."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from etl.config import BatchRef
from etl.domain import StreamCounts
from etl.fake_api import FakeBatch, FakeUltravox
from etl.report import progress
from etl.report.logs import JsonFormatter
from etl.report.metrics import metrics_for_failure, registry_for, write_metrics_file
from tests.conftest import TEST_API_KEY, rows, run_console_script, write_config
from tests.test_sync_e2e import add_generated_batch, api_view, db_view

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def config_for(
    fake: FakeUltravox, tmp_path: Path, database_url: str, batches: list[FakeBatch], **api: Any
) -> Path:
    return write_config(
        tmp_path / "etl.toml",
        fake.base_url,
        [(b.agent_id, b.batch_id) for b in batches],
        database_url=database_url,
        **api,
    )


# -- the Python API ------------------------------------------------------------------------------


def test_import_etl_is_light_and_etl_sync_is_the_pipelines_sync() -> None:
    code = (
        "import sys, etl\n"
        "assert 'sqlalchemy' not in sys.modules and 'etl.pipeline' not in sys.modules\n"
        "from etl.pipeline import sync\n"
        "from etl.report.results import RunResult\n"
        "assert etl.sync is sync and etl.RunResult is RunResult\n"
        "assert {'sync', 'RunResult', 'load_config'} <= set(dir(etl))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_etl_sync_returns_per_batch_outcomes_and_counts(
    fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    import etl

    batches = [add_generated_batch(fake_api, n, seed=n) for n in (23, 4)]
    path = config_for(fake_api, tmp_path, database_url, batches)
    config = etl.load_config(path, environ={"ULTRAVOX_API_KEY": TEST_API_KEY})

    result = etl.sync(config, batch_ids=[batches[1].batch_id])

    assert isinstance(result, etl.RunResult)
    assert result.exit_code == 0
    assert [(b.batch.batch_id, b.status.value) for b in result.batches] == [
        (batches[1].batch_id, "succeeded")
    ]
    assert (result.batches[0].counts.fetched, result.batches[0].counts.inserted) == (4, 4)
    assert db_view(engine, batches[1].batch_id) == api_view(fake_api, batches[1].batch_id)
    assert rows(
        engine, "SELECT count(*) FROM scheduled_calls WHERE batch_id = :b", b=batches[0].batch_id
    ) == [(0,)]


# -- logs ----------------------------------------------------------------------------------------


def parse_json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = stderr.splitlines()
    assert lines, "no log line at all"
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in parsed:
        assert isinstance(entry, dict)
        assert {"timestamp", "level", "logger", "message"} <= entry.keys()
        assert ISO_UTC.fullmatch(entry["timestamp"]), entry["timestamp"]
        datetime.fromisoformat(entry["timestamp"])
    return parsed


def test_json_logs_are_one_object_per_line_with_run_batch_event_and_counts(
    fake_api: FakeUltravox, database_url: str, tmp_path: Path
) -> None:
    batches = [add_generated_batch(fake_api, n, seed=n) for n in (25, 7)]
    missing = add_generated_batch(fake_api, 3, seed=9)
    fake_api.remove_batch(missing.batch_id)  # configured but gone: that batch fails
    config = config_for(fake_api, tmp_path, database_url, [*batches, missing])

    result = run_console_script(
        "sync", "-v", "--log-format", "json", "--config", str(config),
        env={"ULTRAVOX_API_KEY": TEST_API_KEY},
    )  # fmt: skip

    assert result.exit_code == 1
    entries = parse_json_lines(result.stderr)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_event.setdefault(entry.get("event", ""), []).append(entry)
    (started,) = by_event["run_started"]
    run_id = started["run_id"]
    assert isinstance(run_id, int) and started["level"] == "INFO"
    synced = {e["batch_id"]: e for e in by_event["batch_synced"]}
    assert synced.keys() == {b.batch_id for b in batches}
    assert synced[batches[0].batch_id]["counts"] == {
        "pages": 3, "fetched": 25, "inserted": 25, "updated": 0, "unchanged": 0,
        "removed": 0, "rejected": 0, "api_total": 25,
    }  # fmt: skip
    assert all(e["run_id"] == run_id for e in synced.values())
    failed = [e for e in entries if e["level"] == "ERROR" and e.get("batch_id") == missing.batch_id]
    assert failed and failed[0]["run_id"] == run_id
    (finished,) = by_event["run_finished"]
    assert finished["run_id"] == run_id and finished["level"] == "WARNING"
    assert finished["counts"]["fetched"] == 32 and finished["counts"]["batches_failed"] == 1
    assert any(e["level"] == "DEBUG" and "page 1 with" in e["message"] for e in entries)  # -v
    assert TEST_API_KEY not in result.stderr + result.stdout
    # The summary still goes to stdout, as plain lines.
    assert result.stdout.splitlines()[-1].startswith(f"run {run_id}: partial: 2 of 3")


def test_the_json_formatter_keeps_exceptions_on_one_line() -> None:
    import logging

    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord(
            "etl.x", logging.ERROR, __file__, 1, "boom %s", ("x",), sys.exc_info()
        )
    record.batch_id = "b"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "boom x" and entry["batch_id"] == "b"
    assert "ValueError: bad\nthing" in entry["exception"]
    assert "run_id" not in entry and "counts" not in entry


def test_quiet_prints_only_errors_and_the_summary(
    fake_api: FakeUltravox, database_url: str, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 12)
    config = config_for(fake_api, tmp_path, database_url, [batch])
    env = {"ULTRAVOX_API_KEY": TEST_API_KEY}

    ok = run_console_script("sync", "-q", "--config", str(config), env=env)
    assert (ok.exit_code, ok.stderr) == (0, "")
    assert ok.stdout.splitlines()[-1] == "run 1: succeeded: 1 of 1 batches synced"

    fake_api.remove_batch(batch.batch_id)  # the batch is known now: it is marked removed
    gone = add_generated_batch(fake_api, 2, seed=4)
    fake_api.remove_batch(gone.batch_id)  # never seen: it fails
    config = config_for(fake_api, tmp_path, database_url, [batch, gone])
    bad = run_console_script("sync", "-q", "--config", str(config), env=env)
    assert bad.exit_code == 1
    assert bad.stderr.splitlines() and all(" ERROR " in line for line in bad.stderr.splitlines())
    assert f"batch {gone.batch_id} failed" in bad.stderr
    assert len(bad.stdout.splitlines()) == 3


# -- progress ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


BATCH = BatchRef("11111111-2222-4333-8444-555555555555", "0b7e4d52-1c9a-4f3e-8a6d-5e2f1c0b9a31")


def test_log_progress_writes_at_most_one_line_per_batch_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    reporter = progress.LogProgress(10.0, clock=clock)
    caplog.set_level("INFO", logger="etl.progress")
    for page in range(1, 41):  # a page every second, 100 calls each, of 5000
        clock.now += 1
        reporter(
            BATCH, "scheduled_calls", StreamCounts(pages=page, fetched=100 * page, api_total=5000)
        )
    lines = [r for r in caplog.records if r.name == "etl.progress"]
    assert len(lines) == 3  # 10, 20 and 30 seconds after the first page
    assert lines[0].getMessage() == (
        f"progress: batch {BATCH.batch_id} scheduled_calls: "
        "11 pages, 1100/5000 records (22%), 100/s"
    )
    assert lines[0].__dict__["event"] == "progress"
    assert lines[0].__dict__["streams"]["scheduled_calls"]["fetched"] == 1100


def test_terminal_progress_redraws_its_lines_in_place_and_clears_them() -> None:
    clock = Clock()
    out = io.StringIO()
    reporter = progress.TerminalProgress(out, clock=clock, redraw_seconds=0.5, width=200)
    other = BatchRef(BATCH.agent_id, "4c2d9e81-7b3f-4a10-9c5e-8d1a6f2b3c42")
    reporter(BATCH, "scheduled_calls", StreamCounts(pages=1, fetched=100, api_total=300))
    clock.now += 0.1
    reporter(
        other, "scheduled_calls", StreamCounts(pages=1, fetched=50)
    )  # within redraw_seconds: not drawn yet
    clock.now += 1
    reporter(BATCH, "scheduled_calls", StreamCounts(pages=2, fetched=200, api_total=300))
    screen = out.getvalue()
    first = f"batch {BATCH.batch_id} scheduled_calls: 1 page, 100/300 records (33%)\n"
    assert screen.startswith(first)
    assert screen[len(first) :] == (
        "\x1b[1F\x1b[J"  # up one line, clear
        f"batch {BATCH.batch_id} scheduled_calls: 2 pages, 200/300 records (67%), 91/s\n"
        f"batch {other.batch_id} scheduled_calls: 1 page, 50 records, 0/s\n"
    )
    reporter.close()
    assert out.getvalue().endswith("\x1b[2F\x1b[J")


def test_terminal_progress_shows_at_most_max_lines_batches_updated_last() -> None:
    clock = Clock()
    out = io.StringIO()
    reporter = progress.TerminalProgress(out, clock=clock, width=200, max_lines=2)
    refs = [BatchRef(BATCH.agent_id, f"{n}0000000-7b3f-4a10-9c5e-8d1a6f2b3c42") for n in range(4)]
    for n, ref in enumerate(refs):  # the first two finished without the API's total known
        clock.now += 1
        reporter(ref, "scheduled_calls", StreamCounts(pages=1, fetched=n))
    clock.now += 1
    reporter(refs[1], "scheduled_calls", StreamCounts(pages=2, fetched=9))
    assert [line.split(":")[0] for line in reporter.lines(clock.now)] == [
        f"batch {refs[1].batch_id} scheduled_calls",
        f"batch {refs[3].batch_id} scheduled_calls",
    ]


def test_terminal_progress_writes_log_lines_above_its_status_lines() -> None:
    import logging

    from etl.report.logs import ConsoleHandler

    out = io.StringIO()
    handler = ConsoleHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    reporter = progress.TerminalProgress(out, handler, clock=Clock(), width=200)
    reporter(BATCH, "scheduled_calls", StreamCounts(pages=1, fetched=10))
    handler.emit(logging.LogRecord("etl", logging.WARNING, "", 0, "a warning", (), None))
    reporter.close()
    handler.emit(logging.LogRecord("etl", logging.WARNING, "", 0, "later", (), None))
    status = f"batch {BATCH.batch_id} scheduled_calls: 1 page, 10 records\n"
    assert out.getvalue() == (
        f"{status}\x1b[1F\x1b[Ja warning\n{status}\x1b[1F\x1b[Jlater\n"
    )  # fmt: skip


def test_sync_off_a_terminal_logs_progress_lines(
    fake_api: FakeUltravox,
    database_url: str,
    tmp_path: Path,
    run_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = add_generated_batch(fake_api, 45)
    config = config_for(fake_api, tmp_path, database_url, [batch])
    monkeypatch.setattr(progress, "LOG_INTERVAL_SECONDS", 0.0)

    result = run_cli("sync", "--log-format", "json", "--config", str(config))

    assert result.exit_code == 0, result.stderr
    lines = [e for e in parse_json_lines(result.stderr) if e.get("event") == "progress"]
    assert [e["streams"]["scheduled_calls"]["fetched"] for e in lines][:2] == [10, 20]
    assert all(e["batch_id"] == batch.batch_id for e in lines)


def test_sync_on_a_terminal_shows_live_progress_on_stderr(
    fake_api: FakeUltravox, database_url: str, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 30)
    config = config_for(fake_api, tmp_path, database_url, [batch])
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, cols
    env = {k: v for k, v in os.environ.items() if not k.startswith("ULTRAVOX")}
    env.update({"ULTRAVOX_API_KEY": TEST_API_KEY, "TERM": "xterm"})
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ultravox-etl")), "sync", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
        text=True,
    )
    os.close(secondary)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    stdout, _ = proc.communicate(timeout=60)
    os.close(primary)

    assert proc.returncode == 0, screen
    text = screen.decode()
    assert f"batch {batch.batch_id} scheduled_calls: 1 page, 10/30 records (33%)" in text
    assert "\x1b[1F\x1b[J" in text  # the status line is cleared, for log lines and at the end
    assert stdout.splitlines()[-1] == "run 1: succeeded: 1 of 1 batches synced"


# -- runs ----------------------------------------------------------------------------------------


def test_runs_shows_the_latest_runs_and_each_batch(
    fake_api: FakeUltravox, database_url: str, tmp_path: Path, run_cli: Any
) -> None:
    batches = [add_generated_batch(fake_api, n, seed=n) for n in (14, 3)]
    config = config_for(fake_api, tmp_path, database_url, batches)
    assert run_cli("sync", "--config", str(config)).exit_code == 0
    fake_api.inject_connection_reset(times=100, path_contains=batches[1].batch_id)
    assert run_cli("sync", "--config", str(config)).exit_code == 1

    shown = run_cli("runs", "--config", str(config), api_key=None)  # no API key needed

    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("run 2: partial started ")
    assert "1 batches ok, 1 failed; calls fetched=14 inserted=0 updated=0 unchanged=14" in lines[0]
    batch_lines = {
        line.split()[1].rstrip(":"): line for line in lines if line.startswith("  batch")
    }
    assert len(lines) == 6 and len(batch_lines) == 2
    assert lines[3].startswith("run 1: succeeded started ")
    assert "calls fetched=17 inserted=17" in lines[3]
    second_run = [line for line in lines[1:3] if batches[1].batch_id in line]
    assert second_run and f"batch {batches[1].batch_id}: failed; error: " in second_run[0]

    latest = run_cli("runs", "--config", str(config), "--limit", "1", "--json", api_key=None)
    assert latest.exit_code == 0, latest.stderr
    (run,) = json.loads(latest.stdout)
    assert (run["run_id"], run["status"], run["batches_ok"], run["batches_failed"]) == (
        2,
        "partial",
        1,
        1,
    )
    assert run["calls"] == {
        "fetched": 14,
        "inserted": 0,
        "updated": 0,
        "unchanged": 14,
        "removed": 0,
        "rejected": 0,
    }
    by_batch = {b["batch_id"]: b for b in run["batches"]}
    assert by_batch[batches[0].batch_id]["status"] == "succeeded"
    assert by_batch[batches[0].batch_id]["counts"]["api_total"] == 14
    assert by_batch[batches[1].batch_id]["status"] == "failed"
    assert by_batch[batches[1].batch_id]["error"]
    assert datetime.fromisoformat(run["finished_at"]) >= datetime.fromisoformat(run["started_at"])


def test_runs_on_a_database_without_runs_says_so_and_creates_nothing(
    tmp_path: Path, run_cli: Any
) -> None:
    config = write_config(tmp_path / "etl.toml", "http://127.0.0.1:9", [])
    target = tmp_path / "never.db"

    shown = run_cli(
        "runs", "--config", str(config), "--database-url", f"sqlite:///{target}", api_key=None
    )

    assert (shown.exit_code, shown.stdout) == (0, "no runs recorded yet\n")
    assert not target.exists()
    as_json = run_cli(
        "runs", "--config", str(config), "--database-url", f"sqlite:///{target}", "--json"
    )
    assert json.loads(as_json.stdout) == []


# -- metrics -------------------------------------------------------------------------------------


def read_metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the file, parsed by prometheus_client's text-format parser."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.documentation, family.name
        assert family.type == "gauge", family.name
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[f"ultravox_etl_{name}", tuple(sorted(labels.items()))]


def test_the_metrics_file_is_prometheus_text_and_keeps_the_last_success(
    fake_api: FakeUltravox, database_url: str, tmp_path: Path, run_cli: Any
) -> None:
    batches = [add_generated_batch(fake_api, n, seed=n) for n in (21, 5)]
    config = config_for(fake_api, tmp_path, database_url, batches)
    folder = tmp_path / "textfile"
    folder.mkdir()
    prom = folder / "ultravox_etl.prom"

    before = time.time()
    ok = run_cli("sync", "--config", str(config), "--metrics-file", str(prom))

    assert ok.exit_code == 0, ok.stderr
    first = read_metrics(prom)
    assert before - 1 <= metric(first, "last_run_timestamp_seconds") <= time.time() + 1
    assert metric(first, "last_success_timestamp_seconds") == pytest.approx(
        metric(first, "last_run_timestamp_seconds"), abs=1
    )
    assert 0 < metric(first, "run_duration_seconds") < 60
    assert metric(first, "run_status", status="succeeded") == 1
    assert metric(first, "run_status", status="partial") == 0
    assert metric(first, "run_exit_code") == 0
    assert metric(first, "rows", stream="scheduled_calls", outcome="inserted") == 26
    assert metric(first, "rows", stream="scheduled_calls", outcome="rejected") == 0
    assert metric(first, "batches", status="succeeded") == 2
    assert metric(first, "batches", status="failed") == 0
    assert {labels for name, labels in first if name == "ultravox_etl_batches"} == {
        (("status", s),) for s in ("succeeded", "failed", "locked", "skipped", "removed")
    }
    assert sorted(p.name for p in folder.iterdir()) == ["ultravox_etl.prom"]  # no temp file left

    # A failed run: new run time and status, the last success stays that of the first run.
    time.sleep(1.1)
    fake_api.inject_connection_reset(times=100, path_contains=batches[1].batch_id)
    failed = run_cli("sync", "--config", str(config), "--metrics-file", str(prom))
    assert failed.exit_code == 1
    second = read_metrics(prom)
    assert metric(second, "last_run_timestamp_seconds") > metric(
        first, "last_run_timestamp_seconds"
    )
    assert metric(second, "last_success_timestamp_seconds") == metric(
        first, "last_success_timestamp_seconds"
    )
    assert metric(second, "run_status", status="partial") == 1
    assert metric(second, "run_exit_code") == 1
    assert metric(second, "batches", status="failed") == 1
    assert metric(second, "rows", stream="scheduled_calls", outcome="unchanged") == 21

    # The database cannot be reached: the run has no result, the file still says so.
    unreachable = run_cli(
        "sync", "--config", str(config), "--metrics-file", str(prom),
        "--database-url", "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2",
    )  # fmt: skip
    assert unreachable.exit_code == 1
    third = read_metrics(prom)
    assert metric(third, "run_status", status="failed") == 1
    assert metric(third, "last_success_timestamp_seconds") == metric(
        first, "last_success_timestamp_seconds"
    )
    assert metric(third, "rows", stream="scheduled_calls", outcome="inserted") == 0


def test_a_metrics_file_in_a_missing_folder_is_a_usage_error(
    fake_api: FakeUltravox, database_url: str, tmp_path: Path, run_cli: Any
) -> None:
    config = config_for(fake_api, tmp_path, database_url, [add_generated_batch(fake_api, 2)])
    result = run_cli(
        "sync", "--config", str(config), "--metrics-file", str(tmp_path / "no" / "x.prom")
    )
    assert result.exit_code == 2
    assert "--metrics-file" in result.stderr
    assert fake_api.requests == []


def test_rendered_metrics_parse_and_the_file_is_replaced_atomically(tmp_path: Path) -> None:
    metrics = metrics_for_failure(
        finished_at=datetime(2025, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
        duration_seconds=1.25,
        exit_code=143,
        last_success=(datetime(2025, 5, 1, tzinfo=UTC) - timedelta(minutes=10)).timestamp(),
    )
    target = tmp_path / "m.prom"
    target.write_text("old")
    write_metrics_file(target, metrics)
    assert target.read_text() == generate_latest(registry_for(metrics)).decode()
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]  # no temporary file left
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    samples = read_metrics(target)
    assert metric(samples, "last_run_timestamp_seconds") == 1746100800.5
    assert metric(samples, "last_success_timestamp_seconds") == 1746057000
    assert metric(samples, "run_exit_code") == 143
    assert metric(samples, "run_status", status="failed") == 1
