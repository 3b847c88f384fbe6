"""Faults a test queues for the fake's next matching requests: error statuses, resets,
bodies cut short, bodies that are not JSON, arbitrary payloads."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from etl.fake_api.wire import dumps

FaultKind = Literal["status", "reset", "truncate", "invalid_json", "payload"]


@dataclass
class Fault:
    """What to do instead of answering, for the next `remaining` matching requests."""

    kind: FaultKind
    remaining: int
    path_contains: str
    status: int = 200
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = "application/json"


def status_fault(
    status: int, times: int, path_contains: str, retry_after: str | None, body: bytes | None
) -> Fault:
    """An answer with `status`; without a `body`, DRF's error body for it."""
    content_type = "application/json"
    if body is None:
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            wait = f" Expected available in {retry_after} seconds." if retry_after else ""
            detail = f"Request was throttled.{wait}"
        else:
            try:
                detail = HTTPStatus(status).phrase
            except ValueError:
                detail = "Error"
        body = dumps({"detail": detail})
    else:
        try:
            json.loads(body)
        except ValueError:
            # Gateways answer 502/504 with HTML, not JSON.
            content_type = "text/html; charset=utf-8"
    return Fault("status", times, path_contains, status, retry_after, body, content_type)


def invalid_json_fault(times: int, path_contains: str) -> Fault:
    """200, application/json, with a body that is not JSON."""
    body = b'{"results":[{"status":"FUTURE","batchId":'
    return Fault("invalid_json", times, path_contains, body=body)


def payload_fault(payload: Any, times: int, path_contains: str) -> Fault:
    """200 with exactly this JSON payload."""
    return Fault("payload", times, path_contains, body=dumps(payload))


class FaultQueue:
    """Queued faults, first queued first; a request takes the first whose path matches."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def take(self, target: str) -> Fault | None:
        """The fault for a request to `target` (path and query), used up by one."""
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in target:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


def retry_after_date(seconds: float) -> str:
    """An HTTP-date `seconds` from now, for a `Retry-After` header in date form."""
    return email.utils.formatdate(time.time() + seconds, usegmt=True)
