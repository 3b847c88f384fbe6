"""A faithful fake of the Ultravox scheduled-batch API, served over real HTTP on localhost.

Stdlib only. Used by the test-suite, the demo command and the benchmark::

    with FakeUltravox(api_key="k") as fake:
        batch = fake.add_batch("agent-1")
        ...  # point the ETL at fake.base_url

Run ``python -m etl.fake_api --port 8765 --batches 3 --calls 1000`` to serve generated
batches until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import email.utils
import gc
import json
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, cast
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit

__all__ = [
    "ALL_MEDIUM_KEYS",
    "STATUSES",
    "FakeBatch",
    "FakeUltravox",
    "RecordedRequest",
    "generate_calls",
    "main",
    "retry_after_date",
]

ALL_MEDIUM_KEYS = ("webRtc", "twilio", "serverWebSocket", "telnyx", "plivo", "exotel", "sip")
STATUSES = ("FUTURE", "PENDING", "SUCCESS", "EXPIRED", "ERROR")
_OPEN_STATUSES = frozenset({"FUTURE", "PENDING"})


def _iso_now() -> str:
    # DRF renders datetimes with microseconds and a 'Z' suffix.
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def retry_after_date(seconds: float) -> str:
    """An HTTP-date `seconds` from now, for a `Retry-After` header in date form."""
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@dataclass
class FakeBatch:
    """One scheduled call batch and its calls, as the fake serves them."""

    agent_id: str
    batch_id: str
    calls: list[dict[str, Any]]
    created: str
    window_start: str | None = None
    window_end: str | None = None
    throttle: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    paused: bool = False
    ended_at: str | None = None

    def as_api(self) -> dict[str, Any]:
        """The ScheduledCallBatch JSON object (without the write-only `calls`)."""
        completed = sum(1 for c in self.calls if c.get("status") not in _OPEN_STATUSES)
        return {
            "batchId": self.batch_id,
            "created": self.created,
            "windowStart": self.window_start,
            "windowEnd": self.window_end,
            "throttle": self.throttle,
            "webhookUrl": self.webhook_url,
            "webhookSecret": self.webhook_secret,
            "paused": self.paused,
            "totalCount": len(self.calls),
            "completedCount": completed,
            "endedAt": self.ended_at,
        }


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the fake received it. Header names are lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        return self.headers.get(name.lower())


_FaultKind = Literal["status", "reset", "truncate", "invalid_json", "payload"]


@dataclass
class _Fault:
    kind: _FaultKind
    remaining: int
    path_contains: str
    status: int = 200
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class _Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


def _error(status: int, detail: str) -> _Response:
    return _Response(status, _dumps({"detail": detail}))


_ROUTE = re.compile(
    r"^/api/agents/(?P<agent>[^/]+)/scheduled_batches"
    r"(?:/(?P<batch>[^/]+)(?P<calls>/scheduled_calls)?)?$"
)
_CURSOR_OFFSET = re.compile(r"^[0-9]+$")


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o={offset}".encode("ascii")).decode("ascii")


def _decode_cursor(token: str) -> int | None:
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


class FakeUltravox:
    """The fake API server; mutate its state freely between (or during) requests."""

    def __init__(
        self,
        api_key: str = "fake-api-key",
        *,
        latency_seconds: float = 0.0,
        max_page_size: int = 1000,
        default_page_size: int = 100,
    ) -> None:
        self.api_key = api_key
        self.latency_seconds = latency_seconds
        self.max_page_size = max_page_size
        self.default_page_size = default_page_size
        self.batches: dict[str, FakeBatch] = {}
        self.requests: list[RecordedRequest] = []
        self.next_link_base: str | None = None
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._open_connections: set[socket.socket] = set()
        self._connections_opened = 0

    # -- state -------------------------------------------------------------------------------

    def add_batch(
        self,
        agent_id: str,
        batch_id: str | None = None,
        calls: list[dict[str, Any]] | None = None,
        **fields: Any,
    ) -> FakeBatch:
        """Add (or replace) a batch; `fields` are FakeBatch fields such as `window_end`."""
        batch_id = batch_id if batch_id is not None else str(uuid.uuid4())
        if calls is None:
            calls = generate_calls(batch_id, 25)
        fields.setdefault("created", _iso_now())
        # The real API requires a webhook for non-outgoing media and picks a secret if unset.
        fields.setdefault("webhook_url", f"https://hooks.example.com/ultravox/{batch_id}")
        fields.setdefault("webhook_secret", f"whsec_{uuid.uuid4().hex}")
        batch = FakeBatch(agent_id=agent_id, batch_id=batch_id, calls=calls, **fields)
        with self._lock:
            self.batches[batch_id] = batch
        return batch

    def remove_batch(self, batch_id: str) -> None:
        """Delete a batch (as if deleted through the API). KeyError if unknown."""
        with self._lock:
            del self.batches[batch_id]

    def set_call(
        self,
        batch_id: str,
        index: int,
        *,
        status: str,
        call_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Set one call's status, callId and error."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            calls = self.batches[batch_id].calls
            # Copy-on-write: a page being serialized on another thread keeps the old object.
            updated = dict(calls[index])
            updated.update(status=status, callId=call_id, error=error)
            calls[index] = updated

    def advance(self, batch_id: str, fraction: float, *, seed: int = 0) -> int:
        """Move about `fraction` of the calls one step along FUTURE -> PENDING -> SUCCESS.

        A few FUTURE calls expire and a few PENDING ones fail instead. Returns how many
        calls changed; deterministic for a given state and seed.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be between 0 and 1")
        rng = random.Random(f"{batch_id}|advance|{seed}")
        with self._lock:
            batch = self.batches[batch_id]
            calls = batch.calls
            movable = [i for i, c in enumerate(calls) if c.get("status") in _OPEN_STATUSES]
            count = min(len(movable), round(fraction * len(calls)))
            for i in sorted(rng.sample(movable, count)):
                call = dict(calls[i])
                if call["status"] == "FUTURE":
                    if rng.random() < 0.05:
                        call.update(status="EXPIRED", callId=None, error=None)
                    else:
                        call.update(status="PENDING", callId=None, error=None)
                elif rng.random() < 0.08:
                    call_id = _uuid(rng) if rng.random() < 0.5 else None
                    call.update(status="ERROR", callId=call_id, error=rng.choice(_ERRORS))
                else:
                    call.update(status="SUCCESS", callId=_uuid(rng), error=None)
                calls[i] = call
            if (
                count
                and batch.ended_at is None
                and all(c.get("status") not in _OPEN_STATUSES for c in calls)
            ):
                batch.ended_at = _iso_now()
        return count

    # -- faults ------------------------------------------------------------------------------

    def _queue(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        path_contains: str = "",
        retry_after: str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next `times` matching requests with `status`.

        A request matches if its target (path and query) contains `path_contains`; faults
        apply after the API key check, first queued first.
        """
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
            body = _dumps({"detail": detail})
        else:
            try:
                json.loads(body)
            except ValueError:
                # Gateways answer 502/504 with HTML, not JSON.
                content_type = "text/html; charset=utf-8"
        self._queue(_Fault("status", times, path_contains, status, retry_after, body, content_type))

    def inject_connection_reset(self, *, times: int = 1, path_contains: str = "") -> None:
        """Close the connection (with a TCP reset) without any response."""
        self._queue(_Fault("reset", times, path_contains))

    def inject_truncated_body(self, *, times: int = 1, path_contains: str = "") -> None:
        """Answer 200 with half of the real body under the full Content-Length, then close."""
        self._queue(_Fault("truncate", times, path_contains))

    def inject_invalid_json(self, *, times: int = 1, path_contains: str = "") -> None:
        """Answer 200, application/json, with a body that is not JSON."""
        body = b'{"results":[{"status":"FUTURE","batchId":'
        self._queue(_Fault("invalid_json", times, path_contains, body=body))

    def inject_payload(self, payload: Any, *, times: int = 1, path_contains: str = "") -> None:
        """Answer 200 with exactly this JSON payload."""
        self._queue(_Fault("payload", times, path_contains, body=_dumps(payload)))

    def clear_faults(self) -> None:
        """Drop every fault not yet used."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, target: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in target:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- server ------------------------------------------------------------------------------

    def start(self, *, port: int = 0) -> str:
        """Serve on 127.0.0.1 (`port` 0: a free one) in a daemon thread; returns base_url."""
        if self._server is not None:
            raise RuntimeError("already started")
        server = _Server(("127.0.0.1", port), self)
        host, bound_port = server.server_address[:2]
        self._base_url = f"http://{host!s}:{bound_port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self._base_url

    def stop(self) -> None:
        """Stop serving and drop every open keep-alive connection."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Idle keep-alive connections would otherwise go on being served after stop().
        with self._lock:
            connections = list(self._open_connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def base_url(self) -> str:
        """scheme://host:port of the running (or last run) server."""
        if self._base_url is None:
            raise RuntimeError("not started")
        return self._base_url

    @property
    def connections_opened(self) -> int:
        """How many TCP connections the server has accepted so far."""
        return self._connections_opened

    def __enter__(self) -> FakeUltravox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections_opened += 1
            self._open_connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._open_connections.discard(conn)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- API ---------------------------------------------------------------------------------

    def _route(self, path: str, query: list[tuple[str, str]], link_base: str) -> _Response:
        match = _ROUTE.match(path)
        if match is None:
            return _error(404, "Not found.")
        agent_id = unquote(match["agent"])
        params = dict(query)
        with self._lock:
            if match["batch"] is None:
                batches = [b for b in self.batches.values() if b.agent_id == agent_id]
                return self._page(batches, params, path, query, link_base, FakeBatch.as_api)
            batch = self.batches.get(unquote(match["batch"]))
            if batch is None or batch.agent_id != agent_id:
                return _error(404, "Not found.")
            if match["calls"] is None:
                return _Response(200, _dumps(batch.as_api()))
            calls = batch.calls
        status = params.get("status", "")
        # django-filter ignores an empty value but rejects anything outside the enum.
        if status and status not in STATUSES:
            message = f"Select a valid choice. {status} is not one of the available choices."
            return _Response(400, _dumps({"status": [message]}))
        if status:
            calls = [c for c in calls if c.get("status") == status]
        return self._page(calls, params, path, query, link_base, None)

    def _page(
        self,
        items: list[Any],
        params: dict[str, str],
        path: str,
        query: list[tuple[str, str]],
        link_base: str,
        render: Callable[[Any], dict[str, Any]] | None,
    ) -> _Response:
        offset = _decode_cursor(params.get("cursor", ""))
        if offset is None:
            return _error(404, "Invalid cursor")
        size = self.default_page_size
        raw_size = params.get("pageSize", "")
        # DRF's _positive_int(strict=True, cutoff=max): junk or <= 0 means the default.
        if raw_size.isdecimal() and raw_size.isascii() and int(raw_size) > 0:
            size = min(int(raw_size), self.max_page_size)
        page = items[offset : offset + size]
        results = [render(item) for item in page] if render is not None else page

        def link(to: int) -> str:
            # Like DRF's replace_query_param: every original parameter kept, keys sorted.
            kept = [(k, v) for k, v in query if k != "cursor"] + [("cursor", _encode_cursor(to))]
            return f"{link_base}{path}?{urlencode(sorted(kept))}"

        body = {
            "results": results,
            "next": link(offset + size) if offset + size < len(items) else None,
            "previous": link(max(0, offset - size)) if offset > 0 else None,
            "total": len(items),
        }
        return _Response(200, _dumps(body))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeUltravox) -> None:
        self.fake = fake
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients' connection pools get reused
    server_version = "FakeUltravox/1.0"
    sys_version = ""
    # Headers and body go out in separate writes; Nagle + delayed ACK would add ~40 ms each.
    disable_nagle_algorithm = True
    timeout = 60  # reap idle keep-alive connections eventually

    @property
    def fake(self) -> FakeUltravox:
        return cast(_Server, self.server).fake

    def setup(self) -> None:
        super().setup()
        self.fake._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the default writes a line to stderr per request

    def _dispatch(self) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        query = parse_qsl(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake._record(
            RecordedRequest(self.command, split.path, dict(query), headers, time.monotonic())
        )
        self._discard_request_body()
        if fake.latency_seconds > 0:
            time.sleep(fake.latency_seconds)

        if headers.get("x-api-key") != fake.api_key:
            self._send(_error(401, "Invalid API key."))
            return
        fault = fake._take_fault(self.path)
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind != "truncate":
            headers_out = [("Retry-After", fault.retry_after)] if fault.retry_after else []
            self._send(_Response(fault.status, fault.body, headers_out, fault.content_type))
            return
        if self.command != "GET":
            response = _error(405, f'Method "{self.command}" not allowed.')
            response.headers.append(("Allow", "GET"))
            self._send(response)
            return

        link_base = (fake.next_link_base or self._own_base()).rstrip("/")
        response = fake._route(split.path, query, link_base)
        if fault is not None:  # truncate
            self._send_truncated(response.body)
        else:
            self._send(response)

    # The names http.server dispatches to; every method goes through auth and faults first.
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch  # noqa: N815

    def _own_base(self) -> str:
        # DRF builds absolute links from the Host header the client sent.
        host = self.headers.get("Host")
        return f"http://{host}" if host else self.fake.base_url

    def _discard_request_body(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length and not length.isdecimal()):
            self.close_connection = True  # cannot find the next request in this stream
        elif length:
            self.rfile.read(int(length))

    def _head(self, response: _Response, content_length: int) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(content_length))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()

    def _send(self, response: _Response) -> None:
        self._head(response, len(response.body))
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _send_truncated(self, body: bytes) -> None:
        self._head(_Response(200, body), len(body) + 1)
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER 0: closing sends RST instead of an orderly FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True


