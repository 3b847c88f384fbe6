"""The endpoints a sync reads for each batch, each a declared stream.

A stream is a listing of one batch's records: its path under the batch, the pure
normalization of its records (in its module), the tables it writes and the loader that
writes them. The pipeline runs `STREAMS` in order for every batch it syncs and never names
one; run records, logs, progress and metrics count each stream's rows under its name.

Adding a stream: a module here that defines a `Stream` (its normalizer beside it, its
loader built from etl.load's pieces), its tables in etl/load/schema.py with a migration,
tests, and a line in `STREAMS` below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Table

from etl.config import BatchRef, Config
from etl.domain import StreamCounts
from etl.extract.pagination import Page
from etl.normalize.json_values import RejectedRecord


@dataclass(frozen=True, slots=True)
class Listing:
    """One listing of a stream for one batch: its query parameters and what it shows."""

    params: Mapping[str, str]
    label: str = ""
    """How log lines name the listing beside its batch, e.g. "(status ERROR)"."""
    shows_every_record: bool = True
    """False for a filtered listing: a record it does not show may still exist."""

    @property
    def key(self) -> str:
        """The listing's query as text (`""` unfiltered): what tells listings apart."""
        return "&".join(f"{name}={value}" for name, value in sorted(self.params.items()))


@dataclass(slots=True)
class PageResult:
    """What loading one page did."""

    counts: StreamCounts
    rejected: list[RejectedRecord] = field(default_factory=list)
    new_values: set[tuple[str, str]] = field(default_factory=set)
    """(field, value) for each value of a documented enumeration this version does not know
    (stored as sent), e.g. ("status", "CANCELLED")."""


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What a stream's loader knows of the batch and the run it loads for."""

    batch: BatchRef
    run_id: int
    conn: Connection
    """The batch's own connection: it holds the batch's lock, so a lost lock stops writes."""
    clock: Callable[[], datetime]
    """The time for first_seen_at, updated_at and removed_at."""


class StreamLoader(Protocol):
    """Loads one listing's pages of one stream for one batch, page by page."""

    def load_page(self, page: Page, listing: Listing) -> PageResult:
        """Write one page of `listing` in one transaction (none if it is unchanged)."""
        ...

    def finish(self, *, listed_to_end: bool, complete: bool) -> int:
        """Close the listings. `listed_to_end`: every page of every listing was read;
        `complete`: and they show every record consistently, so a stored record they did not
        show is gone (marked removed). Returns how many were marked removed."""
        ...


class Stream(Protocol):
    """A declared stream; see the module docstring."""

    name: str
    """The stream's name in run records, logs and metrics (its main table's name)."""
    path: str
    """The endpoint under `/api/agents/{agent_id}/scheduled_batches/{batch_id}/`."""
    tables: tuple[Table, ...]
    """The tables it writes, main table first."""
    max_page_size: int | None
    """The most records a page of it is asked for, where fewer than `[api] page_size` keep a
    page's memory near a page of scheduled calls (its records weigh more); None: no limit."""

    def enabled(self, config: Config) -> bool:
        """Whether the config asks for this stream."""
        ...

    def listings(self, batch: BatchRef) -> Sequence[Listing]:
        """The listings that read the batch's records of this stream."""
        ...

    def settled(self, conn: Connection, batch: BatchRef, details: Mapping[str, Any]) -> str | None:
        """Why the batch's records of this stream cannot change any more (the batch
        has ended and what is stored is final), or None if they must be listed."""
        ...

    def loader(self, context: BatchContext) -> StreamLoader:
        """A loader for one sync of one batch."""
        ...


def _registered() -> tuple[Stream, ...]:
    from etl.streams.created_calls import CREATED_CALLS
    from etl.streams.scheduled_calls import SCHEDULED_CALLS

    return (SCHEDULED_CALLS, CREATED_CALLS)


def page_size_of(stream: Stream, configured: int) -> int:
    """The page size a stream's listings are asked for: the config's, within its limit."""
    return configured if stream.max_page_size is None else min(configured, stream.max_page_size)


def streams_for(config: Config) -> tuple[Stream, ...]:
    """The streams a sync with this config runs, in order."""
    return tuple(stream for stream in _registered() if stream.enabled(config))


def stream_names() -> tuple[str, ...]:
    """Every stream's name, enabled or not (for metrics that list each one)."""
    return tuple(stream.name for stream in _registered())
