"""Run history: what the latest runs did, from etl_runs and etl_batch_runs.

`ultravox-etl runs` prints it; the metrics file reads the last successful run from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, inspect, select

from etl.domain import COUNT_NAMES, RunStatus
from etl.load.backends import backend_for
from etl.load.database import open_engine, reporting_connection_errors, require_head
from etl.load.schema import etl_batch_runs, etl_runs, etl_stream_runs
from etl.report.records import RUN_COUNT_NAMES
from etl.report.summary import batch_line
from etl.streams import stream_names


@dataclass(frozen=True)
class StreamRunRecord:
    stream: str
    counts: dict[str, int | None]
    note: str | None


@dataclass(frozen=True)
class BatchRunRecord:
    batch_id: str
    agent_id: str
    status: str
    counts: dict[str, int | None]
    """The batch's counts over its streams (api_total included)."""
    streams: list[StreamRunRecord]
    error: str | None
    note: str | None
    """Why a batch was skipped, locked or found removed (etl_batch_runs.note)."""
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class RunRecord:
    run_id: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    batches_ok: int
    batches_failed: int
    calls: dict[str, int]
    error: str | None
    batches: list[BatchRunRecord] = field(default_factory=list)

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def read_history(database_url: str, limit: int = 10) -> list[RunRecord]:
    """The latest runs in the database at `database_url`; none if it has no run tables.

    Read only: a SQLite file that does not exist is not created, the schema is not migrated.
    """
    engine = open_engine(database_url)
    try:
        if backend_for(engine).database_missing(engine.url):
            return []
        with reporting_connection_errors(engine):
            if not has_history(engine):
                return []
        require_head(engine)  # an older schema lacks columns read here: say so plainly
        with reporting_connection_errors(engine):
            return latest_runs(engine, limit)
    finally:
        engine.dispose()


def has_history(engine: Engine) -> bool:
    """Whether the database has the run tables at all (it may never have been migrated)."""
    names = set(inspect(engine).get_table_names())
    return {etl_runs.name, etl_batch_runs.name} <= names


def latest_runs(engine: Engine, limit: int = 10) -> list[RunRecord]:
    """The `limit` latest runs, newest first, each with its batches in the order they ran."""
    r = etl_runs.c
    with engine.connect() as conn:
        run_rows = conn.execute(select(etl_runs).order_by(r.run_id.desc()).limit(limit)).all()
        ids = [row.run_id for row in run_rows]
        batch_rows = (
            conn.execute(
                select(etl_batch_runs)
                .where(etl_batch_runs.c.run_id.in_(ids))
                .order_by(etl_batch_runs.c.started_at, etl_batch_runs.c.batch_id)
            ).all()
            if ids
            else []
        )
        stream_rows = (
            conn.execute(select(etl_stream_runs).where(etl_stream_runs.c.run_id.in_(ids))).all()
            if ids
            else []
        )
    streams: dict[tuple[int, str], list[StreamRunRecord]] = {}
    order = {name: n for n, name in enumerate(stream_names())}
    for row in sorted(stream_rows, key=lambda r: order.get(r.stream, len(order))):
        streams.setdefault((row.run_id, row.batch_id), []).append(
            StreamRunRecord(
                stream=row.stream,
                counts={name: getattr(row, name) for name in COUNT_NAMES},
                note=row.note,
            )
        )
    batches: dict[int, list[BatchRunRecord]] = {run_id: [] for run_id in ids}
    for row in batch_rows:
        batches[row.run_id].append(
            BatchRunRecord(
                batch_id=row.batch_id,
                agent_id=row.agent_id,
                status=row.status,
                counts={name: getattr(row, name) for name in COUNT_NAMES},
                streams=streams.get((row.run_id, row.batch_id), []),
                error=row.error,
                note=row.note,
                started_at=row.started_at,
                finished_at=row.finished_at,
            )
        )
    return [
        RunRecord(
            run_id=row.run_id,
            status=row.status,
            started_at=row.started_at,
            finished_at=row.finished_at,
            batches_ok=row.batches_ok,
            batches_failed=row.batches_failed,
            calls={name: getattr(row, f"calls_{name}") for name in RUN_COUNT_NAMES},
            error=row.error,
            batches=batches[row.run_id],
        )
        for row in run_rows
    ]


def last_success_at(engine: Engine) -> datetime | None:
    """When the latest run that succeeded finished; None if none has."""
    r = etl_runs.c
    query = (
        select(r.finished_at)
        .where((r.status == RunStatus.SUCCEEDED.value) & r.finished_at.is_not(None))
        .order_by(r.finished_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar_one_or_none()


# -- output --------------------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def format_runs(runs: list[RunRecord]) -> list[str]:
    """Human-readable lines: one per run, then one per batch of it, indented."""
    if not runs:
        return ["no runs recorded yet"]
    lines: list[str] = []
    for run in runs:
        calls = " ".join(f"{k}={v}" for k, v in run.calls.items())
        line = (
            f"run {run.run_id}: {run.status} started {_when(run.started_at)} "
            f"took {_duration(run.duration_seconds)}: {run.batches_ok} batches ok, "
            f"{run.batches_failed} failed; calls {calls}"
        )
        if run.error:
            line += f"; error: {run.error}"
        lines.append(line)
        for b in run.batches:
            # Runs before per-stream records: the batch's own counts stand for its one stream.
            streams = [(s.stream, s.counts if s.note is None else None, s.note) for s in b.streams]
            lines.append(
                "  " + batch_line(b.batch_id, b.status, streams, note=b.note, error=b.error)
            )
    return lines


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def runs_as_json(runs: list[RunRecord]) -> str:
    """A JSON array, newest run first; timestamps in ISO 8601 UTC."""
    data: list[dict[str, Any]] = [
        {
            "run_id": run.run_id,
            "status": run.status,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "duration_seconds": run.duration_seconds,
            "batches_ok": run.batches_ok,
            "batches_failed": run.batches_failed,
            "calls": run.calls,
            "error": run.error,
            "batches": [
                {
                    "batch_id": b.batch_id,
                    "agent_id": b.agent_id,
                    "status": b.status,
                    "counts": b.counts,
                    "streams": {s.stream: {**s.counts, "note": s.note} for s in b.streams},
                    "error": b.error,
                    "note": b.note,
                    "started_at": _iso(b.started_at),
                    "finished_at": _iso(b.finished_at),
                }
                for b in run.batches
            ],
        }
        for run in runs
    ]
    return json.dumps(data, indent=2)
