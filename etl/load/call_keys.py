"""Call keys for filtered listings, matched against the calls already stored.

An unfiltered listing numbers identical definitions in listing order (normalize.CallKeys).
A listing filtered by status shows only some of them, in an order that changes as calls
change status, so its own order cannot tell two identical calls apart. Here each call is
matched to a stored row of the same definition instead: same callId first, then the same
state, then a row still waiting (FUTURE/PENDING) that this call has moved on from; a call
that matches none gets the next unused occurrence number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, select

from etl.config import BatchRef
from etl.load.schema import scheduled_calls
from etl.normalize import FINAL_STATUSES, definition_digest


@dataclass(frozen=True, slots=True)
class _StoredCall:
    call_key: str
    occurrence: int
    status: str
    call_id: str | None
    error: str | None


class StoredCallKeys:
    """Hands out call keys for the filtered listings of one batch in one run."""

    def __init__(self, engine: Engine, batch: BatchRef) -> None:
        self.engine = engine
        self.batch = batch
        self._stored: dict[str, list[_StoredCall]] = {}
        self._claimed: set[str] = set()
        self._highest: dict[str, int] = {}

    def next_key(self, record: Mapping[str, Any]) -> str:
        definition = definition_digest(record)
        candidates = [c for c in self._stored_for(definition) if c.call_key not in self._claimed]
        call_id = record.get("callId")
        call_id = call_id.lower() if isinstance(call_id, str) and call_id else None
        match = (
            next((c for c in candidates if call_id and c.call_id == call_id), None)
            or next(
                (
                    c
                    for c in candidates
                    if (c.status, c.call_id, c.error)
                    == (record.get("status"), call_id, record.get("error"))
                ),
                None,
            )
            or next((c for c in candidates if c.status not in FINAL_STATUSES), None)
        )
        if match is not None:
            self._claimed.add(match.call_key)
            return match.call_key
        occurrence = self._highest.get(definition, 0) + 1
        self._highest[definition] = occurrence
        key = f"{definition}#{occurrence}"
        self._claimed.add(key)
        return key

    def _stored_for(self, definition: str) -> list[_StoredCall]:
        if definition not in self._stored:
            c = scheduled_calls.c
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(c.call_key, c.status, c.call_id, c.error)
                    .where(
                        and_(
                            c.batch_id == self.batch.batch_id,
                            c.call_key.startswith(f"{definition}#", autoescape=True),
                        )
                    )
                    .order_by(c.id)
                ).all()
            stored = [
                _StoredCall(
                    row.call_key,
                    int(row.call_key.rpartition("#")[2]),
                    row.status,
                    row.call_id,
                    row.error,
                )
                for row in rows
            ]
            self._stored[definition] = stored
            self._highest[definition] = max((s.occurrence for s in stored), default=0)
        return self._stored[definition]
