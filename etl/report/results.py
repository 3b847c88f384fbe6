"""What a run did, in memory: per batch and stream, the one source of every report.

The run records (etl_runs, etl_batch_runs, etl_stream_runs), the summary lines, the JSON
log lines, the metrics and the exit code are all computed from a `RunResult`, so they can
never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from etl.config import BatchRef
from etl.domain import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TRY_LATER,
    SYNCED_BATCH_STATUSES,
    BatchStatus,
    RunStatus,
    StreamCounts,
)


@dataclass(slots=True)
class StreamResult:
    """One stream of one batch: its counts, and why it was not listed if it was not."""

    stream: str
    counts: StreamCounts = field(default_factory=StreamCounts)
    note: str | None = None
    """Why the stream was not listed; None when it was."""

    @property
    def listed(self) -> bool:
        return self.note is None


@dataclass(slots=True)
class BatchResult:
    batch: BatchRef
    status: BatchStatus
    streams: list[StreamResult] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    """Why a batch was skipped, locked or found removed; not an error."""

    @property
    def counts(self) -> StreamCounts:
        """The batch's counts over its streams."""
        total = StreamCounts()
        for stream in self.streams:
            total.add(stream.counts)
        return total

    @property
    def synced(self) -> bool:
        return self.status in SYNCED_BATCH_STATUSES


@dataclass(slots=True)
class RunResult:
    """What a run did; returned by etl.sync() and recorded in the etl_* tables."""

    run_id: int
    started_at: datetime
    finished_at: datetime | None = None
    status: RunStatus = RunStatus.RUNNING
    batches: list[BatchResult] = field(default_factory=list)
    error: str | None = None
    """Why the run as a whole failed or stopped (refused key, unreachable API, a signal…)."""
    stopped: bool = False
    """The run ended early: a signal, a refused API key, an unreachable API."""
    api_key_refused: bool = False
    """The run stopped because the API refused the key: running it again cannot help."""

    @property
    def failed(self) -> list[BatchResult]:
        return [b for b in self.batches if b.status is BatchStatus.FAILED]

    @property
    def locked(self) -> list[BatchResult]:
        return [b for b in self.batches if b.status is BatchStatus.LOCKED]

    @property
    def synced(self) -> list[BatchResult]:
        return [b for b in self.batches if b.synced]

    def settle(self) -> RunStatus:
        """The run's status from its batches: succeeded only if every batch synced."""
        if self.stopped or (not self.synced and (self.batches or self.error is not None)):
            return RunStatus.FAILED
        if self.error is not None or len(self.synced) < len(self.batches):
            return RunStatus.PARTIAL
        return RunStatus.SUCCEEDED

    @property
    def exit_code(self) -> int:
        """0 all synced; 1 something failed; 75 nothing failed but a batch was locked by
        another run (try later)."""
        if self.error is not None or self.failed or self.stopped:
            return EXIT_FAILED
        if self.locked:
            return EXIT_TRY_LATER
        return EXIT_OK

    def totals(self) -> StreamCounts:
        total = StreamCounts()
        for batch in self.batches:
            total.add(batch.counts)
        return total

    def stream_totals(self) -> dict[str, StreamCounts]:
        """The run's counts per stream, over its batches."""
        totals: dict[str, StreamCounts] = {}
        for batch in self.batches:
            for stream in batch.streams:
                totals.setdefault(stream.stream, StreamCounts()).add(stream.counts)
        return totals

    def batches_by_status(self) -> dict[str, int]:
        counted = dict.fromkeys((s.value for s in BatchStatus if s is not BatchStatus.RUNNING), 0)
        for batch in self.batches:
            counted[batch.status.value] = counted.get(batch.status.value, 0) + 1
        return counted
