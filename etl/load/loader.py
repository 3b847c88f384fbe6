"""Loading one batch's scheduled calls: set-based upserts, one transaction per page.

Per page, the stored hashes of the page's call keys are read in one query; then only new and
changed calls are written, each table with one multi-row statement. An unchanged call costs
that comparison and nothing else: no UPDATE, no delete-and-reinsert of its child rows.

Calls are marked removed only by :meth:`BatchLoader.finish` after a complete listing, so a
listing that broke off (or a run that was killed) never marks anything removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, select, update

from etl.config import BatchRef
from etl.load.dialect import upsert
from etl.load.schema import (
    rejected_records,
    scheduled_batches,
    scheduled_call_data_messages,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_call_status_changes,
    scheduled_calls,
)
from etl.normalize import NormalizedCall, RejectedRecord

Clock = Callable[[], datetime]

# Columns an upsert may overwrite on an existing call; first_seen_at is never among them.
_CALL_UPDATE_COLUMNS = (
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
    "updated_at",
    "removed_at",
)
_KEY_CHUNK = 1000
"""Call keys per lookup query: well under SQLite's and PostgreSQL's parameter limits."""


@dataclass(slots=True)
class PageCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class _Stored:
    id: int
    status: str
    call_id: str | None
    error: str | None
    call_hash: str
    detail_hash: str
    removed: bool


class BatchLoader:
    """Writes one listing of one batch into the database."""

    def __init__(self, engine: Engine, batch: BatchRef, run_id: int, clock: Clock) -> None:
        self.engine = engine
        self.batch = batch
        self.run_id = run_id
        self.clock = clock
        self._seen_ids: set[int] = set()

    def load_page(
        self,
        page_number: int,
        calls: Sequence[NormalizedCall],
        rejects: Sequence[RejectedRecord] = (),
    ) -> PageCounts:
        """Upsert one page's calls and record its rejects, in one transaction."""
        counts = PageCounts(rejected=len(rejects))
        now = self.clock()
        with self.engine.begin() as conn:
            self._ensure_batch_row(conn, now)
            stored = self._stored(conn, [c.call_key for c in calls])
            to_write: list[NormalizedCall] = []
            for call in calls:
                old = stored.get(call.call_key)
                if old is None:
                    counts.inserted += 1
                    to_write.append(call)
                elif old.removed or old.call_hash != call.call_hash:
                    counts.updated += 1
                    to_write.append(call)
                elif old.detail_hash != call.detail_hash:
                    # Only the child rows differ (a newer version of this job maps more).
                    counts.updated += 1
                    to_write.append(call)
                else:
                    counts.unchanged += 1
                    self._seen_ids.add(old.id)
            if to_write:
                ids = self._upsert_calls(conn, to_write, now)
                self._seen_ids.update(ids.values())
                self._replace_details(conn, to_write, stored, ids)
                self._record_changes(conn, to_write, stored, ids, now)
            if rejects:
                self._record_rejects(conn, page_number, rejects, now)
        return counts

    def finish(self, *, complete: bool) -> int:
        """Close the listing; after a complete one, mark calls it did not contain as removed.

        Returns how many calls were newly marked removed.
        """
        now = self.clock()
        removed = 0
        with self.engine.begin() as conn:
            self._ensure_batch_row(conn, now)
            if complete:
                removed = self._mark_removed(conn, now)
                conn.execute(
                    update(scheduled_batches)
                    .where(scheduled_batches.c.batch_id == self.batch.batch_id)
                    .values(last_synced_at=now, removed_at=None)
                )
        return removed

    def _ensure_batch_row(self, conn: Connection, now: datetime) -> None:
        stmt = upsert(scheduled_batches, conn.dialect.name, key=["batch_id"], update=[])
        conn.execute(
            stmt,
            {
                "batch_id": self.batch.batch_id,
                "agent_id": self.batch.agent_id,
                "first_seen_at": now,
            },
        )

    def _stored(self, conn: Connection, keys: Sequence[str]) -> dict[str, _Stored]:
        c = scheduled_calls.c
        found: dict[str, _Stored] = {}
        for start in range(0, len(keys), _KEY_CHUNK):
            rows = conn.execute(
                select(
                    c.call_key, c.id, c.status, c.call_id, c.error,
                    c.call_hash, c.detail_hash, c.removed_at,
                ).where(
                    and_(
                        c.batch_id == self.batch.batch_id,
                        c.call_key.in_(keys[start : start + _KEY_CHUNK]),
                    )
                )
            )  # fmt: skip
            for row in rows:
                found[row.call_key] = _Stored(
                    id=row.id,
                    status=row.status,
                    call_id=row.call_id,
                    error=row.error,
                    call_hash=row.call_hash,
                    detail_hash=row.detail_hash,
                    removed=row.removed_at is not None,
                )
        return found

    def _upsert_calls(
        self, conn: Connection, calls: Sequence[NormalizedCall], now: datetime
    ) -> dict[str, int]:
        """Insert or update the calls; return their ids by call key."""
        rows = [
            {
                **call.call,
                "call_hash": call.call_hash,
                "detail_hash": call.detail_hash,
                "first_seen_at": now,
                "updated_at": now,
                "removed_at": None,
            }
            for call in calls
        ]
        stmt = upsert(
            scheduled_calls,
            conn.dialect.name,
            key=["batch_id", "call_key"],
            update=_CALL_UPDATE_COLUMNS,
        ).returning(scheduled_calls.c.call_key, scheduled_calls.c.id, sort_by_parameter_order=True)
        return {row.call_key: row.id for row in conn.execute(stmt, rows)}

    def _replace_details(
        self,
        conn: Connection,
        calls: Sequence[NormalizedCall],
        stored: dict[str, _Stored],
        ids: dict[str, int],
    ) -> None:
        """Rewrite the child rows of calls whose details are new or differ."""
        changed = [
            c
            for c in calls
            if c.call_key not in stored or stored[c.call_key].detail_hash != c.detail_hash
        ]
        if not changed:
            return
        stale = [ids[c.call_key] for c in changed if c.call_key in stored]
        for table in (scheduled_call_media, scheduled_call_data_messages, scheduled_call_metadata):
            if stale:
                conn.execute(delete(table).where(table.c.scheduled_call_id.in_(stale)))
        media = [{"scheduled_call_id": ids[c.call_key], **c.media} for c in changed]
        conn.execute(insert(scheduled_call_media), media)
        _insert_many(
            conn,
            scheduled_call_data_messages,
            (
                {"scheduled_call_id": ids[c.call_key], "message": message, "enabled": enabled}
                for c in changed
                for message, enabled in c.data_messages
            ),
        )
        _insert_many(
            conn,
            scheduled_call_metadata,
            (
                {"scheduled_call_id": ids[c.call_key], "key": key, "value": value}
                for c in changed
                for key, value in c.metadata_entries
            ),
        )

    def _record_changes(
        self,
        conn: Connection,
        calls: Sequence[NormalizedCall],
        stored: dict[str, _Stored],
        ids: dict[str, int],
        now: datetime,
    ) -> None:
        """One history row per first sighting and per change of status, callId or error."""
        history = []
        for call in calls:
            row = call.call
            old = stored.get(call.call_key)
            if old is not None and (old.status, old.call_id, old.error) == (
                row["status"],
                row["call_id"],
                row["error"],
            ):
                continue
            history.append(
                {
                    "scheduled_call_id": ids[call.call_key],
                    "run_id": self.run_id,
                    "from_status": old.status if old else None,
                    "to_status": row["status"],
                    "call_id": row["call_id"],
                    "error": row["error"],
                    "observed_at": now,
                }
            )
        _insert_many(conn, scheduled_call_status_changes, history)

    def _record_rejects(
        self,
        conn: Connection,
        page_number: int,
        rejects: Sequence[RejectedRecord],
        now: datetime,
    ) -> None:
        _insert_many(
            conn,
            rejected_records,
            (
                {
                    "run_id": self.run_id,
                    "batch_id": self.batch.batch_id,
                    "page": page_number,
                    "position": r.position,
                    "reason": r.reason,
                    "payload": r.payload,
                    "rejected_at": now,
                }
                for r in rejects
            ),
        )

    def _mark_removed(self, conn: Connection, now: datetime) -> int:
        c = scheduled_calls.c
        active = conn.execute(
            select(c.id).where(and_(c.batch_id == self.batch.batch_id, c.removed_at.is_(None)))
        ).scalars()
        gone = [call_id for call_id in active if call_id not in self._seen_ids]
        for start in range(0, len(gone), _KEY_CHUNK):
            conn.execute(
                update(scheduled_calls)
                .where(c.id.in_(gone[start : start + _KEY_CHUNK]))
                .values(removed_at=now)
            )
        return len(gone)


def _insert_many(conn: Connection, table: Any, rows: Iterable[dict[str, Any]]) -> None:
    batch = list(rows)
    if batch:
        conn.execute(insert(table), batch)