# -- generated data --------------------------------------------------------------------------

_ABSENT: Any = object()  # a key left out of the object, as opposed to null

_ERRORS = (
    "Twilio error 21215: Geo Permission configuration is not permitting call",
    "SIP 486 Busy Here",
    "Call creation failed: 'to' is not a valid phone number",
    "Webhook https://hooks.example.com returned HTTP 500",
    "Telnyx error 90018: Call has already ended",
)

_LONG_NOTE = (
    "Customer asked to be called back after the renewal notice; prefers mornings. "
    "Mentioned a billing dispute from last quarter that support already resolved. "
) * 4  # ~630 characters: longer than any varchar(255) a loader might pick


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _phone(rng: random.Random) -> str:
    # 555-01xx numbers are reserved for fiction, so nothing real is ever dialled.
    return f"+1{rng.choice(('415', '212', '646', '312'))}55501{rng.randrange(100):02d}"


def _data_messages(rng: random.Random) -> dict[str, bool]:
    return {
        "pong": True,
        "state": True,
        "transcript": True,
        "clientToolInvocation": rng.random() < 0.7,
        "dataConnectionToolInvocation": False,
        "playbackClearBuffer": rng.random() < 0.5,
        "callStarted": True,
        "debug": False,
        "callEvent": rng.random() < 0.3,
        "toolUsed": True,
        # Newer than the documented list, present in the current schema.
        "userStartedSpeaking": True,
        "userStoppedSpeaking": rng.random() < 0.8,
        "invokingTool": True,
    }


