"""One sync run: resolve the batches, then for each: lock → details → list → normalize → load.

`sync()` is the public entry point; the CLI, the demo and the Airflow tasks all call it.

- Batches run on up to `[api] concurrency` worker threads; within a batch, the next page is
  fetched while the current one loads. All requests share one session and one rate cap.
- A batch is synced by one run at a time (a per-batch lock); a batch another run holds for
  longer than `[sync] lock_wait_seconds` is skipped as `locked`.
- A batch that fails is recorded and the others go on; its committed pages stay (each is
  correct on its own) and nothing is marked removed for it. A refused API key stops the run.
- An interrupt (SIGTERM/SIGINT, raised as an exception in the main thread) stops the
  workers after their current page, records the run as failed, and propagates.
"""

from __future__ import annotations

import gc
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from etl.config import AgentRef, BatchRef, Config, ConfigError
from etl.extract.client import ApiError, ApiKeyRefused, NotFound, UltravoxClient
from etl.extract.pagination import Page
from etl.extract.streams import agent_batch_pages, batch_details, scheduled_call_pages
from etl.load import batches as batch_store
from etl.load.call_keys import StoredCallKeys
from etl.load.database import (
    open_engine,
    require_head,
    upgrade_to_head,
)
from etl.load.loader import BatchLoader
from etl.load.locks import Locks, acquire, locks_for
from etl.normalize import KNOWN_STATUSES, CallKeys, normalize_page
from etl.normalize_batch import batch_details_row, batch_id_of
from etl.report import (
    BatchCounts,
    BatchResult,
    BatchStatus,
    Clock,
    RunRecorder,
    RunResult,
)

log = logging.getLogger(__name__)

Progress = Callable[[BatchRef, BatchCounts], None]
"""Called after every loaded page with the batch's running counts (from worker threads)."""

INTERRUPT_GRACE_SECONDS = 5.0
PREFETCH_PAGES = 1


class Interrupted(BaseException):
    """The run was asked to stop by a signal; a BaseException, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


class _Stopped(Exception):
    """Raised inside a worker when the run is stopping."""


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
    """
    engine = open_engine(config.database_url, connections=2 * config.api.concurrency + 2)
    try:
        if migrate:
            upgrade_to_head(engine)
        else:
            require_head(engine)
        with _fewer_collections():
            return run_sync(
                config, engine, batch_ids=batch_ids, full=full, strict=strict, progress=progress
            )
    finally:
        engine.dispose()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Raise the garbage collector's first threshold for the run, then put it back.

    A sync allocates millions of short-lived objects (parsed pages, rows) and next to no
    cycles; the default threshold makes Python rescan everything alive over and over
    (bench/results/log.md: no-change re-sync 10.6 s -> 6.7 s, full sync 16.7 s -> 13.1 s).
    """
    previous = gc.get_threshold()
    gc.freeze()  # what exists before the run is not rescanned during it
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


BatchDetails = dict[str, Any]
"""A ScheduledCallBatch object as the API returns it."""


@dataclass(frozen=True, slots=True)
class _Target:
    batch: BatchRef
    details: BatchDetails | None = None
    """The batch object from its agent's list, which saves a request."""


