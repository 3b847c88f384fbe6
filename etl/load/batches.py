"""scheduled_batches: what the job knows about each batch, and the questions a run asks of it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select, update

from etl.config import BatchRef
from etl.load.backends import backend_for
from etl.load.schema import scheduled_batches
from etl.normalize.batches import DETAIL_COLUMNS

b = scheduled_batches.c


def store_batch_details(
    conn: Connection, batch: BatchRef, details: Mapping[str, Any], now: datetime
) -> None:
    """Insert or update the batch's row with its own fields (see etl.normalize.batches)."""
    row = {
        "batch_id": batch.batch_id,
        "agent_id": batch.agent_id,
        "first_seen_at": now,
        "details_synced_at": now,
        "removed_at": None,
        **details,
    }
    stmt = backend_for(conn).upsert(
        scheduled_batches,
        key=["batch_id"],
        update=[*DETAIL_COLUMNS, "details_synced_at", "removed_at"],
    )
    conn.execute(stmt, row)


def is_known(conn: Connection, batch_id: str) -> bool:
    found = conn.execute(select(b.batch_id).where(b.batch_id == batch_id)).first()
    return found is not None


def mark_removed(conn: Connection, batch_ids: Iterable[str], now: datetime) -> list[str]:
    """Set removed_at on known batches that do not have it yet; return those marked."""
    ids = sorted(set(batch_ids))
    if not ids:
        return []
    marked = list(
        conn.execute(
            select(b.batch_id).where(and_(b.batch_id.in_(ids), b.removed_at.is_(None)))
        ).scalars()
    )
    if marked:
        conn.execute(update(scheduled_batches).where(b.batch_id.in_(marked)).values(removed_at=now))
    return marked


def active_batches_of_agent(conn: Connection, agent_id: str) -> set[str]:
    """Batches of the agent the job knows and has not marked removed."""
    rows = conn.execute(
        select(b.batch_id).where(and_(b.agent_id == agent_id, b.removed_at.is_(None)))
    ).scalars()
    return set(rows)
