"""DRF cursor pagination as the Ultravox API does it: opaque cursors, `pageSize`, absolute
`next`/`previous` links that keep every other query parameter, and `total`."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from typing import TypeVar
from urllib.parse import parse_qs, urlencode

from etl.fake_api.wire import FakeResponse, error_response, page_body

_Item = TypeVar("_Item")
_CURSOR_OFFSET = re.compile(r"^[0-9]+$")


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o={offset}".encode("ascii")).decode("ascii")


def decode_cursor(token: str) -> int | None:
    """The offset in a cursor, or None if the cursor is not one of ours."""
    if token == "":
        # DRF decodes an empty cursor to position 0 rather than rejecting it.
        return 0
    try:
        raw = base64.b64decode(
            token + "=" * (-len(token) % 4), altchars=b"-_", validate=True
        ).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    values = parse_qs(raw, keep_blank_values=True).get("o", [""])
    if not _CURSOR_OFFSET.match(values[0]):
        return None
    return int(values[0])


def paginate(
    items: Sequence[_Item],
    encode: Callable[[_Item], bytes],
    *,
    query: list[tuple[str, str]],
    path: str,
    link_base: str,
    default_size: int,
    max_size: int,
) -> FakeResponse:
    """The page of `items` the request's `cursor` and `pageSize` ask for; `encode` renders
    one item as JSON text."""
    params = dict(query)
    offset = decode_cursor(params.get("cursor", ""))
    if offset is None:
        return error_response(404, "Invalid cursor")
    size = default_size
    raw_size = params.get("pageSize", "")
    # DRF's _positive_int(strict=True, cutoff=max): junk or <= 0 means the default.
    if raw_size.isdecimal() and raw_size.isascii() and int(raw_size) > 0:
        size = min(int(raw_size), max_size)

    def link(to: int) -> str:
        # Like DRF's replace_query_param: every original parameter kept, keys sorted.
        kept = [(k, v) for k, v in query if k != "cursor"] + [("cursor", encode_cursor(to))]
        return f"{link_base}{path}?{urlencode(sorted(kept))}"

    body = page_body(
        map(encode, items[offset : offset + size]),
        link(offset + size) if offset + size < len(items) else None,
        link(max(0, offset - size)) if offset > 0 else None,
        len(items),
    )
    return FakeResponse(200, body)
