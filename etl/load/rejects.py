"""rejected_records: the records of a page that could not be loaded, with the reason.

Each is kept as the API sent it, secrets removed and made storable (see
etl.normalize.json_values.storable_payload), in the transaction of its page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, insert

from etl.load.schema import rejected_records
from etl.normalize.json_values import RejectedRecord, storable_payload
from etl.streams import BatchContext


class RejectCollector:
    """Collects one page's rejected records, then writes them with the page."""

    def __init__(
        self,
        context: BatchContext,
        stream: str,
        page_number: int,
        without_secrets: Callable[[Any], Any],
    ) -> None:
        self.context = context
        self.stream = stream
        self.page_number = page_number
        self.without_secrets = without_secrets
        self.rejected: list[RejectedRecord] = []

    def add(self, position: int, reason: str, record: Any) -> None:
        payload = storable_payload(self.without_secrets(record))
        self.rejected.append(RejectedRecord(position, reason, payload))

    def write(self, conn: Connection) -> list[RejectedRecord]:
        """Insert the collected records (in the caller's transaction); return them."""
        if self.rejected:
            now = self.context.clock()
            conn.execute(
                insert(rejected_records),
                [
                    {
                        "run_id": self.context.run_id,
                        "batch_id": self.context.batch.batch_id,
                        "stream": self.stream,
                        "page": self.page_number,
                        "position": r.position,
                        "reason": r.reason,
                        "payload": r.payload,
                        "rejected_at": now,
                    }
                    for r in self.rejected
                ],
            )
        return self.rejected
