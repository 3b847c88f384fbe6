"""Progress of a long sync: live lines on a terminal, a periodic log line elsewhere.

Both reporters are `etl.pipeline.Progress` callables: sync() calls them from its worker
threads after every loaded page with the batch, the stream and its running counts, so they
only take a lock, note the numbers and, now and then, write.

- `TerminalProgress`: one line per batch and stream being synced, redrawn in place on stderr
  (pages, records against the API's total, records/s); log lines are written above them.
- `LogProgress`: at most one INFO line per batch every `interval` seconds (event
  `progress`, with the counts), for cron mail, journald and log shippers.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from etl.config import BatchRef
from etl.domain import StreamCounts
from etl.report.logs import ConsoleHandler

log = logging.getLogger("etl.progress")

Clock = Callable[[], float]

LOG_INTERVAL_SECONDS = 30.0
REDRAW_SECONDS = 0.1
_RATE_AFTER_SECONDS = 0.5
"""calls/s is shown once a batch has run this long; before, one page would skew it."""


class Reporter(Protocol):
    def __call__(self, batch: BatchRef, stream: str, counts: StreamCounts) -> None: ...

    def close(self) -> None: ...


@dataclass
class _BatchProgress:
    batch_id: str
    stream: str
    started: float
    fetched_at_start: int
    pages: int = 0
    fetched: int = 0
    api_total: int | None = None
    updated: float = 0.0

    def note(self, counts: StreamCounts, now: float) -> None:
        self.pages = counts.pages
        self.fetched = counts.fetched
        self.api_total = counts.api_total
        self.updated = now

    @property
    def done(self) -> bool:
        return self.api_total is not None and self.fetched >= self.api_total

    def rate(self, now: float) -> float | None:
        elapsed = now - self.started
        if elapsed < _RATE_AFTER_SECONDS:
            return None
        return (self.fetched - self.fetched_at_start) / elapsed

    def describe(self, now: float) -> str:
        if self.api_total is None:
            records = f"{self.fetched} records"
        else:
            share = 100 * self.fetched / self.api_total if self.api_total else 100.0
            records = f"{self.fetched}/{self.api_total} records ({share:.0f}%)"
        rate = self.rate(now)
        speed = "" if rate is None else f", {rate:.0f}/s"
        pages = "page" if self.pages == 1 else "pages"
        return f"batch {self.batch_id} {self.stream}: {self.pages} {pages}, {records}{speed}"


class _Tracker:
    """Thread-safe per-batch state shared by both reporters."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.batches: dict[tuple[str, str], _BatchProgress] = {}

    def note(
        self, batch: BatchRef, stream: str, counts: StreamCounts
    ) -> tuple[_BatchProgress, float]:
        """Record the counts (the caller holds `lock`); the listing's state and the time."""
        now = self.clock()
        state = self.batches.get((batch.batch_id, stream))
        if state is None:
            # First sight is after the first page: measure the rate from here on.
            state = _BatchProgress(
                batch.batch_id, stream, started=now, fetched_at_start=counts.fetched
            )
            self.batches[(batch.batch_id, stream)] = state
        state.note(counts, now)
        return state, now


