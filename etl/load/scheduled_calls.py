"""Loading a batch's scheduled calls: which stored row each record is, then set-based writes.

Scheduled calls have no id of their own, and the API's listing order is not documented, so
each record is matched to a stored row of its batch (SCHEMA.md, "Call identity"):

1. a record whose digest equals an unclaimed stored row's is that row, unchanged: it costs a
   digest and a lookup, nothing more;
2. a record with a callId is the row with that callId, always; a callId listed twice, or
   held by a call of another batch, is a rejected record (it never jams the batch);
3. the others match an unclaimed row of the same definition by state before order: the
   same state, then the same status (an error or a callId filled in), then a row still
   behind it on FUTURE → PENDING → final (the furthest along first); a row with a callId is
   only ever matched by that callId, and a row never moves from a final status back to a
   waiting one;
4. a record that matches nothing is a new row, keyed by its definition and the next unused
   occurrence number.

"Claimed" rows are remembered for the whole listing (one bit per row id), so two records
never become one row; the rows a complete listing did not claim are marked removed by
`finish`. Each page is one transaction on the batch's own connection, which holds the
batch's lock: when the database drops that connection, the lock and the writes stop together.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlalchemy import select, update

from etl.domain import KNOWN_STATUSES, StreamCounts, status_rank
from etl.extract.pagination import Page
from etl.load.backends import Bulk, backend_for, driver_errors_translated, json_text
from etl.load.page_memory import Member, PageMemory, Recollection
from etl.load.rejects import RejectCollector
from etl.load.schema import (
    scheduled_batches,
    scheduled_call_data_messages,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_call_status_changes,
    scheduled_calls,
)
from etl.normalize.json_values import RecordError
from etl.normalize.medium import MEDIA_COLUMNS, MEDIA_JSON_COLUMNS
from etl.streams import BatchContext, Listing, PageResult
from etl.streams.scheduled_calls import (
    NORMALIZER_VERSION,
    NormalizedScheduledCall,
    check_record,
    normalize_record,
    record_digest,
    secret_free_payload,
)

STREAM = "scheduled_calls"


class StoredCall(NamedTuple):
    """A stored scheduled call as the matching reads it (the field names are its columns)."""

    id: int
    batch_id: str
    call_key: str
    definition_digest: str
    record_digest: str
    status: str
    call_id: str | None
    error: str | None
    call_hash: str
    detail_hash: str
    updated_at: Any
    """As the driver returns it; written back unchanged when only child rows changed."""
    removed_at: Any

    @property
    def occurrence(self) -> int:
        return _occurrence(self.call_key)


class Twin(NamedTuple):
    """A stored call without a callId, as matching by state reads it (rule 3)."""

    id: int
    occurrence: int
    status: str
    error: str | None
    removed: bool


_STORED = StoredCall._fields
_TWIN_COLUMNS = ("id", "definition_digest", "call_key", "status", "error", "removed_at")
_BY_DIGEST = ("id", "record_digest", "removed_at")
# What a write sets; first_seen_at only on insert.
_WRITTEN = (
    "call_key",
    "call_id",
    "status",
    "error",
    "medium_type",
    "metadata",
    "template_context",
    "experimental_settings",
    "nul_escaped_record",
    "call_hash",
    "detail_hash",
    "definition_digest",
    "record_digest",
    "updated_at",
    "removed_at",
)
_INSERTED = ("batch_id", "agent_id", "first_seen_at", *_WRITTEN)
_HISTORY = (
    "scheduled_call_id",
    "run_id",
    "from_status",
    "to_status",
    "call_id",
    "error",
    "observed_at",
)
_media_values = operator.attrgetter(*MEDIA_COLUMNS)
_MEDIA_IS_JSON = tuple(c in MEDIA_JSON_COLUMNS for c in MEDIA_COLUMNS)


class SeenIds:
    """The row ids one listing has claimed: one bit per id, so memory stays flat."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, row_id: int) -> None:
        byte, bit = divmod(row_id, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte - len(self._bits) + 1 + len(self._bits) // 2))
        self._bits[byte] |= 1 << bit

    def __contains__(self, row_id: object) -> bool:
        if not isinstance(row_id, int):
            return False
        byte, bit = divmod(row_id, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))