def _dtmf() -> dict[str, Any]:
    return {
        "ignore": False,
        "userTextMessage": {"text": "pressed {digits}", "urgency": "URGENCY_SOON"},
    }


def _medium(case: int, rng: random.Random, k: int) -> Any:
    """One of the 15 medium shapes; _ABSENT means no `medium` key at all."""
    if case == 0:
        return {"webRtc": {"dataMessages": _data_messages(rng)}}
    if case == 1:
        outgoing = {"to": _phone(rng), "from": "+14155550100", "additionalParams": {"record": True}}
        return {"twilio": {"outgoing": outgoing}}
    if case == 2:
        rate = rng.choice((16000, 48000))
        return {
            "serverWebSocket": {
                "inputSampleRate": rate,
                "outputSampleRate": rng.choice((rate, 24000)),
                "clientBufferSizeMs": rng.choice((60, 30000)),
                "mediaIdleTimeout": "30s",
                "dataMessages": _data_messages(rng),
            }
        }
    if case == 3:
        return {"telnyx": {"outgoing": {"to": _phone(rng), "from": "+12125550100"}}}
    if case == 4:
        outgoing = {
            "to": f"{_phone(rng)}<{_phone(rng)}",  # Plivo dials several numbers split by '<'
            "from": "+13125550100",
            "additionalParams": {"ring_timeout": 45},
        }
        return {"plivo": {"outgoing": outgoing}}
    if case == 5:
        return {"exotel": {}}
    if case == 6:
        sip_outgoing = {
            "to": "sip:alice@example.com",
            "from": "sip:ultravox@pbx.example.com",
            "username": f"agent{k % 100:02d}",
            "password": f"s3cr3t-sip-pw-{k}",
        }
        return {"sip": {"outgoing": sip_outgoing}}
    if case == 7:
        return _ABSENT
    if case == 8:
        return {"webRtc": {}}
    if case == 9:
        outgoing = {"to": _phone(rng), "from": "+14155550100", "additionalParams": {}}
        return {"twilio": {"outgoing": outgoing, "dtmfHandling": _dtmf()}}
    if case == 10:
        return {"sip": {"incoming": {}}}
    if case == 11:
        return None
    if case == 12:
        return {"exotel": {"dtmfHandling": _dtmf()}}
    if case == 13:
        # A medium newer than the schema: the ETL must keep it, not drop it.
        return {
            "vonage": {"outgoing": {"to": f"+44770090{rng.randrange(1000):04d}", "region": "eu"}}
        }
    # A known medium carrying a field newer than the schema.
    outgoing = {"to": _phone(rng), "from": "+14155550100", "machineDetection": "Enable"}
    return {"twilio": {"outgoing": outgoing}}


