"""Loading a stream whose records carry their own id: upsert by key, skip what is unchanged.

A stream declares its main table (keyed by the record's id, with `batch_id`, `record_digest`,
`first_seen_at`, `updated_at` and `removed_at`), its child key/value tables, and a pure
function from a record to its rows. Per page, one lookup reads the stored digests of the
page's keys; a record whose digest is stored is unchanged and costs nothing more; new rows
are inserted, changed ones updated (their child rows replaced), in one transaction on the
batch's connection. A key listed twice in one listing, or already held by another batch,
is a rejected record. After a complete listing, stored rows it did not show are marked
removed (and cleared if they come back).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, select

from etl.domain import StreamCounts
from etl.extract.pagination import Page
from etl.load.backends import Bulk, backend_for, driver_errors_translated
from etl.load.page_memory import Member, PageMemory
from etl.load.rejects import RejectCollector
from etl.normalize.json_values import RecordError
from etl.streams import BatchContext, Listing, PageResult


@dataclass(frozen=True, slots=True)
class KeyedRows:
    """One record as rows: the main row's values by column, and child rows by table."""

    key: str
    record_digest: str
    values: Mapping[str, Any]
    """Main table columns, in the database's form (JSON as text), key and batch excluded."""
    children: Mapping[str, Sequence[tuple[Any, ...]]]
    """Child rows by table name, each without its leading key column."""
    new_values: frozenset[tuple[str, str]] = frozenset()
    """(field, value) for values of documented enumerations this version does not know."""


@dataclass(frozen=True)
class KeyedStreamSpec:
    """What a keyed stream's loader needs to know about its tables and records."""

    stream: str
    table: Table
    key: str
    children: tuple[Table, ...]
    record_key: Callable[[Any], str | None]
    """The id of any JSON value, as stored (None: it has no usable one)."""
    digest: Callable[[Any], str]
    """The record digest of any JSON value (secrets removed first)."""
    rows: Callable[[Any, str, bool], KeyedRows]
    """The rows of a record, given its digest and whether its page was read leniently;
    raises RecordError for a record that cannot be stored."""
    without_secrets: Callable[[Any], Any]
    """The record as rejected_records may keep it."""
    version: int
    """The normalizer's version: a newer one reads every remembered page again."""


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LOW_64 = (1 << 64) - 1


