"""Steering a running fake from outside its process: HTTP endpoints under /_fake/.

For a person trying the job by hand (`python -m etl.fake_api advance|vanish|state` posts
to them) and for anything else that cannot reach the FakeUltravox object. The prefix cannot
clash with the API, whose paths all start with /api/. Bodies are JSON; answers are JSON.

    POST /_fake/advance  {"fraction": 0.25}                one step of time for every batch
                         {"fraction": 0.25, "batch": ID}   ... for one batch
                         optional "seed": an integer (default: the fake's step counter)
                         -> {"changed": {"<batch id>": <scheduled calls changed>, ...}}
    POST /_fake/vanish   {"batch": ID}                     the batch is deleted
                         {"batch": ID, "calls": N}         N scheduled calls leave the middle
                                                           of the batch (with their Calls)
                         {"batch": ID, "callId": ID}       one created call is deleted, as a
                                                           retention policy does
                         -> {"vanished": {the same fields}}
    GET  /_fake/state    -> {"batches": [{"agentId", "batchId", "calls", "statuses",
                             "createdCalls", "billingPending", "endedAt", "order"}, ...]}

A step (FakeUltravox.advance) bills the calls the previous step created and moves about
`fraction` of each batch's calls one status further. Errors come as {"detail": "…"}: 400 for
a bad body, 404 for an unknown batch, call or endpoint, 405 for the wrong method.

These endpoints ask for no API key and bypass latency, faults and the request log: the fake
only listens on 127.0.0.1, and a test's fault plan must not be used up by its steering.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from etl.fake_api.wire import FakeResponse, dumps, error_response

if TYPE_CHECKING:
    from etl.fake_api.server import FakeUltravox

PREFIX = "/_fake/"

_Value = TypeVar("_Value")


class _BadRequest(ValueError):
    """A control request whose body does not say what to do; the message says why."""


def handle(fake: FakeUltravox, method: str, path: str, body: bytes | None) -> FakeResponse:
    """The answer to a request for `path` under PREFIX."""
    endpoint = _ENDPOINTS.get(path.removeprefix(PREFIX))
    if endpoint is None:
        names = ", ".join(PREFIX + name for name in _ENDPOINTS)
        return error_response(404, f"No control endpoint {path}; there are {names}.")
    allowed, action = endpoint
    if method != allowed:
        response = error_response(405, f'Method "{method}" not allowed.')
        response.headers.append(("Allow", allowed))
        return response
    try:
        return FakeResponse(200, dumps(action(fake, _params(body))))
    except _BadRequest as exc:
        return error_response(400, str(exc))
    except KeyError as exc:
        return error_response(404, f"Not found: {exc.args[0]}.")


def _params(body: bytes | None) -> dict[str, Any]:
    if body is None:
        raise _BadRequest("Send the body with a Content-Length.")
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except ValueError:
        raise _BadRequest("The body is not JSON.") from None
    if not isinstance(params, dict):
        raise _BadRequest("The body is not a JSON object.")
    return params


def _advance(fake: FakeUltravox, params: dict[str, Any]) -> dict[str, Any]:
    fraction = params.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise _BadRequest('"fraction" must be a number between 0 and 1.')
    if not 0 <= fraction <= 1:
        raise _BadRequest('"fraction" must be between 0 and 1.')
    batch_id = _optional(params, "batch", str)
    seed = _optional(params, "seed", int)
    batch_ids = None if batch_id is None else [batch_id]
    return {"changed": fake.advance_batches(fraction, batch_ids=batch_ids, seed=seed)}


def _vanish(fake: FakeUltravox, params: dict[str, Any]) -> dict[str, Any]:
    batch_id = _optional(params, "batch", str)
    if batch_id is None:
        raise _BadRequest('"batch" (a batch id) is required.')
    calls = _optional(params, "calls", int)
    call_id = _optional(params, "callId", str)
    if calls is not None and call_id is not None:
        raise _BadRequest('Give "calls" or "callId", not both.')
    if calls is not None:
        present = len(fake.batches[batch_id].calls)
        if not 1 <= calls <= present:
            raise _BadRequest(f'"calls" must be between 1 and {present}, the batch\'s calls.')
        for _ in range(calls):
            fake.drop_call(batch_id, len(fake.batches[batch_id].calls) // 2)
        return {"vanished": {"batch": batch_id, "calls": calls}}
    if call_id is not None:
        fake.remove_created_call(batch_id, call_id)
        return {"vanished": {"batch": batch_id, "callId": call_id}}
    fake.remove_batch(batch_id)
    return {"vanished": {"batch": batch_id}}


def _state(fake: FakeUltravox, params: dict[str, Any]) -> dict[str, Any]:
    return fake.describe()


def _optional(params: dict[str, Any], name: str, kind: type[_Value]) -> _Value | None:
    value = params.get(name)
    # bool is an int to Python, never to a person typing {"calls": true}.
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise _BadRequest(f'"{name}" must be {"a string" if kind is str else "an integer"}.')


_ENDPOINTS: dict[str, tuple[str, Callable[[FakeUltravox, dict[str, Any]], dict[str, Any]]]] = {
    "advance": ("POST", _advance),
    "vanish": ("POST", _vanish),
    "state": ("GET", _state),
}