_MEDIUM_CASES = 15


def _metadata(case: int, k: int) -> Any:
    if case == 0:
        return None
    if case == 1:
        return {}
    if case == 2:
        return {"customerId": f"cust-{k:06d}", "campaign": "spring-2025"}
    if case == 3:
        return {"名前": "Zoë 🚀", "campaign": "spring-ü", "note": "naïve café — “quoted”"}
    if case == 4:
        return {"customerId": f"cust-{k:06d}", "notes": _LONG_NOTE}
    return {"quote": 'He said "hi"\nthen left\t', "empty": "", "a.b": "dotted/key"}


_METADATA_CASES = 6


def _template_context(case: int, k: int) -> Any:
    if case == 0:
        return None
    if case == 1:
        return {}
    if case == 2:
        return {
            "customer": {"name": "Ada", "tier": "gold", "tags": ["vip", "early"]},
            "appointment": {"date": "2025-05-01", "slots": [9, 10.5, None]},
            "attempt": k % 3 + 1,
            "optIn": True,
        }
    if case == 3:
        return {"greeting": "¡Hola, José! 👋", "langs": ["es", "中文"], "emptyList": []}
    # 2**53 + 1 is not representable as a double: a precision trap for sloppy JSON handling.
    return {"a": {"b": {"c": {"d": [1, {"e": "f"}]}}}, "big": 9007199254740993, "ratio": 0.1}


