"""One batch of a run: lock it, read its details, then list and load each of its streams.

- The batch is synced by one run at a time: its lock is held by the connection its pages are
  written on, so if the database drops that connection the lock and the writes end together
  and the batch stops, failed, with a clear reason.
- A batch that answers 404 is marked removed if the job knew it (its rows are kept), and
  fails if it never was seen (a typo in the config?).
- Unless the run is `full`, a stream whose records can no longer change (the batch ended and
  what is stored is final, see each stream's `settled`) is not listed; a batch whose streams
  are all settled is `skipped`, at the cost of one request.
- A listing that breaks off fails its batch: the pages committed before stay (each is
  correct on its own) and nothing is marked removed for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from etl.config import BatchRef, Config
from etl.domain import BatchStatus, StreamCounts
from etl.extract.client import ApiError, NotFound, RunStopping, UltravoxClient
from etl.extract.endpoints import batch_details, batch_listing_pages
from etl.load import batches as batch_store
from etl.load.backends import Locks, acquire
from etl.load.database import explain
from etl.load.schema import etl_batch_runs
from etl.normalize.batches import batch_details_row
from etl.pipeline.targets import Target
from etl.pipeline.workers import Stopped, prefetched, stoppable_sleep
from etl.report.records import Clock, RunRecorder
from etl.report.results import BatchResult, RunResult, StreamResult
from etl.streams import BatchContext, PageResult, Stream, page_size_of

log = logging.getLogger("etl.pipeline")

Progress = Callable[[BatchRef, str, StreamCounts], None]
"""Called after every loaded page with the batch, the stream and its running counts (from
worker threads)."""


@dataclass
class RunContext:
    """What every batch of one run shares."""

    config: Config
    engine: Engine
    client: UltravoxClient
    recorder: RunRecorder
    result: RunResult
    locks: Locks
    clock: Clock
    streams: tuple[Stream, ...]
    full: bool
    strict: bool
    progress: Progress | None
    stop: threading.Event = field(default_factory=threading.Event)
    started: dict[str, BatchResult] = field(default_factory=dict)
    """Every batch a worker took up, by id, with its running counts."""
    fatal: RunStopping | None = None
    """What stopped the run from a worker: nothing else can succeed after it."""

    def log_extra(self, batch: BatchRef | None = None, **fields: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {"run_id": self.result.run_id, **fields}
        if batch is not None:
            extra["batch_id"] = batch.batch_id
        return extra

    def batch_fields(self, result: BatchResult) -> dict[str, Any]:
        """The structured log fields of a batch's outcome: totals, and counts per stream."""
        return self.log_extra(
            result.batch,
            counts=result.counts.as_dict(),
            streams={s.stream: s.counts.as_dict() for s in result.streams},
        )


def sync_target(run: RunContext, target: Target) -> None:
    """Sync one batch and record its outcome, whatever happens. A failure that stops the run
    (a refused API key, an unreachable API) fails the batch and stops the others; the run
    logs it once."""
    batch = target.batch
    result = BatchResult(batch, BatchStatus.RUNNING)
    run.started[batch.batch_id] = result
    try:
        unrecorded = run.recorder.start_batch(run.result, batch)
        if unrecorded is not None:  # its outcome could not be told either: not synced
            _fail(run, result, f"database error: {unrecorded} (its start could not be recorded)")
        else:
            with run.engine.connect() as conn:
                _sync_locked(run, target, conn, result)
    except RunStopping as exc:
        result.status, result.error = BatchStatus.FAILED, exc.reason
        run.fatal = run.fatal or exc
        run.stop.set()
    except Stopped:
        _fail(run, result, "interrupted: the run was stopped")
    except ApiError as exc:
        _fail(run, result, str(exc))
    except SQLAlchemyError as exc:
        _fail(run, result, _database_failure(exc))
    except Exception as exc:
        # A bug, or input nothing above foresaw: this batch fails alone, recorded as such,
        # instead of the worker thread dying and the run reporting success without it.
        _fail(run, result, f"crashed: {type(exc).__name__}: {exc}", exc_info=True)
    run.recorder.finish_batch(run.result, result)