@dataclass
class _Run:
    """What every batch of one run shares."""

    config: Config
    engine: Engine
    client: UltravoxClient
    recorder: RunRecorder
    result: RunResult
    locks: Locks
    clock: Clock
    stop: threading.Event
    full: bool
    strict: bool
    progress: Progress | None

    def log_extra(self, batch: BatchRef | None = None, **fields: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {"run_id": self.result.run_id, **fields}
        if batch is not None:
            extra["batch_id"] = batch.batch_id
        return extra


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
    wanted = _wanted_batch_ids(config, batch_ids)
    recorder = RunRecorder(engine, clock)
    locks = locks_for(engine)
    result, run_lock = recorder.start_run(locks)
    stopped = False
    try:
        with UltravoxClient(config.api, config.api_key) as client:
            run = _Run(
                config=config,
                engine=engine,
                client=client,
                recorder=recorder,
                result=result,
                locks=locks,
                clock=clock,
                stop=threading.Event(),
                full=full,
                strict=config.sync.strict if strict is None else strict,
                progress=progress,
            )
            recorder.mark_abandoned(result, locks)
            log.info("run %d started", result.run_id, extra=run.log_extra(event="run_started"))
            try:
                targets = _resolve_targets(run, wanted)
                try:
                    _run_batches(run, targets)
                finally:  # batches finish in any order; report them in the configured one
                    order = {t.batch.batch_id: n for n, t in enumerate(targets)}
                    result.batches.sort(key=lambda b: order.get(b.batch.batch_id, len(order)))
            except ApiKeyRefused as exc:
                stopped = True
                result.error = str(exc)
                log.error("%s", exc, extra=run.log_extra(event="api_key_refused"))
            except BaseException as exc:  # Interrupted, KeyboardInterrupt, or a bug
                stopped = True
                run.stop.set()
                result.error = _interruption(exc)
                raise
    finally:
        recorder.finish_run(result, stopped=stopped)
        if run_lock is not None:
            run_lock.release()
    return result


def _wanted_batch_ids(config: Config, batch_ids: Iterable[str] | None) -> set[str] | None:
    if batch_ids is None:
        return None
    wanted = {b.lower() for b in batch_ids}
    configured = {b.batch_id for b in config.batches}
    unknown = wanted - configured
    if unknown and not config.agents:
        raise ConfigError(
            f"{config.source}: batch {sorted(unknown)[0]} is not in [[batches]] "
            "and no [[agents]] are configured"
        )
    return wanted


def _interruption(exc: BaseException) -> str:
    if isinstance(exc, Interrupted):
        return f"interrupted by {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by SIGINT"
    return f"crashed: {type(exc).__name__}: {exc}"


# -- which batches -----------------------------------------------------------------------------


def discover_agent_batches(
    client: UltravoxClient,
    engine: Engine,
    agent: AgentRef,
    *,
    page_size: int,
    now: datetime,
) -> dict[str, BatchDetails]:
    """Every batch the agent lists, by id, with the batch object the list gave for it.

    Known batches of the agent missing from a complete, readable list are marked removed
    (like calls: an incomplete list marks nothing). Raises ApiError if the list fails.
    """
    listed: dict[str, BatchDetails] = {}
    entries, unreadable, total = 0, 0, None
    for page in agent_batch_pages(client, agent.agent_id, page_size=page_size):
        entries += len(page.results)
        total = page.total if page.total is not None else total
        for item in page.results:
            batch_id = batch_id_of(item) if isinstance(item, dict) else None
            if batch_id is None:
                log.warning("agent %s: a listed batch has no batchId", agent.agent_id)
                unreadable += 1
            else:
                listed.setdefault(batch_id, item)
    if unreadable or (total is not None and total != entries):
        why = (
            f"{unreadable} listed batches have no batchId"
            if unreadable
            else f"listed {entries} batches but the API's total is {total}"
        )
        log.warning("agent %s: %s; no batch is marked removed this run", agent.agent_id, why)
        return listed
    gone = batch_store.active_batches_of_agent(engine, agent.agent_id) - set(listed)
    for batch_id in batch_store.mark_removed(engine, gone, now):
        log.warning(
            "batch %s is gone from agent %s's list; marked removed", batch_id, agent.agent_id
        )
    return listed


def _resolve_targets(run: _Run, wanted: set[str] | None) -> list[_Target]:
    """[[batches]] first, then every batch listed for each of [[agents]], each batch once."""
    targets: dict[str, _Target] = {b.batch_id: _Target(b) for b in run.config.batches}
    for agent in run.config.agents:
        try:
            listed = discover_agent_batches(
                run.client,
                run.engine,
                agent,
                page_size=run.config.api.page_size,
                now=run.clock(),
            )
        except ApiKeyRefused:
            raise
        except ApiError as exc:
            message = f"agent {agent.agent_id}: listing its batches failed: {exc}"
            log.error("%s", message, extra=run.log_extra(event="agent_failed"))
            run.result.error = message if run.result.error is None else run.result.error
            continue
        for batch_id, item in listed.items():
            if batch_id not in targets:
                ref = BatchRef(agent.agent_id, batch_id, agent.statuses)
                targets[batch_id] = _Target(ref, item)
    chosen = [t for t in targets.values() if wanted is None or t.batch.batch_id in wanted]
    if wanted is not None:
        for missing in sorted(wanted - {t.batch.batch_id for t in chosen}):
            run.result.error = f"batch {missing} is neither configured nor listed for an agent"
            log.error("%s", run.result.error)
    return chosen


# -- running batches ---------------------------------------------------------------------------


def _run_batches(run: _Run, targets: list[_Target]) -> None:
    """Sync the targets on worker threads; the main thread only waits (and takes signals)."""
    pending: queue.SimpleQueue[_Target] = queue.SimpleQueue()
    for target in targets:
        pending.put(target)
    fatal: list[ApiKeyRefused] = []

    def work() -> None:
        while not run.stop.is_set():
            try:
                target = pending.get_nowait()
            except queue.Empty:
                return
            try:
                _sync_target(run, target)
            except ApiKeyRefused as exc:
                fatal.append(exc)
                run.stop.set()

    workers = [
        threading.Thread(target=work, name=f"batch-worker-{n}", daemon=True)
        for n in range(min(run.config.api.concurrency, len(targets)))
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            while worker.is_alive():
                worker.join(timeout=0.2)  # short waits, so signal handlers run promptly
    except BaseException:
        run.stop.set()
        for worker in workers:
            worker.join(timeout=INTERRUPT_GRACE_SECONDS / max(1, len(workers)))
        raise
    if fatal:
        _record_not_attempted(run, pending, "not attempted: the API key was refused")
        raise fatal[0]


def _record_not_attempted(run: _Run, pending: queue.SimpleQueue[_Target], why: str) -> None:
    while True:
        try:
            target = pending.get_nowait()
        except queue.Empty:
            return
        run.recorder.start_batch(run.result, target.batch)
        run.recorder.finish_batch(
            run.result, BatchResult(target.batch, BatchStatus.FAILED, BatchCounts(), error=why)
        )


def _sync_target(run: _Run, target: _Target) -> None:
    batch = target.batch
    run.recorder.start_batch(run.result, batch)
    counts = BatchCounts()
    try:
        result = _sync_locked(run, target, counts)
    except ApiKeyRefused as exc:
        run.recorder.finish_batch(run.result, _failed(run, batch, counts, str(exc)))
        raise
    except _Stopped:
        result = _failed(run, batch, counts, "interrupted: the run was stopped")
    except NotFound as exc:
        result = _failed(run, batch, counts, str(exc))
    except ApiError as exc:
        result = _failed(run, batch, counts, str(exc))
    except SQLAlchemyError as exc:
        result = _failed(run, batch, counts, f"database error: {_short_db_error(exc)}")
    except Exception as exc:
        # A bug, or input nothing above foresaw: this batch fails alone, recorded as such,
        # instead of the worker thread dying and the run reporting success without it.
        error = f"crashed: {type(exc).__name__}: {exc}"
        result = _failed(run, batch, counts, error, exc_info=True)
    run.recorder.finish_batch(run.result, result)


def _sync_locked(run: _Run, target: _Target, counts: BatchCounts) -> BatchResult:
    batch = target.batch
    wait = run.config.sync.lock_wait_seconds
    lock = acquire(run.locks, f"batch:{batch.batch_id}", wait, sleep=_stoppable_sleep(run))
    if lock is None:
        note = f"another run is syncing it; waited {wait:g}s, try later"
        log.warning(
            "batch %s skipped: %s",
            batch.batch_id,
            note,
            extra=run.log_extra(batch, event="batch_locked", counts=counts.as_dict()),
        )
        return BatchResult(batch, BatchStatus.LOCKED, counts, note=note)
    try:
        return _sync_batch(run, target, counts)
    finally:
        lock.release()


def _stoppable_sleep(run: _Run) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if run.stop.wait(seconds):
            raise _Stopped

    return sleep


def _sync_batch(run: _Run, target: _Target, counts: BatchCounts) -> BatchResult:
    batch = target.batch
    now = run.clock()
    try:
        details = target.details or batch_details(run.client, batch)
    except NotFound:
        if batch_store.is_known(run.engine, batch.batch_id):
            batch_store.mark_removed(run.engine, [batch.batch_id], now)
            note = "the API no longer has this batch; its calls are kept"
            log.warning(
                "batch %s: %s",
                batch.batch_id,
                note,
                extra=run.log_extra(batch, event="batch_removed", counts=counts.as_dict()),
            )
            return BatchResult(batch, BatchStatus.REMOVED, counts, note=note)
        raise NotFound(
            f"batch not found (HTTP 404): agent {batch.agent_id} has no batch "
            f"{batch.batch_id} (check agent_id and batch_id)"
        ) from None
    row = batch_details_row(details)
    batch_store.store_batch_details(run.engine, batch, row, now)

    total = row["total_count"]
    if (
        not run.full
        and row["ended_at"] is not None
        and total is not None
        and batch_store.stored_calls_all_final(run.engine, batch.batch_id, total)
    ):
        note = f"ended; all {total} stored calls are final (sync --full lists it anyway)"
        log.info(
            "batch %s skipped: %s",
            batch.batch_id,
            note,
            extra=run.log_extra(batch, event="batch_skipped", counts=counts.as_dict()),
        )
        return BatchResult(batch, BatchStatus.SKIPPED, counts, note=note)

    _load_listings(run, batch, counts)
    if run.strict and counts.rejected:
        raise ApiError(f"{counts.rejected} records rejected (strict mode); see rejected_records")
    log.info(
        "batch %s: %d pages, %d calls (%d new, %d updated, %d unchanged, %d removed)",
        batch.batch_id,
        counts.pages,
        counts.fetched,
        counts.inserted,
        counts.updated,
        counts.unchanged,
        counts.removed,
        extra=run.log_extra(batch, event="batch_synced", counts=counts.as_dict()),
    )
    return BatchResult(batch, BatchStatus.SUCCEEDED, counts)


def _load_listings(run: _Run, batch: BatchRef, counts: BatchCounts) -> None:
    """List the batch (once, or once per filtered status) and load every page."""
    loader = BatchLoader(run.engine, batch, run.result.run_id, run.clock)
    # Shared by the status listings of the batch, so no two calls share a key.
    keys = StoredCallKeys(run.engine, batch) if batch.statuses else CallKeys()
    warned: set[str] = set()
    filtered = bool(batch.statuses)
    complete = True
    for status in batch.statuses or (None,):
        listed = 0
        total: int | None = None
        earlier_total = counts.api_total or 0  # filtered: the totals of the other statuses
        totals: set[int] = set()  # the total of every page: they differ if calls vanished
        pages = scheduled_call_pages(
            run.client, batch, page_size=run.config.api.page_size, status=status
        )
        for page in _prefetched(pages, run.stop):
            calls, rejects = normalize_page(
                page.results, batch, keys, may_hold_nul=page.may_hold_nul
            )
            _warn_about(run, batch, page, calls, rejects, warned)
            loaded = loader.load_page(page.number, calls, rejects)
            counts.pages += 1
            counts.fetched += len(page.results)
            counts.inserted += loaded.inserted
            counts.updated += loaded.updated
            counts.unchanged += loaded.unchanged
            counts.rejected += loaded.rejected
            listed += len(page.results)
            total = page.total if page.total is not None else total
            if page.total is not None:
                totals.add(page.total)
                counts.api_total = earlier_total + page.total if filtered else page.total
            if run.progress is not None:
                run.progress(batch, counts)
        complete = complete and _listing_consistent(run, batch, listed, total, totals)
    if filtered:
        complete = False  # a filtered listing does not show absent calls
    if complete and counts.rejected:
        log.warning(
            "batch %s: %d records rejected; no call is marked removed this run",
            batch.batch_id,
            counts.rejected,
            extra=run.log_extra(batch),
        )
        complete = False
    counts.removed = loader.finish(complete=complete)


def _listing_consistent(
    run: _Run, batch: BatchRef, listed: int, total: int | None, totals: set[int]
) -> bool:
    if len(totals) > 1:
        # The batch changed while it was being paged through: pages may have shifted, so a
        # call still there can be missing from the listing even when the counts agree.
        log.warning(
            "batch %s: the API's total changed while listing (pages said %s); "
            "no call is marked removed this run",
            batch.batch_id,
            ", ".join(str(t) for t in sorted(totals)),
            extra=run.log_extra(batch),
        )
        return False
    if total is None or total == listed:
        return True
    log.warning(
        "batch %s: listed %d calls but the API's total is %d; no call is marked removed this run",
        batch.batch_id,
        listed,
        total,
        extra=run.log_extra(batch),
    )
    return False


def _warn_about(
    run: _Run,
    batch: BatchRef,
    page: Page,
    calls: list[Any],
    rejects: list[Any],
    warned: set[str],
) -> None:
    for call in calls:
        status = call.call["status"]
        if status not in KNOWN_STATUSES and status not in warned:
            warned.add(status)
            log.warning(
                "batch %s: new status value %r stored as sent",
                batch.batch_id,
                status,
                extra=run.log_extra(batch),
            )
    for reject in rejects:
        log.warning(
            "batch %s: page %d record %d rejected: %s",
            batch.batch_id,
            page.number,
            reject.position,
            reject.reason,
            extra=run.log_extra(batch, event="record_rejected"),
        )


def _prefetched(pages: Iterator[Page], stop: threading.Event) -> Iterator[Page]:
    """Fetch the next pages on a helper thread while the caller loads the current one."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=PREFETCH_PAGES)
    done = threading.Event()

    def fetch() -> None:
        try:
            for page in pages:
                while not done.is_set():
                    try:
                        slots.put(("page", page), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            slots.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(("error", exc))

    fetcher = threading.Thread(target=fetch, name="page-prefetch", daemon=True)
    fetcher.start()
    try:
        while True:
            if stop.is_set():
                raise _Stopped
            try:
                kind, item = slots.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        done.set()


def _failed(
    run: _Run, batch: BatchRef, counts: BatchCounts, error: str, *, exc_info: bool = False
) -> BatchResult:
    log.error(
        "batch %s failed: %s",
        batch.batch_id,
        error,
        exc_info=exc_info,
        extra=run.log_extra(batch, event="batch_failed", counts=counts.as_dict()),
    )
    return BatchResult(batch=batch, status=BatchStatus.FAILED, counts=counts, error=error)


def _short_db_error(exc: SQLAlchemyError) -> str:
    """The driver's message without the SQL statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