class SeenKeys:
    """The keys one listing has claimed, in about 16 bytes each where a key is a lowercase
    UUID (a callId always is one): its 128-bit number, gathered in a set and merged into
    sorted arrays every few thousand. A string in a set costs seven times that, which made
    a loader's memory grow with its batch. Any other key is kept as itself."""

    _GATHER = 16_384

    def __init__(self) -> None:
        self._high = array("Q")
        self._low = array("Q")
        """Sorted by (high, low): the numbers merged so far."""
        self._gathered: set[int] = set()
        self._others: set[str] = set()

    def add(self, key: str) -> None:
        number = _uuid_number(key)
        if number is None:
            self._others.add(key)
            return
        self._gathered.add(number)
        if len(self._gathered) >= self._GATHER:
            self._merge()

    def update(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        number = _uuid_number(key)
        if number is None:
            return key in self._others
        if number in self._gathered:
            return True
        high, low = number >> 64, number & _LOW_64
        first = bisect_left(self._high, high)
        end = bisect_right(self._high, high, first)
        at = bisect_left(self._low, low, first, end)  # lows are sorted within one high
        return at < end and self._low[at] == low

    def _merge(self) -> None:
        merged = [(high << 64) | low for high, low in zip(self._high, self._low, strict=True)]
        merged += self._gathered
        merged.sort()
        self._high = array("Q", [n >> 64 for n in merged])
        self._low = array("Q", [n & _LOW_64 for n in merged])
        self._gathered.clear()


def _uuid_number(key: str) -> int | None:
    return int(key.replace("-", ""), 16) if _UUID.fullmatch(key) else None


class KeyedRowsLoader:
    """Writes one sync's listing of one batch's records of a keyed stream."""

    def __init__(self, spec: KeyedStreamSpec, context: BatchContext) -> None:
        self.spec = spec
        self.context = context
        self.backend = backend_for(context.conn)
        self.memory = PageMemory(context.conn, context.batch.batch_id, spec.stream, spec.version)
        self._seen = SeenKeys()
        self._removed: set[str] | None = None
        value_columns = [
            c.name
            for c in spec.table.columns
            if c.name not in (spec.key, "batch_id", "first_seen_at", "removed_at")
        ]
        self._columns = tuple(value_columns)

    def load_page(self, page: Page, listing: Listing) -> PageResult:
        spec = self.spec
        records = page.results
        counts = StreamCounts(pages=1, fetched=len(records))
        result = PageResult(counts)
        recollection = self.memory.recall(page, listing.key)
        remembered = recollection.members if recollection is not None else []
        removed = self._removed_keys()
        if recollection is not None and recollection.same_page:
            keys_then = [key for key, _ in remembered]
            if not any(k in self._seen or k in removed for k in keys_then):
                self._seen.update(keys_then)
                counts.unchanged = len(records)
                return result
        conn = self.context.conn
        batch_id = self.context.batch.batch_id
        with conn.begin(), driver_errors_translated(conn):
            db = self.backend.bulk(conn)
            rejects = RejectCollector(self.context, spec.stream, page.number, spec.without_secrets)
            members: list[Member | None] = [None] * len(records)
            digests = [spec.digest(r) for r in records]
            record_keys = [spec.record_key(r) for r in records]
            # A record as remembered at its place of the page is its row, unchanged.
            for position, (digest, key) in enumerate(zip(digests, record_keys, strict=True)):
                if (
                    key is not None
                    and position < len(remembered)
                    and remembered[position] == (key, digest)
                    and key not in self._seen
                    and key not in removed
                ):
                    self._seen.add(key)
                    members[position] = (key, digest)
                    counts.unchanged += 1
            keys = sorted({k for k, m in zip(record_keys, members, strict=True) if k and not m})
            stored = {
                key: (digest, owner, removed_at)
                for key, digest, owner, removed_at in db.select_in(
                    spec.table,
                    (spec.key, "record_digest", "batch_id", "removed_at"),
                    {},
                    spec.key,
                    keys,
                )
            }
            new: list[KeyedRows] = []
            changed: list[KeyedRows] = []
            for position, (record, digest, key) in enumerate(
                zip(records, digests, record_keys, strict=True)
            ):
                if members[position] is not None:
                    continue
                if key is not None and key in self._seen:
                    rejects.add(position, f"{spec.key} {key} is listed twice in this batch", record)
                    continue
                old = stored.get(key) if key is not None else None
                if old is not None and old[1] != batch_id:
                    rejects.add(position, f"{spec.key} {key} belongs to batch {old[1]}", record)
                    continue
                if key is not None and old is not None and old[0] == digest and old[2] is None:
                    self._seen.add(key)
                    members[position] = (key, digest)
                    counts.unchanged += 1
                    continue
                try:
                    rows = spec.rows(record, digest, page.lenient)
                except RecordError as exc:
                    rejects.add(position, str(exc), record)
                    continue
                self._seen.add(rows.key)
                members[position] = (rows.key, digest)
                result.new_values |= rows.new_values
                (new if old is None else changed).append(rows)
            self._write(db, new, changed)
            counts.inserted += len(new)
            counts.updated += len(changed)
            counts.rejected = len(rejects.rejected)
            result.rejected = rejects.write(conn)
            self.memory.note(conn, page, listing.key, members, wrote=bool(new or changed))
        return result

    def _removed_keys(self) -> set[str]:
        if self._removed is None:
            key = self.spec.table.c[self.spec.key]
            removed_at = self.spec.table.c.removed_at
            batch_id = self.spec.table.c.batch_id
            with self.context.conn.begin():
                self._removed = set(
                    self.context.conn.execute(
                        select(key).where(
                            (batch_id == self.context.batch.batch_id) & removed_at.is_not(None)
                        )
                    ).scalars()
                )
        return self._removed

    def _write(self, db: Bulk, new: list[KeyedRows], changed: list[KeyedRows]) -> None:
        spec = self.spec
        ts = db.timestamp(self.context.clock())
        batch_id = self.context.batch.batch_id
        db.insert(
            spec.table,
            (spec.key, "batch_id", "first_seen_at", "removed_at", *self._columns),
            [(r.key, batch_id, ts, None, *self._values(db, r, ts)) for r in new],
        )
        db.update_rows(
            spec.table,
            spec.key,
            ("removed_at", *self._columns),
            [(r.key, None, *self._values(db, r, ts)) for r in changed],
        )
        for child in spec.children:
            db.delete_in(child, spec.key, [r.key for r in changed])
            db.insert(
                child,
                [c.name for c in child.columns],
                [(r.key, *row) for r in (*new, *changed) for row in r.children.get(child.name, ())],
            )

    def _values(self, db: Bulk, rows: KeyedRows, ts: Any) -> list[Any]:
        values = {**rows.values, "record_digest": rows.record_digest, "updated_at": ts}
        return [
            db.decimal(v) if isinstance(v, Decimal) else v
            for v in (values.get(c) for c in self._columns)
        ]

    def finish(self, *, listed_to_end: bool, complete: bool) -> int:
        if not (listed_to_end and complete):
            return 0
        conn = self.context.conn
        with conn.begin(), driver_errors_translated(conn):
            db = self.backend.bulk(conn)
            absent = [
                key
                for key in db.select_ids(
                    self.spec.table,
                    self.spec.key,
                    {"batch_id": self.context.batch.batch_id},
                    "removed_at",
                )
                if key not in self._seen
            ]
            db.update_in(
                self.spec.table,
                {"removed_at": db.timestamp(self.context.clock())},
                self.spec.key,
                absent,
            )
        return len(absent)
