"""What each run did: the etl_runs / etl_batch_runs records and the printed summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine, insert, update

from etl.config import BatchRef
from etl.load.schema import etl_batch_runs, etl_runs

Clock = Callable[[], datetime]


class BatchStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    """Some batches failed; the others committed."""
    FAILED = "failed"


@dataclass(slots=True)
class BatchCounts:
    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: int = 0
    api_total: int | None = None


@dataclass(slots=True)
class BatchResult:
    batch: BatchRef
    status: BatchStatus
    counts: BatchCounts
    error: str | None = None


@dataclass(slots=True)
class RunResult:
    run_id: int
    status: RunStatus = RunStatus.RUNNING
    batches: list[BatchResult] = field(default_factory=list)
    error: str | None = None

    @property
    def failed(self) -> list[BatchResult]:
        return [b for b in self.batches if b.status is BatchStatus.FAILED]


class RunRecorder:
    """Writes run and batch-run records, each in its own short transaction.

    The run row is committed as `running` before any batch starts, so a run that dies is
    visible as such.
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def start_run(self) -> RunResult:
        with self.engine.begin() as conn:
            run_id = conn.execute(
                insert(etl_runs)
                .values(started_at=self.clock(), status=RunStatus.RUNNING.value)
                .returning(etl_runs.c.run_id)
            ).scalar_one()
        return RunResult(run_id=run_id)

    def start_batch(self, run: RunResult, batch: BatchRef) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(etl_batch_runs).values(
                    run_id=run.run_id,
                    batch_id=batch.batch_id,
                    agent_id=batch.agent_id,
                    status=RunStatus.RUNNING.value,
                    started_at=self.clock(),
                )
            )

    def finish_batch(self, run: RunResult, result: BatchResult) -> None:
        run.batches.append(result)
        c = result.counts
        with self.engine.begin() as conn:
            conn.execute(
                update(etl_batch_runs)
                .where(
                    (etl_batch_runs.c.run_id == run.run_id)
                    & (etl_batch_runs.c.batch_id == result.batch.batch_id)
                )
                .values(
                    status=result.status.value,
                    pages=c.pages,
                    fetched=c.fetched,
                    inserted=c.inserted,
                    updated=c.updated,
                    unchanged=c.unchanged,
                    removed=c.removed,
                    rejected=c.rejected,
                    api_total=c.api_total,
                    error=result.error,
                    finished_at=self.clock(),
                )
            )

    def finish_run(self, run: RunResult) -> None:
        failed = len(run.failed)
        if run.error is not None or (failed and failed == len(run.batches)):
            run.status = RunStatus.FAILED
        elif failed:
            run.status = RunStatus.PARTIAL
        else:
            run.status = RunStatus.SUCCEEDED
        counts = [b.counts for b in run.batches]
        with self.engine.begin() as conn:
            conn.execute(
                update(etl_runs)
                .where(etl_runs.c.run_id == run.run_id)
                .values(
                    finished_at=self.clock(),
                    status=run.status.value,
                    batches_ok=len(run.batches) - failed,
                    batches_failed=failed,
                    calls_fetched=sum(c.fetched for c in counts),
                    calls_inserted=sum(c.inserted for c in counts),
                    calls_updated=sum(c.updated for c in counts),
                    calls_unchanged=sum(c.unchanged for c in counts),
                    calls_removed=sum(c.removed for c in counts),
                    calls_rejected=sum(c.rejected for c in counts),
                    error=run.error,
                )
            )


def summary_lines(run: RunResult) -> list[str]:
    """One line per batch, then one for the run."""
    lines = []
    for b in run.batches:
        c = b.counts
        total = "?" if c.api_total is None else str(c.api_total)
        line = (
            f"batch {b.batch.batch_id}: {b.status.value}: pages={c.pages} "
            f"fetched={c.fetched}/{total} inserted={c.inserted} updated={c.updated} "
            f"unchanged={c.unchanged} removed={c.removed} rejected={c.rejected}"
        )
        if b.error:
            line += f" error: {b.error}"
        lines.append(line)
    run_line = f"run {run.run_id}: {run.status.value}: {len(run.batches) - len(run.failed)} "
    run_line += f"of {len(run.batches)} batches synced"
    if run.error:
        run_line += f"; {run.error}"
    lines.append(run_line)
    return lines