def _database_failure(exc: SQLAlchemyError) -> str:
    message = f"database error: {explain(exc)}"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        message += (
            " (the database dropped the batch's connection, and the batch's lock with it: "
            "the batch stopped; the next run syncs it)"
        )
    return message


def _fail(run: RunContext, result: BatchResult, error: str, *, exc_info: bool = False) -> None:
    result.status = BatchStatus.FAILED
    result.error = error
    log.error(
        "batch %s failed: %s",
        result.batch.batch_id,
        error,
        exc_info=exc_info,
        extra=run.batch_fields(result) | {"event": "batch_failed"},
    )


def _sync_locked(run: RunContext, target: Target, conn: Connection, result: BatchResult) -> None:
    batch = target.batch
    wait = run.config.sync.lock_wait_seconds
    lock = acquire(
        run.locks, f"batch:{batch.batch_id}", wait, conn=conn, sleep=stoppable_sleep(run.stop)
    )
    if lock is None:
        result.status = BatchStatus.LOCKED
        result.note = (
            f"{_holder(run.engine, batch, run.result.run_id)}; waited {wait:g}s, try later"
        )
        log.warning(
            "batch %s not synced: %s",
            batch.batch_id,
            result.note,
            extra=run.batch_fields(result) | {"event": "batch_locked"},
        )
        return
    try:
        _sync_batch(run, target, conn, result)
    finally:
        lock.release()


def _holder(engine: Engine, batch: BatchRef, run_id: int) -> str:
    """Who holds a batch's lock, as far as the run records tell."""
    b = etl_batch_runs.c
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(b.run_id, b.started_at)
                .where(
                    (b.batch_id == batch.batch_id)
                    & (b.status == BatchStatus.RUNNING.value)
                    & (b.run_id != run_id)
                )
                .order_by(b.started_at.desc())
                .limit(1)
            ).first()
    except SQLAlchemyError:
        row = None
    if row is None:
        return "another run is syncing it"
    since = row.started_at.strftime("%Y-%m-%d %H:%M:%SZ")
    return f"run {row.run_id} has been syncing it since {since}"


def _sync_batch(run: RunContext, target: Target, conn: Connection, result: BatchResult) -> None:
    batch = target.batch
    now = run.clock()
    try:
        details = target.details or batch_details(run.client, batch)
    except NotFound:
        with conn.begin():
            known = batch_store.is_known(conn, batch.batch_id)
            if known:
                batch_store.mark_removed(conn, [batch.batch_id], now)
        if not known:
            raise NotFound(
                f"batch not found (HTTP 404): agent {batch.agent_id} has no batch "
                f"{batch.batch_id} (check agent_id and batch_id)"
            ) from None
        result.status = BatchStatus.REMOVED
        result.note = "the API no longer has this batch; its calls are kept"
        log.warning(
            "batch %s: %s",
            batch.batch_id,
            result.note,
            extra=run.batch_fields(result) | {"event": "batch_removed"},
        )
        return
    row = batch_details_row(details)
    with conn.begin():
        batch_store.store_batch_details(conn, batch, row, now)
    context = BatchContext(batch, run.result.run_id, conn, run.clock)
    for stream in run.streams:
        # Asked just before the stream would be listed: a later stream's answer may depend on
        # what an earlier one has just loaded (a batch's calls on its scheduled calls).
        with conn.begin():
            note = None if run.full else stream.settled(conn, batch, row)
        stream_result = StreamResult(stream.name, note=note)
        result.streams.append(stream_result)
        if note is None:
            _list_stream(run, context, stream, stream_result)

    if all(not s.listed for s in result.streams):
        result.status = BatchStatus.SKIPPED
        reasons = "; ".join(f"{s.stream}: {s.note}" for s in result.streams)
        result.note = f"{reasons}; sync --full lists it anyway"
        result.streams.clear()  # nothing was listed: the note says it all
        log.info(
            "batch %s skipped: %s",
            batch.batch_id,
            result.note,
            extra=run.batch_fields(result) | {"event": "batch_skipped"},
        )
        return
    rejected = result.counts.rejected
    if run.strict and rejected:
        raise ApiError(f"{rejected} records rejected (strict mode); see rejected_records")
    result.status = BatchStatus.SUCCEEDED
    log.info(
        "batch %s: %s",
        batch.batch_id,
        "; ".join(_stream_outline(s) for s in result.streams),
        extra=run.batch_fields(result) | {"event": "batch_synced"},
    )


