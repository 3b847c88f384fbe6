"""One sync run: for each configured batch, extract → normalize → load, and record it all.

A batch that fails is recorded and the run goes on with the next one; its committed pages
stay (each is correct on its own) and nothing is marked removed for it. A refused API key
stops the run at once, since no other request could succeed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from etl.config import BatchRef, Config
from etl.extract.client import ApiError, ApiKeyRefused, NotFound, UltravoxClient
from etl.extract.streams import scheduled_call_pages
from etl.load.loader import BatchLoader
from etl.normalize import KNOWN_STATUSES, CallKeys, normalize_page
from etl.report import (
    BatchCounts,
    BatchResult,
    BatchStatus,
    Clock,
    RunRecorder,
    RunResult,
)

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def run_sync(
    config: Config,
    engine: Engine,
    *,
    clock: Clock = utc_now,
) -> RunResult:
    """Sync every configured batch; returns what happened (also stored in etl_runs)."""
    recorder = RunRecorder(engine, clock)
    run = recorder.start_run()
    log.info("run %d: syncing %d batches", run.run_id, len(config.batches))
    with UltravoxClient(config.api, config.api_key) as client:
        for index, batch in enumerate(config.batches):
            recorder.start_batch(run, batch)
            try:
                result = sync_batch(client, engine, batch, run.run_id, config, clock)
            except ApiKeyRefused as exc:
                run.error = str(exc)
                recorder.finish_batch(run, _failed(batch, BatchCounts(), str(exc)))
                for skipped in config.batches[index + 1 :]:
                    recorder.start_batch(run, skipped)
                    recorder.finish_batch(
                        run, _failed(skipped, BatchCounts(), "not attempted: API key refused")
                    )
                break
            recorder.finish_batch(run, result)
    recorder.finish_run(run)
    return run


def sync_batch(
    client: UltravoxClient,
    engine: Engine,
    batch: BatchRef,
    run_id: int,
    config: Config,
    clock: Clock,
) -> BatchResult:
    """List one batch to the end and load it page by page."""
    counts = BatchCounts()
    loader = BatchLoader(engine, batch, run_id, clock)
    keys = CallKeys()
    warned_statuses: set[str] = set()
    try:
        for page in scheduled_call_pages(client, batch, page_size=config.api.page_size):
            calls, rejects = normalize_page(page.results, batch, keys)
            for call in calls:
                status = call.call["status"]
                if status not in KNOWN_STATUSES and status not in warned_statuses:
                    warned_statuses.add(status)
                    log.warning(
                        "batch %s: new status value %r stored as sent", batch.batch_id, status
                    )
            for reject in rejects:
                log.warning(
                    "batch %s: page %d record %d rejected: %s",
                    batch.batch_id,
                    page.number,
                    reject.position,
                    reject.reason,
                )
            loaded = loader.load_page(page.number, calls, rejects)
            counts.pages += 1
            counts.fetched += len(page.results)
            counts.inserted += loaded.inserted
            counts.updated += loaded.updated
            counts.unchanged += loaded.unchanged
            counts.rejected += loaded.rejected
            if page.total is not None:
                counts.api_total = page.total
        complete = _listing_complete(batch, counts)
        counts.removed = loader.finish(complete=complete)
    except ApiKeyRefused:
        raise
    except NotFound as exc:
        return _failed(batch, counts, f"batch not found (check agent_id and batch_id): {exc}")
    except ApiError as exc:
        return _failed(batch, counts, str(exc))
    except SQLAlchemyError as exc:
        return _failed(batch, counts, f"database error: {_short_db_error(exc)}")
    log.info(
        "batch %s: %d pages, %d calls (%d new, %d updated, %d unchanged, %d removed)",
        batch.batch_id,
        counts.pages,
        counts.fetched,
        counts.inserted,
        counts.updated,
        counts.unchanged,
        counts.removed,
    )
    return BatchResult(batch=batch, status=BatchStatus.SUCCEEDED, counts=counts)


def _listing_complete(batch: BatchRef, counts: BatchCounts) -> bool:
    """Whether the listing can be trusted to mark absent calls as removed."""
    if counts.rejected:
        log.warning(
            "batch %s: %d records rejected; no call is marked removed this run",
            batch.batch_id,
            counts.rejected,
        )
        return False
    if counts.api_total is not None and counts.api_total != counts.fetched:
        log.warning(
            "batch %s: listed %d calls but the API's total is %d; "
            "no call is marked removed this run",
            batch.batch_id,
            counts.fetched,
            counts.api_total,
        )
        return False
    return True


def _failed(batch: BatchRef, counts: BatchCounts, error: str) -> BatchResult:
    log.error("batch %s failed: %s", batch.batch_id, error)
    return BatchResult(batch=batch, status=BatchStatus.FAILED, counts=counts, error=error)


def _short_db_error(exc: SQLAlchemyError) -> str:
    """The driver's message without the SQL statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