_TEMPLATE_CASES = 5


def _experimental(case: int) -> Any:
    if case < 3:
        return _ABSENT
    if case < 6:
        return None
    return {"vadSettings": {"turnEndpointDelay": "0.384s"}, "someFlag": True}


_EXPERIMENTAL_CASES = 7

# Each block of 20 calls: 17 own definitions, and three copies that make repeats
# (slots 7 and 8 copy slot 6: three in a row; slot 15 copies a slot 2, spread out).
_REPEAT_OF = {7: 1, 8: 2, 15: 13}  # slot -> how many positions back the copied call is
# Statuses forced so each block holds all five; slots 2 and 6 are repeated, so they must
# have no callId (a created call's id is unique, so those could never be byte-identical).
_FORCED_STATUS = {0: "SUCCESS", 2: "FUTURE", 3: "ERROR", 5: "PENDING", 9: "EXPIRED"}
_STATUS_NAMES = ("SUCCESS", "FUTURE", "PENDING", "ERROR", "EXPIRED")
_STATUS_CUM_WEIGHTS = (45, 75, 85, 95, 100)
# slot -> index among the block's 17 own definitions
_OWN_INDEX = {
    slot: slot - sum(1 for r in _REPEAT_OF if r < slot)
    for slot in range(20)
    if slot not in _REPEAT_OF
}