class TerminalProgress:
    """Live status lines on a terminal, one per batch in progress, redrawn in place.

    Attach it to the console log handler (`handler`), so a log line clears the status
    lines, is written, and the lines are drawn again below it.

    Hand-written rather than rich's or tqdm's progress bars: a line comes and goes with
    its batch, at most `max_lines` of them (the batches updated last), and log lines pass
    above them through our own handler, in text or JSON. tqdm gives each bar a fixed
    position, so a finished batch leaves a gap; rich's live display needs every log line
    routed through its console (or its redirection of sys.stderr). Either would cost a
    dependency for less than this does.
    """

    def __init__(
        self,
        stream: TextIO,
        handler: ConsoleHandler | None = None,
        *,
        clock: Clock = time.monotonic,
        redraw_seconds: float = REDRAW_SECONDS,
        width: int | None = None,
        max_lines: int | None = None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.redraw_seconds = redraw_seconds
        self.width = width
        """Characters a line may take; None: the terminal's width, asked at each redraw."""
        self.max_lines = max_lines
        """At most this many lines (the batches updated last): the batches synced at once."""
        self._tracker = _Tracker(clock)
        self._drawn = 0
        self._last_draw: float | None = None
        self._closed = False
        if handler is not None:
            handler.around = self._around

    def __call__(self, batch: BatchRef, stream: str, counts: StreamCounts) -> None:
        with self._tracker.lock:
            if self._closed:
                return
            state, now = self._tracker.note(batch, stream, counts)
            due = self._last_draw is None or now - self._last_draw >= self.redraw_seconds
            if due or state.done:
                self._redraw(now)

    def close(self) -> None:
        """Clear the status lines and give the log handler back its plain behaviour."""
        with self._tracker.lock:
            if self._closed:
                return
            self._closed = True
            self._erase()
            self.stream.flush()
        if self.handler is not None and self.handler.around == self._around:
            self.handler.around = None

    def lines(self, now: float) -> list[str]:
        """The status lines: batches that have not reached the API's total, in the order
        they started; past `max_lines`, those updated last (a finished batch drops out)."""
        width = self.width or max(20, _terminal_columns(self.stream) - 1)
        active = [b for b in self._tracker.batches.values() if not b.done]
        if self.max_lines is not None and len(active) > self.max_lines:
            latest = sorted(active, key=lambda b: b.updated)[-self.max_lines :]
            active = [b for b in active if b in latest]
        return [b.describe(now)[:width] for b in active]

    def _around(self, write: Callable[[], None]) -> None:
        with self._tracker.lock:
            if self._closed:
                write()
                return
            self._erase()
            write()
            self._draw(self._tracker.clock())

    def _redraw(self, now: float) -> None:
        self._erase()
        self._draw(now)

    def _erase(self) -> None:
        if self._drawn:
            # Up to the first status line, column 0, then clear to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, now: float) -> None:
        lines = self.lines(now)
        for line in lines:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._drawn = len(lines)
        if lines:  # a redraw for a log line with nothing to show does not delay the next
            self._last_draw = now


class LogProgress:
    """An INFO line per batch at most every `interval` seconds, while the batch is running.

    A batch that finishes within `interval` logs no progress line at all: its
    `batch_synced` line says everything.
    """

    def __init__(
        self,
        interval: float = LOG_INTERVAL_SECONDS,
        *,
        clock: Clock = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self.interval = interval
        self.logger = logger
        self._tracker = _Tracker(clock)
        self._logged: dict[tuple[str, str], float] = {}

    def __call__(self, batch: BatchRef, stream: str, counts: StreamCounts) -> None:
        with self._tracker.lock:
            state, now = self._tracker.note(batch, stream, counts)
            last = self._logged.setdefault((batch.batch_id, stream), state.started)
            if now - last < self.interval or state.done:
                return
            self._logged[(batch.batch_id, stream)] = now
            message = state.describe(now)
        self.logger.info(
            "progress: %s",
            message,
            extra={
                "batch_id": batch.batch_id,
                "event": "progress",
                "streams": {stream: counts.as_dict()},
            },
        )

    def close(self) -> None:
        return None


def reporter_for(
    stream: TextIO,
    *,
    quiet: bool,
    log_format: str,
    handler: ConsoleHandler | None,
    interval: float | None = None,
    max_lines: int | None = None,
) -> Reporter | None:
    """What the command line shows: live lines on a terminal, log lines elsewhere.

    None with `quiet` (errors only). JSON logs always get log lines: whoever asked for
    them reads the stream with a program.
    """
    if quiet:
        return None
    if log_format == "text" and _is_terminal(stream):
        return TerminalProgress(stream, handler, max_lines=max_lines)
    return LogProgress(LOG_INTERVAL_SECONDS if interval is None else interval)


def _terminal_columns(stream: TextIO) -> int:
    """The width of the terminal `stream` writes to (a line must not wrap: the cursor
    movements count lines)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        columns = 0
    return columns or shutil.get_terminal_size().columns  # 0: a terminal that has no size


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False
