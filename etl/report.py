"""What each run did: the etl_runs / etl_batch_runs records and the printed summary."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine, insert, select, update

from etl.config import BatchRef
from etl.load.locks import Lock, Locks
from etl.load.schema import etl_batch_runs, etl_runs

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TRY_LATER = 75
"""EX_TEMPFAIL: every batch was being synced by another run; cron and Airflow retry later."""


class BatchStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOCKED = "locked"
    """Skipped: another run was syncing the batch for longer than the lock wait."""
    SKIPPED = "skipped"
    """Not listed: the batch has ended and every stored call is final (see `note`)."""
    REMOVED = "removed"
    """The API no longer has this batch, which the job knew; its calls are kept."""


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    """Some batches failed; the others committed."""
    FAILED = "failed"
    ABANDONED = "abandoned"
    """The process died without finishing the run (found so by a later run)."""


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

    def as_dict(self) -> dict[str, int | None]:
        """The counts by name, for JSON logs, XComs and `runs --json`."""
        return dataclasses.asdict(self)


@dataclass(slots=True)
class BatchResult:
    batch: BatchRef
    status: BatchStatus
    counts: BatchCounts
    error: str | None = None
    note: str | None = None
    """Why a batch was skipped or how its listing ended, for the summary."""


@dataclass(slots=True)
class RunResult:
    """What a run did; returned by etl.sync() and recorded in etl_runs / etl_batch_runs."""

    run_id: int
    started_at: datetime
    finished_at: datetime | None = None
    status: RunStatus = RunStatus.RUNNING
    batches: list[BatchResult] = field(default_factory=list)
    error: str | None = None

    @property
    def failed(self) -> list[BatchResult]:
        return [b for b in self.batches if b.status is BatchStatus.FAILED]

    @property
    def exit_code(self) -> int:
        """0 all synced; 1 something failed; 75 every batch was locked by another run."""
        if self.error is not None or self.failed:
            return EXIT_FAILED
        if self.batches and all(b.status is BatchStatus.LOCKED for b in self.batches):
            return EXIT_TRY_LATER
        return EXIT_OK


class RunRecorder:
    """Writes run and batch-run records, each in its own short transaction.

    The run row is committed as `running` before any batch starts, so a run that dies is
    visible as such.
    """

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self._results_lock = threading.Lock()  # batches finish on worker threads

    def start_run(self, locks: Locks) -> tuple[RunResult, Lock | None]:
        """Record a new running run, and take its lock "run:<id>" for as long as it lives.

        The lock is taken before the record commits, so no other run can ever see the
        record `running` with its lock free and take it for abandoned.
        """
        started = self.clock()
        with self.engine.begin() as conn:
            run_id = conn.execute(
                insert(etl_runs)
                .values(started_at=started, status=RunStatus.RUNNING.value)
                .returning(etl_runs.c.run_id)
            ).scalar_one()
            lock = locks.try_acquire(f"run:{run_id}", disposable=True)
        return RunResult(run_id=run_id, started_at=started), lock

    def mark_abandoned(self, current: RunResult, locks: Locks) -> list[int]:
        """Close the records of earlier runs left `running` by a process that died.

        A live run holds the lock "run:<id>"; a free lock means nobody is finishing it.
        """
        with self.engine.connect() as conn:
            candidates = (
                conn.execute(
                    select(etl_runs.c.run_id).where(
                        (etl_runs.c.status == RunStatus.RUNNING.value)
                        & (etl_runs.c.run_id != current.run_id)
                    )
                )
                .scalars()
                .all()
            )
        abandoned = []
        for run_id in candidates:
            lock = locks.try_acquire(f"run:{run_id}", disposable=True)
            if lock is None:
                continue  # still alive
            try:
                now = self.clock()
                with self.engine.begin() as conn:
                    conn.execute(
                        update(etl_runs)
                        .where(
                            (etl_runs.c.run_id == run_id)
                            & (etl_runs.c.status == RunStatus.RUNNING.value)
                        )
                        .values(
                            status=RunStatus.ABANDONED.value,
                            finished_at=now,
                            error="the process ended without finishing the run",
                        )
                    )
                    conn.execute(
                        update(etl_batch_runs)
                        .where(
                            (etl_batch_runs.c.run_id == run_id)
                            & (etl_batch_runs.c.status == RunStatus.RUNNING.value)
                        )
                        .values(status=RunStatus.ABANDONED.value, finished_at=now)
                    )
            finally:
                lock.release()
            log.warning(
                "run %d had been left running by a process that died; marked abandoned", run_id
            )
            abandoned.append(run_id)
        return abandoned

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
        with self._results_lock:
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
                    note=result.note,
                    finished_at=self.clock(),
                )
            )

    def finish_run(self, run: RunResult, *, stopped: bool = False) -> None:
        """Close the run record. `stopped`: the run ended early (interrupt, refused key)."""
        failed = len(run.failed)
        ok = len(run.batches) - failed
        if stopped or ((run.error is not None or failed) and ok == 0):
            run.status = RunStatus.FAILED
        elif run.error is not None or failed:
            run.status = RunStatus.PARTIAL
        else:
            run.status = RunStatus.SUCCEEDED
        counts = [b.counts for b in run.batches]
        run.finished_at = self.clock()
        with self.engine.begin() as conn:
            conn.execute(
                update(etl_runs)
                .where(etl_runs.c.run_id == run.run_id)
                .values(
                    finished_at=run.finished_at,
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
            # Batches a stopped run left unfinished (their worker was cut off mid-way).
            conn.execute(
                update(etl_batch_runs)
                .where(
                    (etl_batch_runs.c.run_id == run.run_id)
                    & (etl_batch_runs.c.status == RunStatus.RUNNING.value)
                )
                .values(
                    status=BatchStatus.FAILED.value,
                    error=run.error or "the run ended before this batch finished",
                    finished_at=run.finished_at,
                )
            )


_DONE = (BatchStatus.SUCCEEDED, BatchStatus.SKIPPED, BatchStatus.REMOVED)


def batch_line(
    batch_id: str,
    status: str,
    counts: Mapping[str, int | None],
    *,
    note: str | None = None,
    error: str | None = None,
) -> str:
    """One batch's outcome as the summary and `runs` print it."""
    total = "?" if counts.get("api_total") is None else str(counts["api_total"])
    line = (
        f"batch {batch_id}: {status}: pages={counts['pages']} "
        f"fetched={counts['fetched']}/{total} inserted={counts['inserted']} "
        f"updated={counts['updated']} unchanged={counts['unchanged']} "
        f"removed={counts['removed']} rejected={counts['rejected']}"
    )
    if note:
        line += f" ({note})"
    if error:
        line += f" error: {error}"
    return line


def summary_lines(run: RunResult) -> list[str]:
    """One line per batch, then one for the run."""
    lines = [
        batch_line(b.batch.batch_id, b.status.value, b.counts.as_dict(), note=b.note, error=b.error)
        for b in run.batches
    ]
    done = sum(b.status in _DONE for b in run.batches)
    run_line = f"run {run.run_id}: {run.status.value}: {done} of {len(run.batches)} batches synced"
    locked = sum(b.status is BatchStatus.LOCKED for b in run.batches)
    if locked:
        run_line += f", {locked} locked by another run"
    if run.error:
        run_line += f"; {run.error}"
    lines.append(run_line)
    return lines
