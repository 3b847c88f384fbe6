"""Prometheus metrics of a run, written as a text file for node_exporter's textfile collector.

    ultravox-etl sync --config etl.toml --metrics-file /var/lib/node_exporter/ultravox_etl.prom

The file is replaced atomically (written beside it, then renamed), so the collector never
reads half a file. Labels are a fixed set of outcomes and statuses, never batch ids, so the
number of series stays constant.

- `ultravox_etl_last_run_timestamp_seconds`: when the last run ended.
- `ultravox_etl_last_success_timestamp_seconds`: when the last successful run ended; kept
  across failed runs (read from etl_runs); 0 if none is known.
- `ultravox_etl_run_duration_seconds`: how long the last run took.
- `ultravox_etl_run_status{status}`: 1 for the last run's status (succeeded, partial,
  failed), 0 for the others.
- `ultravox_etl_run_exit_code`: the last run's exit code (0, 1, 75, 128+N).
- `ultravox_etl_calls_total{outcome}`: calls of the last run by outcome (inserted, updated,
  unchanged, removed, rejected). A gauge: each run replaces the numbers.
- `ultravox_etl_batches{status}`: batches of the last run by status (succeeded, failed,
  locked, skipped, removed).

Alert on `time() - ultravox_etl_last_success_timestamp_seconds` growing, not on one failure.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from etl.load.database import open_engine
from etl.report import EXIT_FAILED, BatchStatus, RunResult, RunStatus
from etl.runs import last_success_at

log = logging.getLogger(__name__)

PREFIX = "ultravox_etl"
CALL_OUTCOMES = ("inserted", "updated", "unchanged", "removed", "rejected")
BATCH_STATUSES = tuple(s.value for s in BatchStatus)
RUN_STATUSES = (RunStatus.SUCCEEDED.value, RunStatus.PARTIAL.value, RunStatus.FAILED.value)
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"


@dataclass(frozen=True)
class RunMetrics:
    """What the metrics file says about one run."""

    finished_at: datetime
    duration_seconds: float
    status: str
    exit_code: int
    last_success_at: float | None
    """Unix time of the latest successful run's end, this one or an earlier one."""
    calls: dict[str, int] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)


def metrics_for_run(
    result: RunResult, *, last_success: float | None, duration_seconds: float | None = None
) -> RunMetrics:
    """The metrics of a finished run; `last_success` is the earlier success, if known."""
    finished = result.finished_at or result.started_at
    if result.status is RunStatus.SUCCEEDED:
        last_success = max(last_success or 0.0, finished.timestamp())
    if duration_seconds is None:
        duration_seconds = (finished - result.started_at).total_seconds()
    batches = dict.fromkeys(BATCH_STATUSES, 0)
    for batch in result.batches:
        batches[batch.status.value] = batches.get(batch.status.value, 0) + 1
    return RunMetrics(
        finished_at=finished,
        duration_seconds=duration_seconds,
        status=result.status.value,
        exit_code=result.exit_code,
        last_success_at=last_success,
        calls={
            outcome: sum(getattr(b.counts, outcome) for b in result.batches)
            for outcome in CALL_OUTCOMES
        },
        batches=batches,
    )


def metrics_for_failure(
    *,
    finished_at: datetime,
    duration_seconds: float,
    exit_code: int = EXIT_FAILED,
    last_success: float | None,
) -> RunMetrics:
    """A run that ended before it had a result (database unreachable, stopped by a signal)."""
    return RunMetrics(
        finished_at=finished_at,
        duration_seconds=duration_seconds,
        status=RunStatus.FAILED.value,
        exit_code=exit_code,
        last_success_at=last_success,
        calls=dict.fromkeys(CALL_OUTCOMES, 0),
        batches=dict.fromkeys(BATCH_STATUSES, 0),
    )


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


def render(metrics: RunMetrics) -> str:
    """The metrics in Prometheus text exposition format (0.0.4)."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {PREFIX}_{name} {help_text}")
        out.append(f"# TYPE {PREFIX}_{name} {kind}")
        for labels, value in samples:
            out.append(f"{PREFIX}_{name}{labels} {_number(value)}")

    family(
        "last_run_timestamp_seconds",
        "gauge",
        "Unix time at which the last run ended.",
        [("", round(metrics.finished_at.timestamp(), 3))],
    )
    family(
        "last_success_timestamp_seconds",
        "gauge",
        "Unix time at which the last successful run ended (0: none is known).",
        [("", round(metrics.last_success_at or 0.0, 3))],
    )
    family(
        "run_duration_seconds",
        "gauge",
        "How long the last run took, in seconds.",
        [("", round(metrics.duration_seconds, 3))],
    )
    family(
        "run_status",
        "gauge",
        "1 for the status of the last run, 0 for the others.",
        [(f'{{status="{s}"}}', int(s == metrics.status)) for s in RUN_STATUSES],
    )
    family(
        "run_exit_code",
        "gauge",
        "Exit code of the last run (0 ok, 1 failed, 75 every batch locked, 128+N signal).",
        [("", metrics.exit_code)],
    )
    family(
        "calls_total",
        "gauge",
        "Scheduled calls of the last run, by outcome.",
        [(f'{{outcome="{o}"}}', metrics.calls.get(o, 0)) for o in CALL_OUTCOMES],
    )
    family(
        "batches",
        "gauge",
        "Batches of the last run, by status.",
        [(f'{{status="{s}"}}', n) for s, n in metrics.batches.items()],
    )
    return "\n".join(out) + "\n"


def write_metrics_file(path: str | os.PathLike[str], metrics: RunMetrics) -> None:
    """Write the file atomically: a temporary file beside it, then a rename over it."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(metrics))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # node_exporter usually runs as another user
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def previous_last_success(path: str | os.PathLike[str]) -> float | None:
    """The last success timestamp an earlier run wrote to the metrics file, if any."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == LAST_SUCCESS:
            try:
                return float(value) or None
            except ValueError:
                return None
    return None


def last_success_from_database(database_url: str) -> float | None:
    """The latest successful run in etl_runs, as Unix time; None if unknown or unreadable."""
    try:
        engine = open_engine(database_url)
    except Exception:
        return None
    try:
        when = last_success_at(engine)
    except Exception as exc:  # the metrics must not fail the run: fall back to the file
        log.warning("metrics: cannot read the last successful run: %s", type(exc).__name__)
        return None
    finally:
        engine.dispose()
    return None if when is None else when.timestamp()


def write_run_metrics(
    path: str | os.PathLike[str],
    result: RunResult,
    *,
    database_url: str,
    duration_seconds: float | None = None,
) -> RunMetrics:
    """Write the metrics of a finished run; the last success comes from etl_runs."""
    last = last_success_from_database(database_url)
    if last is None:
        last = previous_last_success(path)
    metrics = metrics_for_run(result, last_success=last, duration_seconds=duration_seconds)
    write_metrics_file(path, metrics)
    return metrics


def write_failure_metrics(
    path: str | os.PathLike[str],
    *,
    finished_at: datetime,
    duration_seconds: float,
    exit_code: int,
) -> RunMetrics:
    """Write the metrics of a run that had no result; the last success is kept from the file."""
    metrics = metrics_for_failure(
        finished_at=finished_at,
        duration_seconds=duration_seconds,
        exit_code=exit_code,
        last_success=previous_last_success(path),
    )
    write_metrics_file(path, metrics)
    return metrics
