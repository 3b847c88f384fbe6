"""The Ultravox endpoints this job reads, by path."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

from etl.config import BatchRef
from etl.extract.client import MalformedResponse, UltravoxClient
from etl.extract.pagination import Page, iterate_pages


def agent_path(agent_id: str) -> str:
    return f"/api/agents/{quote(agent_id, safe='')}/scheduled_batches"


def batch_path(batch: BatchRef) -> str:
    return f"{agent_path(batch.agent_id)}/{quote(batch.batch_id, safe='')}"


def batch_listing_pages(
    client: UltravoxClient,
    batch: BatchRef,
    path: str,
    params: Mapping[str, str],
    *,
    page_size: int,
    where: str,
) -> Iterator[Page]:
    """Every page of `GET …/scheduled_batches/{batch_id}/{path}` with these query params."""
    return iterate_pages(
        client, f"{batch_path(batch)}/{path}", {"pageSize": page_size, **params}, where=where
    )


def batch_details(client: UltravoxClient, batch: BatchRef) -> dict[str, Any]:
    """`GET …/scheduled_batches/{batch_id}`: the batch's own fields."""
    body = client.get_json(batch_path(batch))
    if not isinstance(body, dict):
        raise MalformedResponse(f"batch {batch.batch_id}: details are not a JSON object")
    return body


def agent_batch_pages(client: UltravoxClient, agent_id: str, *, page_size: int) -> Iterator[Page]:
    """Every page of `GET /api/agents/{agent_id}/scheduled_batches`."""
    return iterate_pages(
        client, agent_path(agent_id), {"pageSize": page_size}, where=f"agent {agent_id}"
    )
