"""Prometheus metrics of a run, written as a text file for node_exporter's textfile collector.

    ultravox-etl sync --config etl.toml --metrics-file /var/lib/node_exporter/ultravox_etl.prom

prometheus_client renders the exposition format and replaces the file atomically (a temporary
file beside it, then a rename), so the collector never reads half a file. Every metric is a
gauge describing the last run; labels are fixed sets (statuses, streams, outcomes), never
batch ids, so the number of series stays constant:

- `ultravox_etl_last_run_timestamp_seconds`, `ultravox_etl_run_duration_seconds`,
  `ultravox_etl_run_exit_code`, `ultravox_etl_run_status{status}` (1 for the last run's);
- `ultravox_etl_last_success_timestamp_seconds`: when the last run that synced every batch
  ended (kept across failed runs, read from etl_runs); 0 if none is known;
- `ultravox_etl_stalest_batch_age_seconds`: how long ago the least recently listed batch of
  the database was listed to the end; it grows while a hung run holds a batch's lock;
- `ultravox_etl_rows{stream,outcome}`: the last run's rows by stream and outcome;
- `ultravox_etl_batches{status}`: the last run's batches by status.

Alert on staleness (`time() - ultravox_etl_last_success_timestamp_seconds`, or the stalest
batch's age), not on one failure.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from etl.domain import EXIT_FAILED, BatchStatus, RunStatus, StreamCounts
from etl.load.backends import UnsupportedDatabase
from etl.load.database import open_engine
from etl.load.schema import scheduled_batches
from etl.report.history import last_success_at
from etl.report.results import RunResult
from etl.streams import stream_names

log = logging.getLogger(__name__)

PREFIX = "ultravox_etl"
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"
RUN_STATUSES = tuple(
    s.value for s in RunStatus if s not in (RunStatus.RUNNING, RunStatus.ABANDONED)
)
BATCH_STATUSES = tuple(
    s.value for s in BatchStatus if s not in (BatchStatus.RUNNING, BatchStatus.ABANDONED)
)


@dataclass(frozen=True)
class RunMetrics:
    """What the metrics file says about one run."""

    finished_at: datetime
    duration_seconds: float
    status: str
    exit_code: int
    last_success_at: float | None
    """Unix time of the latest successful run's end, this one or an earlier one."""
    stalest_batch_age_seconds: float | None = None
    rows: dict[str, StreamCounts] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)


def metrics_for_run(
    result: RunResult,
    *,
    last_success: float | None,
    duration_seconds: float | None = None,
    stalest_batch_age_seconds: float | None = None,
) -> RunMetrics:
    """The metrics of a finished run; `last_success` is the earlier success, if known."""
    finished = result.finished_at or result.started_at
    if result.status is RunStatus.SUCCEEDED:
        last_success = max(last_success or 0.0, finished.timestamp())
    if duration_seconds is None:
        duration_seconds = (finished - result.started_at).total_seconds()
    return RunMetrics(
        finished_at=finished,
        duration_seconds=duration_seconds,
        status=result.status.value,
        exit_code=result.exit_code,
        last_success_at=last_success,
        stalest_batch_age_seconds=stalest_batch_age_seconds,
        rows=result.stream_totals(),
        batches=result.batches_by_status(),
    )


def metrics_for_failure(
    *,
    finished_at: datetime,
    duration_seconds: float,
    exit_code: int = EXIT_FAILED,
    last_success: float | None,
) -> RunMetrics:
    """A run that ended before it had a result (database unusable, stopped by a signal)."""
    return RunMetrics(
        finished_at=finished_at,
        duration_seconds=duration_seconds,
        status=RunStatus.FAILED.value,
        exit_code=exit_code,
        last_success_at=last_success,
    )


def registry_for(metrics: RunMetrics) -> CollectorRegistry:
    """The metrics as a prometheus_client registry of gauges."""
    registry = CollectorRegistry()

    def gauge(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", help_text, labels, registry=registry)

    gauge("last_run_timestamp_seconds", "Unix time at which the last run ended.").set(
        round(metrics.finished_at.timestamp(), 3)
    )
    gauge(
        "last_success_timestamp_seconds",
        "Unix time at which the last run that synced every batch ended (0: none is known).",
    ).set(round(metrics.last_success_at or 0.0, 3))
    gauge("run_duration_seconds", "How long the last run took, in seconds.").set(
        round(metrics.duration_seconds, 3)
    )
    status = gauge("run_status", "1 for the status of the last run, 0 for the others.", ("status",))
    for name in RUN_STATUSES:
        status.labels(name).set(int(name == metrics.status))
    gauge(
        "run_exit_code",
        "Exit code of the last run (0 ok, 1 failed, 75 a batch locked elsewhere, 128+N signal).",
    ).set(metrics.exit_code)
    if metrics.stalest_batch_age_seconds is not None:
        gauge(
            "stalest_batch_age_seconds",
            "Seconds since the least recently synced batch was last listed to the end.",
        ).set(round(metrics.stalest_batch_age_seconds, 3))
    rows = gauge("rows", "Rows of the last run, by stream and outcome.", ("stream", "outcome"))
    for stream in stream_names():
        counts = metrics.rows.get(stream, StreamCounts())
        for outcome in StreamCounts.ROW_OUTCOMES:
            rows.labels(stream, outcome).set(getattr(counts, outcome))
    batches = gauge("batches", "Batches of the last run, by status.", ("status",))
    for name in BATCH_STATUSES:
        batches.labels(name).set(metrics.batches.get(name, 0))
    return registry


def write_metrics_file(path: str | os.PathLike[str], metrics: RunMetrics) -> None:
    """Write the file atomically (prometheus_client: a temporary file, then a rename)."""
    write_to_textfile(str(path), registry_for(metrics))
    os.chmod(path, 0o644)  # node_exporter usually runs as another user


def previous_last_success(path: str | os.PathLike[str]) -> float | None:
    """The last success timestamp an earlier run wrote to the metrics file, if any."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value) or None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return None


def _from_database(database_url: str) -> tuple[float | None, float | None]:
    """The latest successful run's end and the stalest batch's age; None where unknown."""
    try:
        engine = open_engine(database_url)
    except UnsupportedDatabase:
        return None, None
    try:
        when = last_success_at(engine)
        b = scheduled_batches.c
        with engine.connect() as conn:
            oldest = conn.execute(
                select(func.min(b.last_synced_at)).where(b.removed_at.is_(None))
            ).scalar_one_or_none()
    except SQLAlchemyError as exc:  # the metrics must not fail the run: fall back to the file
        log.warning("metrics: cannot read the run history: %s", type(exc).__name__)
        return None, None
    finally:
        engine.dispose()
    age = None
    if isinstance(oldest, datetime):
        age = (datetime.now(UTC) - oldest.replace(tzinfo=oldest.tzinfo or UTC)).total_seconds()
    return (None if when is None else when.timestamp()), age


def write_run_metrics(
    path: str | os.PathLike[str],
    result: RunResult,
    *,
    database_url: str,
    duration_seconds: float | None = None,
) -> RunMetrics:
    """Write the metrics of a finished run; the last success comes from etl_runs."""
    last, stalest = _from_database(database_url)
    if last is None:
        last = previous_last_success(path)
    metrics = metrics_for_run(
        result,
        last_success=last,
        duration_seconds=duration_seconds,
        stalest_batch_age_seconds=stalest,
    )
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