def _stream_outline(stream: StreamResult) -> str:
    c = stream.counts
    if not stream.listed:
        return f"{stream.stream} not listed ({stream.note})"
    return (
        f"{stream.stream} {c.pages} pages, {c.fetched} records ({c.inserted} new, "
        f"{c.updated} updated, {c.unchanged} unchanged, {c.removed} removed)"
    )


def _list_stream(
    run: RunContext, context: BatchContext, stream: Stream, result: StreamResult
) -> None:
    """Every listing of the stream, every page loaded; then mark what a complete one
    did not show as removed."""
    batch = context.batch
    loader = stream.loader(context)
    counts = result.counts
    complete = True
    warned: set[tuple[str, str]] = set()
    for listing in stream.listings(batch):
        where = f"batch {batch.batch_id} {stream.name}{listing.label}"
        listed, total, totals = 0, None, set()
        earlier = counts.api_total or 0  # filtered: the totals of the other listings
        pages = batch_listing_pages(
            run.client,
            batch,
            stream.path,
            listing.params,
            page_size=page_size_of(stream, run.config.api.page_size),
            where=where,
        )
        for page in prefetched(pages, run.stop):
            loaded = loader.load_page(page, listing)
            counts.add(loaded.counts)
            _warn_about(run, batch, where, page.number, loaded, warned)
            listed += len(page.results)
            if page.total is not None:
                total = page.total
                totals.add(page.total)
                counts.api_total = earlier + page.total
            if run.progress is not None:
                run.progress(batch, stream.name, counts)
        consistent = _listing_consistent(run, batch, where, listed, total, totals)
        complete = complete and listing.shows_every_record and consistent
    if complete and counts.rejected:
        log.warning(
            "batch %s %s: %d records rejected; no record is marked removed this run",
            batch.batch_id,
            stream.name,
            counts.rejected,
            extra=run.log_extra(batch),
        )
        complete = False
    counts.removed = loader.finish(listed_to_end=True, complete=complete)


def _listing_consistent(
    run: RunContext, batch: BatchRef, where: str, listed: int, total: int | None, totals: set[int]
) -> bool:
    if len(totals) > 1:
        # The batch changed while it was being paged through: pages may have shifted, so a
        # record still there can be missing from the listing even when the counts agree.
        log.warning(
            "%s: the API's total changed while listing (pages said %s); "
            "no record is marked removed this run",
            where,
            ", ".join(str(t) for t in sorted(totals)),
            extra=run.log_extra(batch),
        )
        return False
    if total is None or total == listed:
        return True
    log.warning(
        "%s: listed %d records but the API's total is %d; no record is marked removed this run",
        where,
        listed,
        total,
        extra=run.log_extra(batch),
    )
    return False


def _warn_about(
    run: RunContext,
    batch: BatchRef,
    where: str,
    page_number: int,
    loaded: PageResult,
    warned: set[tuple[str, str]],
) -> None:
    for field_name, value in sorted(loaded.new_values - warned):
        warned.add((field_name, value))
        log.warning(
            "%s: new %s value %r stored as sent",
            where,
            field_name,
            value,
            extra=run.log_extra(batch),
        )
    for reject in loaded.rejected:
        log.warning(
            "%s: page %d record %d rejected: %s",
            where,
            page_number,
            reject.position,
            reject.reason,
            extra=run.log_extra(batch, event="record_rejected"),
        )
