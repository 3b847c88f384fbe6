"""The Ultravox resources this job reads, one function per endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

from etl.config import BatchRef
from etl.extract.client import UltravoxClient
from etl.extract.pagination import Page, iterate_pages


def batch_path(batch: BatchRef) -> str:
    agent, batch_id = quote(batch.agent_id, safe=""), quote(batch.batch_id, safe="")
    return f"/api/agents/{agent}/scheduled_batches/{batch_id}"


def scheduled_call_pages(
    client: UltravoxClient, batch: BatchRef, *, page_size: int
) -> Iterator[Page]:
    """Every page of `GET …/scheduled_batches/{batch_id}/scheduled_calls`, unfiltered."""
    return iterate_pages(
        client,
        f"{batch_path(batch)}/scheduled_calls",
        {"pageSize": page_size},
        where=f"batch {batch.batch_id}",
    )