class StoredDefinitions:
    """The definitions one sync has stored rows of, and the highest occurrence number of those
    it stored more than once (twins are a few in a batch; all definitions are the batch).

    The others are in a Bloom filter of a fixed 512 KiB, however large the batch: the digests
    are uniformly random already, so three slices of one serve as its three hashes. "Not
    stored" is certain; "stored once" may be wrong (about one time in 3,000 at 100,000
    definitions), so the caller asks the database what that definition holds."""

    _BITS = 22

    def __init__(self) -> None:
        self._filter = bytearray((1 << self._BITS) // 8)
        self._highest_twin: dict[str, int] = {}

    def _positions(self, definition_digest: str) -> tuple[int, int, int]:
        n = int(definition_digest[:18], 16)  # 72 bits: three slices of 22
        mask = (1 << self._BITS) - 1
        return n & mask, (n >> self._BITS) & mask, (n >> 2 * self._BITS) & mask

    def note(self, definition_digest: str, occurrence: int) -> None:
        """A row of the definition with this occurrence number was stored."""
        if occurrence > 1:
            known = self._highest_twin.get(definition_digest, 0)
            self._highest_twin[definition_digest] = max(occurrence, known)
        for position in self._positions(definition_digest):
            self._filter[position >> 3] |= 1 << (position & 7)

    def highest(self, definitions: Iterable[str]) -> tuple[dict[str, int], set[str]]:
        """The highest occurrence stored of each definition this knows of (0: none); and
        the definitions that may have one row stored, for the database to answer."""
        known: dict[str, int] = {}
        ask: set[str] = set()
        for definition in definitions:
            if definition in self._highest_twin:
                known[definition] = self._highest_twin[definition]
            elif all(
                self._filter[position >> 3] & (1 << (position & 7))
                for position in self._positions(definition)
            ):
                ask.add(definition)
            else:
                known[definition] = 0
        return known, ask


class _Match(NamedTuple):
    call: NormalizedScheduledCall
    stored: StoredCall | None
    """None: a new row."""
    call_key: str


class ScheduledCallLoader:
    """Writes one sync's listings of one batch's scheduled calls (see the module doc)."""

    def __init__(self, context: BatchContext) -> None:
        self.context = context
        self.batch = context.batch
        self.backend = backend_for(context.conn)
        self.memory = PageMemory(context.conn, self.batch.batch_id, STREAM, NORMALIZER_VERSION)
        self._seen = SeenIds()
        self._removed: set[int] | None = None
        self._fresh: StoredDefinitions | None = None
        """When the batch had no stored call as this sync began: the definitions this sync has
        stored. Every row of the batch is then one this sync stored and claimed, so a record
        can only be a stored row by its callId (and is then listed twice), and a new row's
        number needs a lookup of its definition's rows only if this sync stored one."""
        self._twins: dict[str, list[Twin]] = {}
        """Per definition, its stored rows without a callId this sync has not claimed, in
        occurrence order. A definition's rows are read once per sync, when a call of it first
        needs matching by state: a definition can have thousands of twins, and reading them
        again on every page made a re-sync quadratic in the batch's size. A claimed row
        leaves; an unclaimed one this sync has not written, so what was read stays true."""
        self._first_page = True

    def load_page(self, page: Page, listing: Listing) -> PageResult:
        records = page.results
        counts = StreamCounts(pages=1, fetched=len(records))
        result = PageResult(counts)
        if self._first_page:
            self._first_page = False
            self._note_start()
        # A batch that held no call as this sync began has nothing a memory could name.
        recollection = None if self._fresh is not None else self.memory.recall(page, listing.key)
        if (
            recollection is not None
            and recollection.same_page
            and self._claimed_all(recollection.members)
        ):
            counts.unchanged = len(records)
            return result
        conn = self.context.conn
        with conn.begin(), driver_errors_translated(conn):
            db = self.backend.bulk(conn)
            rejects = RejectCollector(self.context, STREAM, page.number, secret_free_payload)
            members: list[Member | None] = [None] * len(records)
            changed = self._unchanged_skipped(db, page, recollection, counts, rejects, members)
            if changed:
                matches = self._matched(db, changed, records, rejects)
                self._write(db, matches, counts, result, members)
            counts.rejected = len(rejects.rejected)
            result.rejected = rejects.write(conn)
            self.memory.note(conn, page, listing.key, members, wrote=bool(changed))
        return result

    def _note_start(self) -> None:
        """What this sync needs to know of the batch's stored calls once, up front."""
        c = scheduled_calls.c
        with self.context.conn.begin():
            self._removed = set(
                self.context.conn.execute(
                    select(c.id).where(
                        (c.batch_id == self.batch.batch_id) & c.removed_at.is_not(None)
                    )
                ).scalars()
            )
            stored = self.context.conn.execute(
                select(c.id).where(c.batch_id == self.batch.batch_id).limit(1)
            ).first()
        self._fresh = StoredDefinitions() if stored is None else None

    def _claimed_all(self, members: list[Member]) -> bool:
        """Claim the remembered rows of a page that came again, unless one of them was
        claimed already or marked removed (see etl.load.page_memory)."""
        ids = [int(key) for key, _ in members]
        removed = self._removed or set()
        if any(i in self._seen or i in removed for i in ids):
            return False
        for row_id in ids:
            self._seen.add(row_id)
        return True

    # -- reading: which records need work --------------------------------------------------------

    def _unchanged_skipped(
        self,
        db: Bulk,
        page: Page,
        recollection: Recollection | None,
        counts: StreamCounts,
        rejects: RejectCollector,
        members: list[Member | None],
    ) -> list[NormalizedScheduledCall]:
        """Claim the rows of records stored exactly as sent (the row remembered at the same
        place of the page, else one found by the record's digest); normalize the others."""
        records = page.results
        digests = [record_digest(r) for r in records]
        seen = self._seen
        removed = self._removed or set()
        remembered = recollection.members if recollection is not None else []
        pending: list[int] = []
        for position, digest in enumerate(digests):
            if position < len(remembered):
                key, was = remembered[position]
                row_id = int(key)
                if was == digest and row_id not in seen and row_id not in removed:
                    seen.add(row_id)
                    members[position] = (key, digest)
                    counts.unchanged += 1
                    continue
            pending.append(position)
        by_digest: dict[str, list[tuple[int, Any]]] = defaultdict(list)
        if pending and self._fresh is None:  # a fresh batch holds no row this sync did not claim
            for row_id, digest, removed_at in db.select_in(
                scheduled_calls,
                _BY_DIGEST,
                {"batch_id": self.batch.batch_id},
                "record_digest",
                [digests[i] for i in pending],
            ):
                by_digest[digest].append((row_id, removed_at))
        changed = []
        for position in pending:
            record, digest = records[position], digests[position]
            found = next(
                (
                    i
                    for i, was_removed in by_digest.get(digest, ())
                    if was_removed is None and i not in seen
                ),
                None,
            )
            if found is not None:
                seen.add(found)
                members[position] = (str(found), digest)
                counts.unchanged += 1
                continue
            try:
                check_record(record, self.batch, lenient=page.lenient)
            except RecordError as exc:
                rejects.add(position, str(exc), record)
                continue
            changed.append(
                normalize_record(
                    record, position=position, digest_of_record=digest, may_hold_nul=page.lenient
                )
            )
        return changed

    def _matched(
        self,
        db: Bulk,
        calls: list[NormalizedScheduledCall],
        records: list[Any],
        rejects: RejectCollector,
    ) -> list[_Match]:
        """Each call's stored row (or a new key), per the module doc's rules."""
        batch_id = self.batch.batch_id
        # A callId names its row: those are looked up first, so that only the calls a
        # callId does not place need the rows of their definition (twins make those many).
        by_call_id: dict[str, StoredCall] = {}
        elsewhere: dict[str, str] = {}
        wanted = sorted({c.call.call_id for c in calls if c.call.call_id})
        for row in map(
            StoredCall._make, db.select_in(scheduled_calls, _STORED, {}, "call_id", wanted)
        ):
            if row.batch_id == batch_id:
                by_call_id[str(row.call_id)] = row
            else:
                elsewhere[str(row.call_id)] = row.batch_id

        matches: list[_Match] = []
        by_state: list[NormalizedScheduledCall] = []
        on_page: set[str] = set()
        seen = self._seen
        for call in calls:
            call_id = call.call.call_id
            if call_id is None:
                by_state.append(call)
                continue
            if call_id in on_page or (call_id in by_call_id and by_call_id[call_id].id in seen):
                rejects.add(
                    call.position,
                    f"callId {call_id} is listed twice in this batch",
                    records[call.position],
                )
                continue
            on_page.add(call_id)
            if call_id in elsewhere:
                rejects.add(
                    call.position,
                    f"callId {call_id} belongs to a call of batch {elsewhere[call_id]}",
                    records[call.position],
                )
                continue
            holder = by_call_id.get(call_id)
            if holder is None:
                by_state.append(call)
                continue
            seen.add(holder.id)
            matches.append(_Match(call, holder, holder.call_key))

        definitions = {c.definition_digest for c in by_state}
        # A fresh batch's rows are all claimed already: none can be matched by state.
        if self._fresh is None:
            self._read_twins(db, definitions)
        chosen: list[tuple[NormalizedScheduledCall, Twin]] = []
        unmatched: list[NormalizedScheduledCall] = []
        for call in by_state:
            twin = _best_candidate(self._twins.get(call.definition_digest, ()), call, seen)
            if twin is None:
                unmatched.append(call)
                continue
            seen.add(twin.id)
            chosen.append((call, twin))
        self._forget_claimed(definitions)
        rows = db.select_in(scheduled_calls, _STORED, {}, "id", [t.id for _, t in chosen])
        by_id = {row.id: row for row in map(StoredCall._make, rows)}
        matches += [_Match(call, by_id[t.id], by_id[t.id].call_key) for call, t in chosen]
        next_occurrence = self._highest_occurrences(db, {c.definition_digest for c in unmatched})
        for call in unmatched:
            occurrence = next_occurrence.get(call.definition_digest, 0) + 1
            next_occurrence[call.definition_digest] = occurrence
            matches.append(_Match(call, None, f"{call.definition_digest}#{occurrence}"))
        return matches

    def _read_twins(self, db: Bulk, definitions: set[str]) -> None:
        """Read the unclaimed rows without a callId of the definitions not read yet (only a
        row without a callId can be matched by state: a definition's twins with one, often
        most of them in a large batch, stay in the database)."""
        unread = sorted(d for d in definitions if d not in self._twins)
        if not unread:
            return
        read: dict[str, list[Twin]] = defaultdict(list)
        words: dict[str, str] = {}  # one string per status and error, not one per row
        for row_id, definition, call_key, status, error, removed_at in db.select_in(
            scheduled_calls,
            _TWIN_COLUMNS,
            {"batch_id": self.batch.batch_id, "call_id": None},
            "definition_digest",
            unread,
        ):
            if row_id not in self._seen:
                read[definition].append(
                    Twin(
                        row_id,
                        _occurrence(call_key),
                        words.setdefault(status, status),
                        error and words.setdefault(error, error),
                        removed_at is not None,
                    )
                )
        for definition, twins in read.items():
            self._twins[definition] = sorted(twins, key=operator.attrgetter("occurrence"))

    def _forget_claimed(self, definitions: set[str]) -> None:
        """Drop the claimed rows of these definitions (and a definition with none left: read
        again, it would hold only claimed rows)."""
        for definition in definitions:
            left = [t for t in self._twins.get(definition, ()) if t.id not in self._seen]
            if left:
                self._twins[definition] = left
            else:
                self._twins.pop(definition, None)

    def _highest_occurrences(self, db: Bulk, definitions: set[str]) -> dict[str, int]:
        """The highest occurrence number stored for each definition (absent: none), read
        only for the definitions that get a new row (on a re-sync, rarely any; on a first
        sync, those it may have stored already)."""
        highest: dict[str, int] = {}
        if self._fresh is not None:
            highest, definitions = self._fresh.highest(definitions)
        if not definitions:
            return highest
        for definition, call_key in db.select_in(
            scheduled_calls,
            ("definition_digest", "call_key"),
            {"batch_id": self.batch.batch_id},
            "definition_digest",
            sorted(definitions),
        ):
            highest[definition] = max(highest.get(definition, 0), _occurrence(call_key))
        return highest

    # -- writing ----------------------------------------------------------------------------------

    def _write(
        self,
        db: Bulk,
        matches: list[_Match],
        counts: StreamCounts,
        result: PageResult,
        members: list[Member | None],
    ) -> None:
        ts = db.timestamp(self.context.clock())
        new = [m for m in matches if m.stored is None]
        old = [m for m in matches if m.stored is not None]
        ids = self._insert(db, new, ts)
        for row_id, m in zip(ids, new, strict=True):
            self._seen.add(row_id)
            members[m.call.position] = (str(row_id), m.call.record_digest)
            if self._fresh is not None:
                self._fresh.note(m.call.definition_digest, _occurrence(m.call_key))
        for m in old:
            members[m.call.position] = (str(_stored(m).id), m.call.record_digest)
        db.update_rows(
            scheduled_calls, "id", _WRITTEN, [(_stored(m).id, *_written(m, ts)) for m in old]
        )
        counts.inserted += len(new)
        details: list[tuple[int, NormalizedScheduledCall]] = list(
            zip(ids, (m.call for m in new), strict=True)
        )
        stale: list[int] = []
        history: list[tuple[int, NormalizedScheduledCall, str | None]] = [
            (row_id, m.call, None) for row_id, m in zip(ids, new, strict=True)
        ]
        for m in old:
            row = _stored(m)
            detail_changed = row.detail_hash != m.call.detail_hash
            if detail_changed:
                details.append((row.id, m.call))
                stale.append(row.id)
            if detail_changed or row.call_hash != m.call.call_hash or row.removed_at is not None:
                counts.updated += 1
            else:  # only the record's digest moved (say, its keys came in another order)
                counts.unchanged += 1
            c = m.call.call
            if (row.status, row.call_id, row.error) != (c.status, c.call_id, c.error):
                history.append((row.id, m.call, row.status))
        self._replace_details(db, details, stale)
        db.insert(
            scheduled_call_status_changes,
            _HISTORY,
            [
                (
                    row_id,
                    self.context.run_id,
                    before,
                    n.call.status,
                    n.call.call_id,
                    n.call.error,
                    ts,
                )
                for row_id, n, before in history
            ],
        )
        result.new_values.update(_unknown_statuses(m.call for m in matches))

    def _insert(self, db: Bulk, new: list[_Match], ts: Any) -> list[int]:
        """Insert the new rows (renumbering a key `new` held that is taken); their ids.

        A row keeps its key for life, also when the record that holds its callId comes with
        another definition (two records named one callId and the other one was listed
        first): the next number of its old definition may then be taken by a row no longer
        of that definition. Such a key is renumbered and the insert tried again, in a
        savepoint, so the page (and every later sync of the batch) does not fail on it; the
        check costs nothing while no key is taken."""
        if not new:
            return []
        conn = self.context.conn
        while True:
            savepoint = conn.begin_nested()
            try:
                ids = db.insert_with_ids(
                    scheduled_calls,
                    _INSERTED,
                    [(self.batch.batch_id, self.batch.agent_id, ts, *_written(m, ts)) for m in new],
                    key=("batch_id", "call_key"),
                )
            except conn.dialect.loaded_dbapi.IntegrityError:
                savepoint.rollback()
                if not _renumber_taken_keys(db, self.batch.batch_id, new):
                    raise
                continue
            savepoint.commit()
            return ids

    def _replace_details(
        self, db: Bulk, details: list[tuple[int, NormalizedScheduledCall]], stale: list[int]
    ) -> None:
        """Rewrite the child rows of calls that are new or whose child rows differ."""
        if not details:
            return
        for table in (scheduled_call_media, scheduled_call_data_messages, scheduled_call_metadata):
            db.delete_in(table, "scheduled_call_id", stale)
        db.insert(
            scheduled_call_media,
            ("scheduled_call_id", *MEDIA_COLUMNS),
            (
                (
                    row_id,
                    *[
                        json_text(v) if is_json else v
                        for v, is_json in zip(_media_values(c.media), _MEDIA_IS_JSON, strict=True)
                    ],
                )
                for row_id, c in details
            ),
        )
        db.insert(
            scheduled_call_data_messages,
            ("scheduled_call_id", "message", "enabled"),
            [(row_id, m, on) for row_id, c in details for m, on in c.data_messages],
        )
        db.insert(
            scheduled_call_metadata,
            ("scheduled_call_id", "key", "value"),
            [(row_id, k, v) for row_id, c in details for k, v in c.metadata_entries],
        )

    def finish(self, *, listed_to_end: bool, complete: bool) -> int:
        """After every page was read: note when; after a complete listing, mark the calls it
        did not hold as removed. Returns how many were newly marked removed."""
        if not listed_to_end:
            return 0
        conn = self.context.conn
        now = self.context.clock()
        with conn.begin(), driver_errors_translated(conn):
            removed = 0
            if complete:
                db = self.backend.bulk(conn)
                absent = [
                    i
                    for i in db.select_ids(
                        scheduled_calls, "id", {"batch_id": self.batch.batch_id}, "removed_at"
                    )
                    if i not in self._seen
                ]
                db.update_in(scheduled_calls, {"removed_at": db.timestamp(now)}, "id", absent)
                removed = len(absent)
            conn.execute(
                update(scheduled_batches)
                .where(scheduled_batches.c.batch_id == self.batch.batch_id)
                .values(last_synced_at=now, removed_at=None)
            )
        return removed


def _occurrence(call_key: str) -> int:
    """The occurrence number of a call key, `<definition digest>#<n>`."""
    return int(call_key.rpartition("#")[2])


def _renumber_taken_keys(db: Bulk, batch_id: str, new: list[_Match]) -> bool:
    """Give each new row whose key a stored row already holds the next free number of its
    definition (in place); False if no key was taken."""
    keys = [m.call_key for m in new]
    taken = {
        key
        for (key,) in db.select_in(
            scheduled_calls, ("call_key",), {"batch_id": batch_id}, "call_key", keys
        )
    }
    if not taken:
        return False
    top: dict[str, int] = {}
    for key in [*keys, *taken]:
        definition, _, occurrence = key.rpartition("#")
        top[definition] = max(top.get(definition, 0), int(occurrence))
    for n, match in enumerate(new):
        if match.call_key in taken:
            definition = match.call.definition_digest
            top[definition] += 1
            new[n] = match._replace(call_key=f"{definition}#{top[definition]}")
    return True


def _stored(match: _Match) -> StoredCall:
    assert match.stored is not None
    return match.stored


def _written(match: _Match, ts: Any) -> tuple[Any, ...]:
    """The _WRITTEN values of a match: updated_at moves only when the call's own columns do."""
    n, row = match.call, match.stored
    c = n.call
    updated_at = row.updated_at if row is not None and row.call_hash == n.call_hash else ts
    return (
        match.call_key,
        c.call_id,
        c.status,
        c.error,
        c.medium_type,
        json_text(c.metadata),
        json_text(c.template_context),
        json_text(c.experimental_settings),
        c.nul_escaped_record,
        n.call_hash,
        n.detail_hash,
        n.definition_digest,
        n.record_digest,
        updated_at,
        None,
    )


def _best_candidate(
    twins: Iterable[Twin], call: NormalizedScheduledCall, seen: SeenIds
) -> Twin | None:
    """The unclaimed row of the call's definition it is, by state before order; None if
    none can be (see the module doc). `twins` come in occurrence order."""
    status, error = call.call.status, call.call.error
    rank = status_rank(status)
    best: tuple[int, int, int] | None = None
    chosen = None
    for twin in twins:
        if twin.id in seen:
            continue
        if twin.status == status:
            tier = 0 if twin.error == error and call.call.call_id is None else 1
            closeness = 0
        elif status_rank(twin.status) < rank:
            tier, closeness = 2, rank - status_rank(twin.status)
        else:
            continue
        # A row marked removed comes back only when no row still listed can be this call.
        score = (1 if twin.removed else 0, tier, closeness)
        if best is None or score < best:
            best, chosen = score, twin
    return chosen


def _unknown_statuses(calls: Iterable[NormalizedScheduledCall]) -> set[tuple[str, str]]:
    return {("status", c.call.status) for c in calls if c.call.status not in KNOWN_STATUSES}