def generate_calls(batch_id: str, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """`n` realistic ScheduledCall objects, deterministic from (batch_id, seed).

    Any n >= 20 holds every medium shape (each key of ALL_MEDIUM_KEYS, absent, null and an
    unknown one), every status, every metadata/templateContext/experimentalSettings shape
    and byte-identical repeated definitions.
    """
    # Millions of fresh containers set off repeated full GC passes that triple the run
    # time of a benchmark-sized batch; nothing built here is cyclic.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(batch_id, n, random.Random(f"{batch_id}|{seed}"))
    finally:
        if was_enabled:
            gc.enable()


def _generate(batch_id: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for k in range(n):
        block, slot = divmod(k, 20)
        if slot in _REPEAT_OF:
            back = _REPEAT_OF[slot] + (20 if slot == 15 and block > 0 else 0)
            # A deep copy (through the C JSON codec: far faster than copy.deepcopy).
            calls.append(json.loads(json.dumps(calls[k - back])))
            continue
        j = _OWN_INDEX[slot]
        if slot in _FORCED_STATUS:
            status = _FORCED_STATUS[slot]
        elif slot == 6:
            status = rng.choice(("FUTURE", "PENDING"))
        else:
            status = _STATUS_NAMES[bisect.bisect(_STATUS_CUM_WEIGHTS, rng.random() * 100)]
        call_id: str | None = None
        error: str | None = None
        if status == "SUCCESS":
            call_id = _uuid(rng)
        elif status == "ERROR":
            error = rng.choice(_ERRORS)
            if rng.random() < 0.4:
                call_id = _uuid(rng)
        call: dict[str, Any] = {
            "status": status,
            "batchId": batch_id,
            "callId": call_id,
            "error": error,
        }
        # Rotating each aspect by a different step per block varies the combinations.
        medium = _medium((j + block * 7) % _MEDIUM_CASES, rng, k)
        if medium is not _ABSENT:
            call["medium"] = medium
        call["metadata"] = _metadata((j + block * 5) % _METADATA_CASES, k)
        call["templateContext"] = _template_context((j + block * 3) % _TEMPLATE_CASES, k)
        experimental = _experimental((j + block) % _EXPERIMENTAL_CASES)
        if experimental is not _ABSENT:
            call["experimentalSettings"] = experimental
        calls.append(call)
    return calls


# -- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Serve generated batches until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m etl.fake_api", description="Serve a fake Ultravox API on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000, help="calls per batch")
    parser.add_argument("--api-key", default="fake-api-key")
    parser.add_argument("--agent-id", default=None, help="default: derived from --seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    parser.add_argument("--default-page-size", type=int, default=100)
    parser.add_argument("--max-page-size", type=int, default=1000)
    args = parser.parse_args(argv)

    fake = FakeUltravox(
        args.api_key,
        latency_seconds=args.latency,
        max_page_size=args.max_page_size,
        default_page_size=args.default_page_size,
    )
    # Ids derive from the seed so repeated benchmark runs address the same batches.
    rng = random.Random(args.seed)
    agent_id = args.agent_id or _uuid(rng)
    for _ in range(args.batches):
        batch_id = _uuid(rng)
        fake.add_batch(agent_id, batch_id, generate_calls(batch_id, args.calls, seed=args.seed))
    base_url = fake.start(port=args.port)
    print(f"Fake Ultravox API on {base_url}  (X-API-Key: {args.api_key})", flush=True)
    print(f"agent_id {agent_id}", flush=True)
    for batch in fake.batches.values():
        print(f"batch_id {batch.batch_id}  calls={len(batch.calls)}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
