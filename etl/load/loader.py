"""Loading one batch's scheduled calls: set-based upserts, one transaction per page.

Per page, the stored hashes of the page's call keys are read in one query; then only new and
changed calls are written, each table with one set-based statement (on PostgreSQL: COPY, and
for scheduled_calls COPY into a staging table and one INSERT … ON CONFLICT; on SQLite:
executemany). An unchanged call costs that comparison and nothing else: no UPDATE, no
delete-and-reinsert of its child rows.

- A call whose row differs (call_hash) or that was marked removed is upserted; `updated_at`
  moves only when the call's own columns changed (call_hash), not when only its child rows
  (detail_hash) were rewritten or it came back after a removal.
- A call whose child rows differ (detail_hash) gets them replaced in the same transaction.
- A history row (scheduled_call_status_changes) records the first sighting and every change
  of status, callId or error.

Calls are marked removed only by :meth:`BatchLoader.finish` after a complete listing, so a
listing that broke off (or a run that was killed) never marks anything removed.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, update

from etl.config import BatchRef
from etl.load.dialect import bulk, driver_errors_translated, json_text, upsert
from etl.load.schema import (
    rejected_records,
    scheduled_batches,
    scheduled_call_data_messages,
    scheduled_call_media,
    scheduled_call_metadata,
    scheduled_call_status_changes,
    scheduled_calls,
)
from etl.normalize import MEDIA_COLUMNS, NormalizedCall, RejectedRecord

Clock = Callable[[], datetime]

_CALL_COLUMNS = (
    "batch_id",
    "agent_id",
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
    "first_seen_at",
    "updated_at",
    "removed_at",
)
# What an upsert writes over an existing call; first_seen_at is never among them, and
# updated_at moves only when the call's own columns (call_hash) changed.
_CALL_SET = {
    **{
        column: f'excluded."{column}"'
        for column in (
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
            "removed_at",
        )
    },
    "updated_at": (
        "CASE WHEN scheduled_calls.call_hash = excluded.call_hash "
        "THEN scheduled_calls.updated_at ELSE excluded.updated_at END"
    ),
}
_STORED_COLUMNS = (
    "call_key",
    "id",
    "status",
    "call_id",
    "error",
    "call_hash",
    "detail_hash",
    "removed_at",
)
_JSON_MEDIA_COLUMNS = frozenset({"dtmf_handling", "additional_params", "extra"})
_MEDIA_JSON = tuple(column in _JSON_MEDIA_COLUMNS for column in MEDIA_COLUMNS)
_HISTORY_COLUMNS = (
    "scheduled_call_id",
    "run_id",
    "from_status",
    "to_status",
    "call_id",
    "error",
    "observed_at",
)


@dataclass(slots=True)
class PageCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0


# A stored call as _STORED_COLUMNS reads it: key, id, status, call_id, error, call_hash,
# detail_hash, removed_at.
_Stored = tuple[str, int, str, str | None, str | None, str, str, Any]


class BatchLoader:
    """Writes one listing of one batch into the database."""

    def __init__(self, engine: Engine, batch: BatchRef, run_id: int, clock: Clock) -> None:
        self.engine = engine
        self.batch = batch
        self.run_id = run_id
        self.clock = clock
        # Ids of the calls this listing holds, 8 bytes each: finish() marks the others removed.
        self._seen_ids = array("q")

    def load_page(
        self,
        page_number: int,
        calls: Sequence[NormalizedCall],
        rejects: Sequence[RejectedRecord] = (),
    ) -> PageCounts:
        """Upsert one page's calls and record its rejects, in one transaction."""
        counts = PageCounts(rejected=len(rejects))
        now = self.clock()
        with self.engine.begin() as conn, driver_errors_translated(conn):
            self._ensure_batch_row(conn, now)
            db = bulk(conn)
            stored: dict[str, _Stored] = {
                row[0]: row
                for row in db.select_by_keys(
                    scheduled_calls,
                    _STORED_COLUMNS,
                    {"batch_id": self.batch.batch_id},
                    "call_key",
                    [c.call_key for c in calls],
                )
            }
            to_write: list[NormalizedCall] = []
            seen = self._seen_ids
            for call in calls:
                old = stored.get(call.call_key)
                if old is None:
                    counts.inserted += 1
                    to_write.append(call)
                elif old[5] != call.call_hash or old[6] != call.detail_hash or old[7] is not None:
                    counts.updated += 1
                    to_write.append(call)
                else:
                    counts.unchanged += 1
                    seen.append(old[1])
            if to_write:
                ts = db.timestamp(now)
                ids = self._upsert_calls(db, to_write, ts)
                seen.extend(ids.values())
                self._replace_details(db, to_write, stored, ids)
                self._record_changes(db, to_write, stored, ids, ts)
            if rejects:
                self._record_rejects(conn, page_number, rejects, now)
        return counts

    def finish(self, *, complete: bool) -> int:
        """Close the listing; after a complete one, mark calls it did not contain as removed.

        Returns how many calls were newly marked removed.
        """
        now = self.clock()
        removed = 0
        with self.engine.begin() as conn, driver_errors_translated(conn):
            self._ensure_batch_row(conn, now)
            if complete:
                db = bulk(conn)
                removed = db.update_absent(
                    scheduled_calls,
                    {"removed_at": db.timestamp(now)},
                    {"batch_id": self.batch.batch_id},
                    null_column="removed_at",
                    id_column="id",
                    present=self._seen_ids,
                )
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

    def _upsert_calls(self, db: Any, calls: Sequence[NormalizedCall], ts: Any) -> dict[str, int]:
        """Insert or update the calls; return their ids by call key."""
        rows = []
        for call in calls:
            c = call.call
            rows.append(
                (
                    c["batch_id"],
                    c["agent_id"],
                    c["call_key"],
                    c["call_id"],
                    c["status"],
                    c["error"],
                    c["medium_type"],
                    json_text(c["metadata"]),
                    json_text(c["template_context"]),
                    json_text(c["experimental_settings"]),
                    c["nul_escaped_record"],
                    call.call_hash,
                    call.detail_hash,
                    ts,
                    ts,
                    None,
                )
            )
        returned = db.upsert_returning(
            scheduled_calls,
            _CALL_COLUMNS,
            rows,
            key=("batch_id", "call_key"),
            set_=_CALL_SET,
            returning=("call_key", "id"),
        )
        return {key: call_id for key, call_id in returned}

    def _replace_details(
        self,
        db: Any,
        calls: Sequence[NormalizedCall],
        stored: dict[str, _Stored],
        ids: dict[str, int],
    ) -> None:
        """Rewrite the child rows of calls whose details are new or differ."""
        changed = []
        stale = []
        for call in calls:
            old = stored.get(call.call_key)
            if old is None:
                changed.append(call)
            elif old[6] != call.detail_hash:
                changed.append(call)
                stale.append(ids[call.call_key])
        if not changed:
            return
        for table in (scheduled_call_media, scheduled_call_data_messages, scheduled_call_metadata):
            db.delete_in(table, "scheduled_call_id", stale)
        db.insert(
            scheduled_call_media,
            ("scheduled_call_id", *MEDIA_COLUMNS),
            (
                (
                    ids[c.call_key],
                    *[
                        json_text(c.media[column]) if is_json else c.media[column]
                        for column, is_json in zip(MEDIA_COLUMNS, _MEDIA_JSON, strict=True)
                    ],
                )
                for c in changed
            ),
        )
        flags = [
            (ids[c.call_key], message, enabled)
            for c in changed
            for message, enabled in c.data_messages
        ]
        if flags:
            db.insert(
                scheduled_call_data_messages, ("scheduled_call_id", "message", "enabled"), flags
            )
        entries = [
            (ids[c.call_key], key, value) for c in changed for key, value in c.metadata_entries
        ]
        if entries:
            db.insert(scheduled_call_metadata, ("scheduled_call_id", "key", "value"), entries)

    def _record_changes(
        self,
        db: Any,
        calls: Sequence[NormalizedCall],
        stored: dict[str, _Stored],
        ids: dict[str, int],
        ts: Any,
    ) -> None:
        """One history row per first sighting and per change of status, callId or error."""
        history = []
        for call in calls:
            row = call.call
            status, call_id, error = row["status"], row["call_id"], row["error"]
            old = stored.get(call.call_key)
            if old is not None and (old[2], old[3], old[4]) == (status, call_id, error):
                continue
            history.append(
                (
                    ids[call.call_key],
                    self.run_id,
                    old[2] if old is not None else None,
                    status,
                    call_id,
                    error,
                    ts,
                )
            )
        if history:
            db.insert(scheduled_call_status_changes, _HISTORY_COLUMNS, history)

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


def _insert_many(conn: Connection, table: Any, rows: Iterable[dict[str, Any]]) -> None:
    batch = list(rows)
    if batch:
        conn.execute(insert(table), batch)
