"""The run records: etl_runs, etl_batch_runs and etl_stream_runs, written from a RunResult.

The run row is committed as `running` before any batch starts, and each batch's row as it
starts and ends, so `runs` shows a run in progress and a later run can tell a dead one. A
batch whose start the database will not record is not synced: it fails, so its outcome is
never a success nobody can see. The end of a batch is written best effort: `finish_run`
writes every batch's outcome again, from the same numbers the summary prints, each batch in
its own transaction and the run's row last, so one record the database refuses costs only
that record; the run then says which records were lost, and exits 1.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from etl.config import BatchRef
from etl.domain import COUNT_NAMES, BatchStatus, RunStatus, StreamCounts
from etl.load.backends import Lock, Locks
from etl.load.database import explain
from etl.load.schema import etl_batch_runs, etl_runs, etl_stream_runs
from etl.report.results import BatchResult, RunResult

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
RUN_COUNT_NAMES = tuple(
    c.name.removeprefix("calls_") for c in etl_runs.columns if c.name.startswith("calls_")
)
"""The counts etl_runs adds up over its batches (as calls_<name>)."""


def _counts(counts: StreamCounts) -> dict[str, int | None]:
    return {name: getattr(counts, name) for name in COUNT_NAMES}


class RunRecorder:
    """Writes the run records, each write in its own short transaction."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()  # batches finish on worker threads

    def start_run(self, locks: Locks) -> tuple[RunResult, Lock | None]:
        """Record a new running run, and take its lock "run:<id>" for as long as it lives.

        The lock is taken before the record commits, so no other run can ever see the
        record `running` with its lock free and take it for abandoned.
        """
        started = self.clock()
        with self.engine.begin() as conn:
            inserted = conn.execute(
                insert(etl_runs).values(
                    started_at=started,
                    status=RunStatus.RUNNING.value,
                    **dict.fromkeys(("batches_ok", "batches_failed"), 0),
                    **{f"calls_{name}": 0 for name in RUN_COUNT_NAMES},
                )
            )
            key = inserted.inserted_primary_key
            if key is None:
                raise RuntimeError("etl_runs: the database returned no run_id")
            run_id = int(key[0])
            lock = locks.try_acquire(f"run:{run_id}", disposable=True)
        return RunResult(run_id=run_id, started_at=started), lock

    def mark_abandoned(self, current: RunResult, locks: Locks) -> list[int]:
        """Close the records of earlier runs left `running` by a process that died.

        A live run holds the lock "run:<id>"; a free lock means nobody is finishing it.
        """
        r = etl_runs.c
        with self.engine.connect() as conn:
            candidates = (
                conn.execute(
                    select(r.run_id).where(
                        (r.status == RunStatus.RUNNING.value) & (r.run_id != current.run_id)
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
                        .where((r.run_id == run_id) & (r.status == RunStatus.RUNNING.value))
                        .values(
                            status=RunStatus.ABANDONED.value,
                            finished_at=now,
                            error="the process ended without finishing the run",
                        )
                    )
                    b = etl_batch_runs.c
                    conn.execute(
                        update(etl_batch_runs)
                        .where((b.run_id == run_id) & (b.status == BatchStatus.RUNNING.value))
                        .values(status=BatchStatus.ABANDONED.value, finished_at=now)
                    )
            finally:
                lock.release()
            log.warning(
                "run %d had been left running by a process that died; marked abandoned", run_id
            )
            abandoned.append(run_id)
        return abandoned

    def start_batch(self, run: RunResult, batch: BatchRef) -> str | None:
        """Record the batch as running; None if recorded, else why the database refused
        (then the caller does not sync the batch, and fails it)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(etl_batch_runs).values(
                        run_id=run.run_id,
                        batch_id=batch.batch_id,
                        agent_id=batch.agent_id,
                        status=BatchStatus.RUNNING.value,
                        started_at=self.clock(),
                        **_counts(StreamCounts()),
                    )
                )
        except SQLAlchemyError as exc:
            return explain(exc)
        return None

    def finish_batch(self, run: RunResult, result: BatchResult) -> None:
        """Add the batch's outcome to the run and record it (best effort: finish_run writes
        it again)."""
        with self._lock:
            if not any(b is result for b in run.batches):  # the run may have closed it
                run.batches.append(result)
        self._try(
            f"record the outcome of batch {result.batch.batch_id} yet (tried again at the end)",
            lambda conn: self._write_batch(conn, run.run_id, result, self.clock()),
            level=logging.WARNING,
        )

    def finish_run(self, run: RunResult) -> bool:
        """Write every batch's outcome, then settle the run's status and write its row.
        False if the database refused a record: each is logged, and named in `run.error`
        (so the run is not `succeeded` and exits 1); the rest is written all the same."""
        run.finished_at = self.clock()
        lost = []
        for result in run.batches:
            why = self._try(
                f"record the outcome of batch {result.batch.batch_id}",
                functools.partial(
                    self._write_batch,
                    run_id=run.run_id,
                    result=result,
                    finished_at=run.finished_at,
                ),
            )
            if why is not None:
                batch_id = result.batch.batch_id
                lost.append(f"the record of batch {batch_id} could not be written ({why})")
        run.error = "; ".join(filter(None, [run.error, *lost])) or None
        run.status = run.settle()
        totals = run.totals()
        why = self._try(
            f"record the outcome of run {run.run_id}",
            lambda conn: conn.execute(
                update(etl_runs)
                .where(etl_runs.c.run_id == run.run_id)
                .values(
                    finished_at=run.finished_at,
                    status=run.status.value,
                    batches_ok=len(run.synced),
                    batches_failed=len(run.failed),
                    error=run.error,
                    **{f"calls_{name}": getattr(totals, name) for name in RUN_COUNT_NAMES},
                )
            ),
        )
        if why is not None:
            unwritten = f"the run's record could not be written ({why})"
            run.error = "; ".join(filter(None, [run.error, unwritten]))
            run.status = run.settle()
        return not lost and why is None

    def _write_batch(
        self, conn: Connection, run_id: int, result: BatchResult, finished_at: datetime | None
    ) -> None:
        """The batch's row (inserted if its start was never recorded) and its streams'."""
        b = etl_batch_runs.c
        values: Mapping[str, Any] = {
            "status": result.status.value,
            "error": result.error,
            "note": result.note,
            "finished_at": finished_at,
            **_counts(result.counts),
        }
        key = (b.run_id == run_id) & (b.batch_id == result.batch.batch_id)
        if conn.execute(update(etl_batch_runs).where(key).values(**values)).rowcount == 0:
            conn.execute(
                insert(etl_batch_runs).values(
                    run_id=run_id,
                    batch_id=result.batch.batch_id,
                    agent_id=result.batch.agent_id,
                    started_at=finished_at,
                    **values,
                )
            )
        s = etl_stream_runs.c
        conn.execute(
            delete(etl_stream_runs).where(
                (s.run_id == run_id) & (s.batch_id == result.batch.batch_id)
            )
        )
        if result.streams:
            conn.execute(
                insert(etl_stream_runs),
                [
                    {
                        "run_id": run_id,
                        "batch_id": result.batch.batch_id,
                        "stream": stream.stream,
                        "note": stream.note,
                        **_counts(stream.counts),
                    }
                    for stream in result.streams
                ],
            )

    def _try(
        self, what: str, write: Callable[[Connection], object], *, level: int = logging.ERROR
    ) -> str | None:
        """Write in one transaction; None if it committed, else why not (logged)."""
        try:
            with self.engine.begin() as conn:
                write(conn)
        except SQLAlchemyError as exc:
            why = explain(exc)
            log.log(level, "could not %s: %s", what, why)
            return why
        return None
