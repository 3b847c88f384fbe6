"""Pure functions on JSON values as the API sends them: digests, secrets, storability.

- Digests are SHA-256 (32 hex digits) of canonical JSON (sorted keys, no whitespace, UTF-8),
  written by orjson where it can write the value (about ten times faster than the json
  module), else by the json module (integers beyond 64 bits, lone surrogates): which one is
  a function of the value alone, so a digest is deterministic.
- Secrets are removed by key before anything is stored, hashed or logged.
- A value is storable when every supported database keeps it exactly as sent; what is not
  (a number JSON cannot hold, nesting deeper than MariaDB's JSON allows) makes its record
  rejected, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

NUL_REPLACEMENT = "\ufffd"
_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")

MAX_RECORD_DEPTH = 32
"""Levels of nesting a record may have, itself included: each JSON column then holds at most
31, which MariaDB's JSON check accepts (it refuses 32). Deeper records are rejected."""


class RecordError(ValueError):
    """A record that does not fit the documented schema or cannot be stored faithfully."""


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record of a page that could not be loaded, kept for inspection."""

    position: int
    """0-based index of the record in its page."""
    reason: str
    payload: Any
    """The record as sent, secrets removed (None when it could not be read at all)."""


# -- canonical JSON and digests ---------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json_bytes(value: Any) -> bytes:
    """Canonical JSON as UTF-8: orjson where it can write the value, else the json module.

    orjson refuses integers beyond 64 bits and lone surrogates (the json module writes
    them); it writes floats in shortest round-trip form like the json module, only
    spelling exponents differently (1e-7, not 1e-07).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError
        return canonical_json(value).encode("utf-8", "surrogatepass")


def hex_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def digest(value: Any) -> str:
    return hex_digest(canonical_json_bytes(value))


# -- secrets ----------------------------------------------------------------------------------


def without_keys(value: Any, keys: Collection[str]) -> Any:
    """A copy of a JSON value without any object key in `keys`, at any depth."""
    if isinstance(value, dict):
        return {k: without_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without_keys(v, keys) for v in value]
    return value


def secrets_marked(value: Any, keys: Collection[str]) -> Any:
    """A copy of a JSON value with each value under a key in `keys`, at any depth, replaced
    by whether it was set: for digests, which must see a secret appear, never the secret."""
    if isinstance(value, dict):
        return {
            k: v not in (None, "") if k in keys else secrets_marked(v, keys)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [secrets_marked(v, keys) for v in value]
    return value


def needles(keys: Collection[str]) -> tuple[bytes, ...]:
    """How each key appears in canonical JSON: orjson escapes nothing in a plain word."""
    return tuple(orjson.dumps(k) for k in sorted(keys))


def may_hold(text: bytes, found: tuple[bytes, ...]) -> bool:
    """Whether canonical JSON text may hold one of the keys (`needles`): a fast, safe test
    (a string value equal to a key also says yes, which only costs the slow path)."""
    return any(needle in text for needle in found)


# -- what the databases cannot store ---------------------------------------------------------


def holds_nul(value: Any) -> bool:
    """Whether a JSON value has, in any string or key, a character no database column takes:
    U+0000 (PostgreSQL text and jsonb refuse it) or a lone surrogate (not UTF-8 at all)."""
    if isinstance(value, str):
        return _UNSTORABLE_CHARACTERS.search(value) is not None
    if isinstance(value, dict):
        return any(_UNSTORABLE_CHARACTERS.search(k) or holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_nul(v) for v in value)
    return False


def replace_nul(value: Any) -> Any:
    """The value with each such character replaced by U+FFFD, which every database stores."""
    if isinstance(value, str):
        return _UNSTORABLE_CHARACTERS.sub(NUL_REPLACEMENT, value)
    if isinstance(value, dict):
        return {
            _UNSTORABLE_CHARACTERS.sub(NUL_REPLACEMENT, k): replace_nul(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [replace_nul(v) for v in value]
    return value


def ascii_json(value: Any) -> str:
    """The value exactly, as ASCII JSON text: U+0000 is the escape \\u0000, a lone surrogate
    \\ud800 and so on, so json.loads() of it gives the value back."""
    return json.dumps(value, ensure_ascii=True, sort_keys=True)


def unstorable_reason(value: Any, *, lenient: bool = True) -> str | None:
    """Why a JSON value cannot be stored exactly on every database, or None if it can.

    `lenient=False` says the value was parsed strictly (orjson: see
    etl.extract.client.parse_json), which admits no NaN or infinity: then only its depth can
    be wrong, and a value with fewer objects and arrays in all than MAX_RECORD_DEPTH is not
    walked (counting them in its JSON text costs a fifth of the walk). The walk goes without
    recursion, so no nesting depth can exhaust the stack.
    """
    if not lenient and not _may_be_too_deep(value):
        return None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        elif isinstance(item, float) and not math.isfinite(item):
            return f"holds a number JSON cannot represent ({item!r}, e.g. 1e400 or NaN)"
        else:
            continue
        if depth >= MAX_RECORD_DEPTH and any(isinstance(c, dict | list) for c in children):
            return f"nested deeper than {MAX_RECORD_DEPTH} levels"
        stack.extend((child, depth + 1) for child in children)
    return None


def _may_be_too_deep(value: Any) -> bool:
    """False when the value holds too few objects and arrays to be nested too deep (a brace
    inside a string only makes this say True more often)."""
    try:
        text = orjson.dumps(value)
    except TypeError:  # beyond orjson (an integer beyond 64 bits): let the walk decide
        return True
    return text.count(b"{") + text.count(b"[") >= MAX_RECORD_DEPTH


def storable_payload(value: Any) -> Any:
    """A copy of a JSON value every database stores as JSON, for a rejected record's payload:
    U+0000 and lone surrogates become U+FFFD, NaN and infinities their names as strings, and
    a container at level MAX_RECORD_DEPTH a note saying so (the payload column, like every
    JSON column, then holds at most 31 levels)."""
    return _storable(value, 1)


def _storable(value: Any, depth: int) -> Any:
    if isinstance(value, dict | list) and depth >= MAX_RECORD_DEPTH:
        return f"(nested {MAX_RECORD_DEPTH} levels deep or deeper: not kept)"
    if isinstance(value, dict):
        return {
            _UNSTORABLE_CHARACTERS.sub(NUL_REPLACEMENT, k): _storable(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_storable(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _UNSTORABLE_CHARACTERS.sub(NUL_REPLACEMENT, value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


# -- key/value rows ---------------------------------------------------------------------------


def metadata_entries(
    metadata: Mapping[str, Any] | None, *, max_characters: int, max_bytes: int
) -> tuple[tuple[str, str], ...]:
    """Key/value rows of a metadata object; a value that is not a string is kept as its
    JSON text. A key too long to index gets no row (the metadata JSON keeps it)."""
    if not metadata:
        return ()
    return tuple(
        (key, value if isinstance(value, str) else canonical_json(value))
        for key, value in metadata.items()
        if len(key) <= max_characters
        and (
            len(key) * 4 <= max_bytes  # fast path: 4 bytes a character at most
            or len(key.encode("utf-8", "surrogatepass")) <= max_bytes
        )
    )
