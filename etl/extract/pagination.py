"""Cursor pagination as Ultravox serves it (Django REST framework's CursorPagination).

Each page is `{"results": [...], "next": url|null, "previous": url|null, "total": int}`.
Only the `cursor` of a `next` link is used; the request always goes to the configured base
URL, so a link pointing elsewhere can never receive the API key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from etl.extract.client import MalformedResponse, UltravoxClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing, checked for shape."""

    number: int
    """1-based position of the page in the listing."""
    results: list[Any]
    total: int | None
    """The API's count of the whole (filtered) listing, as of this page."""
    cursor: str | None
    """The cursor this page was requested with; None for the first page."""
    is_last: bool
    lenient: bool = True
    """Whether the page may hold what a database cannot store as it is (see ApiResponse)."""
    digest: bytes = field(default=b"", compare=False)
    """A digest of the page's bytes as they came (see ApiResponse). Pages compare by what
    they say, not by how it was spelled."""


class RepeatedCursor(MalformedResponse):
    """The API handed back a cursor already followed in this listing."""


def cursor_from_next(next_url: str, *, expected_host: str, where: str) -> str:
    """The `cursor` query value of a `next` link."""
    parts = urlsplit(next_url)
    if parts.netloc and parts.netloc != expected_host:
        log.warning(
            "%s: next link points to host %r, not the configured %r; "
            "only its cursor is used, against the configured host",
            where,
            parts.netloc,
            expected_host,
        )
    values = parse_qs(parts.query).get("cursor")
    if not values or not values[0]:
        raise MalformedResponse(f"{where}: next link has no cursor")
    return values[0]


def check_page(
    body: Any,
    *,
    number: int,
    cursor: str | None,
    where: str,
    lenient: bool = True,
    digest: bytes = b"",
) -> tuple[Page, Any]:
    """Validate a page body; return the Page and its raw `next` value."""
    if not isinstance(body, dict):
        raise MalformedResponse(f"{where}: page {number} is not a JSON object")
    results = body.get("results")
    if not isinstance(results, list):
        raise MalformedResponse(f"{where}: page {number} has no 'results' array")
    next_url = body.get("next")
    if next_url is not None and not isinstance(next_url, str):
        raise MalformedResponse(f"{where}: page {number} has a 'next' that is not a string")
    total = body.get("total")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        raise MalformedResponse(f"{where}: page {number} has an invalid 'total': {total!r}")
    page = Page(
        number=number,
        results=results,
        total=total,
        cursor=cursor,
        is_last=not next_url,
        lenient=lenient,
        digest=digest,
    )
    return page, next_url


def iterate_pages(
    client: UltravoxClient,
    path: str,
    params: Mapping[str, str | int],
    *,
    where: str,
) -> Iterator[Page]:
    """Yield every page of a cursor-paginated listing, first to last.

    Raises RepeatedCursor instead of looping when the API returns a cursor twice.
    """
    seen: set[str] = set()
    cursor: str | None = None
    number = 1
    while True:
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        response = client.fetch(path, query)
        page, next_url = check_page(
            response.body,
            number=number,
            cursor=cursor,
            where=where,
            lenient=response.lenient,
            digest=response.digest,
        )
        log.debug("%s: page %d with %d results", where, number, len(page.results))
        yield page
        if not next_url:
            return
        cursor = cursor_from_next(next_url, expected_host=client.host, where=where)
        if cursor in seen:
            raise RepeatedCursor(
                f"{where}: the API returned a cursor already followed (after page {number}); "
                "stopped instead of looping"
            )
        seen.add(cursor)
        number += 1
