"""scheduled_batches: what the job knows about each batch, and the questions a run asks of it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, func, select, update

from etl.config import BatchRef
from etl.load.dialect import upsert
from etl.load.schema import scheduled_batches, scheduled_calls
from etl.normalize import FINAL_STATUSES
from etl.normalize_batch import DETAIL_COLUMNS

b = scheduled_batches.c


def store_batch_details(
    engine: Engine, batch: BatchRef, details: Mapping[str, Any], now: datetime
) -> None:
    """Insert or update the batch's row with its own fields (see normalize_batch)."""
    row = {
        "batch_id": batch.batch_id,
        "agent_id": batch.agent_id,
        "first_seen_at": now,
        "details_synced_at": now,
        "removed_at": None,
        **details,
    }
    with engine.begin() as conn:
        stmt = upsert(
            scheduled_batches,
            conn.dialect.name,
            key=["batch_id"],
            update=[*DETAIL_COLUMNS, "details_synced_at", "removed_at"],
        )
        conn.execute(stmt, row)


def is_known(engine: Engine, batch_id: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(select(b.batch_id).where(b.batch_id == batch_id)).first()
    return found is not None


def mark_removed(engine: Engine, batch_ids: Iterable[str], now: datetime) -> list[str]:
    """Set removed_at on known batches that do not have it yet; return those marked."""
    ids = list(batch_ids)
    if not ids:
        return []
    with engine.begin() as conn:
        marked = conn.execute(
            update(scheduled_batches)
            .where(and_(b.batch_id.in_(ids), b.removed_at.is_(None)))
            .values(removed_at=now)
            .returning(b.batch_id)
        ).scalars()
        return list(marked)


def active_batches_of_agent(engine: Engine, agent_id: str) -> set[str]:
    """Batches of the agent the job knows and has not marked removed."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(b.batch_id).where(and_(b.agent_id == agent_id, b.removed_at.is_(None)))
        ).scalars()
        return set(rows)


def stored_calls_all_final(engine: Engine, batch_id: str, total_count: int) -> bool:
    """Whether the stored, not removed calls number `total_count` and are all final.

    A batch with no stored call counts only once a complete listing of it was stored: an
    ended, empty batch seen for the first time is listed once (which sets last_synced_at).
    """
    c = scheduled_calls.c
    with engine.connect() as conn:
        active = conn.execute(
            select(func.count()).where(and_(c.batch_id == batch_id, c.removed_at.is_(None)))
        ).scalar_one()
        not_final = conn.execute(
            select(func.count()).where(
                and_(
                    c.batch_id == batch_id,
                    c.removed_at.is_(None),
                    c.status.not_in(sorted(FINAL_STATUSES)),
                )
            )
        ).scalar_one()
        if active == 0:
            listed = conn.execute(
                select(b.last_synced_at).where(b.batch_id == batch_id)
            ).scalar_one_or_none()
            if listed is None:
                return False
    return bool(active == total_count and not_final == 0)
