"""One sync run: plan the batches, then for each (on worker threads): lock → details → streams.

`sync()` is the public entry point; the CLI, the demo and the Airflow tasks all call it.

- Batches run on up to `[api] concurrency` worker threads (etl.pipeline.workers); each batch is
  one module's work (etl.pipeline.batch); which batches, etl.pipeline.targets.
- Every planned batch ends with an outcome, and the run record is written from those
  outcomes (etl.report.records): a batch whose worker was cut off, or that was never
  attempted because the run stopped, is recorded as failed, with its counts so far.
- A refused API key stops the run; so does a signal (SIGTERM/SIGINT, raised as an exception
  in the main thread), after the workers' current page, and then propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from etl.config import Config
from etl.domain import BatchStatus
from etl.extract.client import ApiKeyRefused, RunStopping, UltravoxClient
from etl.load.database import (
    DatabaseError,
    describe,
    explain,
    locks_for,
    open_engine,
    require_head,
    upgrade_to_head,
)
from etl.pipeline.batch import Progress, RunContext, sync_target
from etl.pipeline.memory import fewer_collections, fewer_malloc_arenas
from etl.pipeline.targets import (
    Plan,
    mark_gone_batches_removed,
    narrow_to_batches,
    plan_targets,
)
from etl.pipeline.workers import Interrupted, run_on_workers
from etl.report.records import Clock, RunRecorder
from etl.report.results import BatchResult, RunResult
from etl.streams import streams_for

__all__ = ["Interrupted", "Progress", "run_sync", "sync", "utc_now"]

log = logging.getLogger("etl.pipeline")


def utc_now() -> datetime:
    return datetime.now(UTC)


def sync(
    config: Config,
    batch_ids: Iterable[str] | None = None,
    *,
    full: bool = False,
    strict: bool | None = None,
    migrate: bool = True,
    progress: Progress | None = None,
) -> RunResult:
    """Sync the configured batches (or only `batch_ids`) into the configured database.

    `full` lists ended, complete batches again; `strict` (default: `[sync] strict`) fails a
    batch with a rejected record; `migrate=False` refuses a schema that is behind instead of
    upgrading it (raises etl.load.database.SchemaBehind). The result is also in etl_runs.
    Raises ConfigError (nothing written), DatabaseError (the database cannot be used) and,
    on a signal, Interrupted.
    """
    engine = open_engine(config.database_url, connections=2 * config.api.concurrency + 2)
    try:
        if batch_ids is not None:  # an unknown batch is refused before anything is written
            config = narrow_to_batches(config, batch_ids)
        if migrate:
            upgrade_to_head(engine)
        else:
            require_head(engine)
        fewer_malloc_arenas()
        with fewer_collections():
            return run_sync(
                config, engine, batch_ids=batch_ids, full=full, strict=strict, progress=progress
            )
    finally:
        engine.dispose()


def run_sync(
    config: Config,
    engine: Engine,
    *,
    batch_ids: Iterable[str] | None = None,
    full: bool = False,
    strict: bool | None = None,
    clock: Clock = utc_now,
    progress: Progress | None = None,
) -> RunResult:
    """Sync on an engine whose schema is at head; see sync()."""
    with UltravoxClient(config.api, config.api_key) as client:
        stopping: RunStopping | None = None
        try:
            plan = plan_targets(config, engine, client, batch_ids)
        except RunStopping as exc:
            plan, stopping = Plan(), exc
        except SQLAlchemyError as exc:
            raise DatabaseError(f"{describe(engine)}: {explain(exc)}") from None
        recorder = RunRecorder(engine, clock)
        locks = locks_for(engine)
        try:
            result, run_lock = recorder.start_run(locks)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"{describe(engine)}: {explain(exc)}") from None
        run = RunContext(
            config=config,
            engine=engine,
            client=client,
            recorder=recorder,
            result=result,
            locks=locks,
            clock=clock,
            streams=streams_for(config),
            full=full,
            strict=config.sync.strict if strict is None else strict,
            progress=progress,
        )
        try:
            _run(run, plan, stopping)
        except BaseException as exc:  # Interrupted, KeyboardInterrupt, or a bug
            run.stop.set()
            result.stopped = True
            result.error = _interruption(exc)
            raise
        finally:
            _close_unfinished(run, plan)
            recorder.finish_run(result)  # a record it could not write is named in result.error
            if run_lock is not None:
                run_lock.release()
    return result


def _run(run: RunContext, plan: Plan, stopping: RunStopping | None) -> None:
    result = run.result
    try:
        run.recorder.mark_abandoned(result, run.locks)
        mark_gone_batches_removed(run.engine, plan, run.clock())
    except SQLAlchemyError as exc:
        result.stopped = True
        result.error = f"database error: {explain(exc)}"
        log.error("%s", result.error, extra=run.log_extra(event="run_failed"))
        return
    log.info("run %d started", result.run_id, extra=run.log_extra(event="run_started"))
    result.error = "; ".join(plan.errors) or None
    if stopping is None:
        run_on_workers(
            plan.targets,
            lambda target: sync_target(run, target),
            workers=run.config.api.concurrency,
            stop=run.stop,
        )
        stopping = run.fatal
    if stopping is not None:
        result.stopped = True
        result.error = stopping.reason
        result.api_key_refused = isinstance(stopping, ApiKeyRefused)
        event = "api_key_refused" if isinstance(stopping, ApiKeyRefused) else "api_unreachable"
        log.error("%s", stopping.reason, extra=run.log_extra(event=event))


def _close_unfinished(run: RunContext, plan: Plan) -> None:
    """Give every planned batch an outcome (a worker cut off, or never started), then put
    the outcomes in plan order."""
    result = run.result
    finished = {b.batch.batch_id for b in result.batches}
    why = result.error or "the run stopped"
    for target in plan.targets:
        batch_id = target.batch.batch_id
        if batch_id in finished:
            continue
        started = run.started.get(batch_id)
        if started is None:
            started = BatchResult(target.batch, BatchStatus.FAILED, error=f"not attempted: {why}")
        else:
            started.status = BatchStatus.FAILED
            started.error = f"the run ended before this batch finished: {why}"
        result.batches.append(started)
    order = {t.batch.batch_id: n for n, t in enumerate(plan.targets)}
    result.batches.sort(key=lambda b: order.get(b.batch.batch_id, len(order)))


def _interruption(exc: BaseException) -> str:
    if isinstance(exc, Interrupted):
        return f"interrupted by {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    return f"crashed: {type(exc).__name__}: {exc}"
