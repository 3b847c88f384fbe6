"""The fake Ultravox API server: state, routing, authentication, latency, faults, over real
HTTP/1.1 (keep-alive) on 127.0.0.1, in a daemon thread of the calling process.

Routes (all GET, all behind the `X-API-Key` header):

    /api/agents/{agent_id}/scheduled_batches                            batch list, paginated
    /api/agents/{agent_id}/scheduled_batches/{batch_id}                 batch details
    /api/agents/{agent_id}/scheduled_batches/{batch_id}/scheduled_calls  paginated; ?status=
    /api/agents/{agent_id}/scheduled_batches/{batch_id}/created_calls    paginated Calls

plus the control endpoints under /_fake/ (etl.fake_api.control), which skip the key check,
the latency, the faults and the request log: they steer the fake rather than use the API.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from etl.fake_api import control
from etl.fake_api.batches import LISTING_ORDERS, FakeBatch, ListingOrder
from etl.fake_api.faults import (
    Fault,
    FaultQueue,
    invalid_json_fault,
    payload_fault,
    status_fault,
)
from etl.fake_api.pagination import paginate
from etl.fake_api.scheduled_calls import STATUSES, generate_calls
from etl.fake_api.wire import (
    FakeResponse,
    RawRecord,
    dumps,
    encode_record,
    error_response,
    now_timestamp,
    parse_object,
)


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


_ROUTE = re.compile(
    r"^/api/agents/(?P<agent>[^/]+)/scheduled_batches"
    r"(?:/(?P<batch>[^/]+)(?:/(?P<listing>scheduled_calls|created_calls))?)?$"
)


class FakeUltravox:
    """The fake API server; mutate its state freely between (or during) requests.

    Every method that changes a batch takes its id and raises KeyError for an unknown one.
    """

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
        self._faults = FaultQueue()
        self._steps_taken = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        self._open_connections: set[socket.socket] = set()
        self._connections_opened = 0

    # -- batches and scheduled calls ---------------------------------------------------------

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
        fields.setdefault("created", now_timestamp())
        # The real API requires a webhook for non-outgoing media and picks a secret if unset.
        fields.setdefault("webhook_url", f"https://hooks.example.com/ultravox/{batch_id}")
        fields.setdefault("webhook_secret", f"whsec_{uuid.uuid4().hex}")
        batch = FakeBatch(agent_id=agent_id, batch_id=batch_id, calls=calls, **fields)
        with self._lock:
            self.batches[batch_id] = batch
        return batch

    def remove_batch(self, batch_id: str) -> None:
        """Delete a batch (as if deleted through the API)."""
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
        """Set one scheduled call's status, callId and error. A new callId is a call just
        created: its Call is listed with billing pending until the next `advance`."""
        with self._lock:
            self.batches[batch_id].set_call(index, status, call_id, error)

    def drop_call(self, batch_id: str, index: int) -> None:
        """Remove the scheduled call at `index` (and with it the Call it created), so the
        calls after it move up a place: a listing in progress skips one."""
        with self._lock:
            del self.batches[batch_id].calls[index]

    def set_raw_record(self, batch_id: str, index: int, raw: bytes) -> None:
        """Serve the scheduled call at `index` as exactly the bytes `raw` (see RawRecord).

        For texts Python's json would not write back the same (``1e400``, ``NaN``, huge
        integers, deep nesting, duplicate keys); pages, `total` and links stay right.
        """
        with self._lock:
            self.batches[batch_id].set_raw_record(index, raw)

    def set_order(self, batch_id: str, order: ListingOrder, *, seed: int = 0) -> None:
        """Serve the batch's scheduled calls and created calls in another order (see
        LISTING_ORDERS): the API's sort order is undocumented."""
        if order not in LISTING_ORDERS:
            raise ValueError(f"unknown order {order!r}; one of {', '.join(LISTING_ORDERS)}")
        with self._lock:
            batch = self.batches[batch_id]
            batch.order, batch.order_seed = order, seed

    def advance(self, batch_id: str, fraction: float, *, seed: int = 0) -> int:
        """Move about `fraction` of the calls one step along FUTURE -> PENDING -> SUCCESS.

        A few FUTURE calls expire and a few PENDING ones fail instead. The calls created
        by the previous step get their billing and summaries. Returns how many scheduled
        calls changed; deterministic for a given state and seed.
        """
        with self._lock:
            return self.batches[batch_id].advance(fraction, seed)

    def advance_batches(
        self, fraction: float, *, batch_ids: Iterable[str] | None = None, seed: int | None = None
    ) -> dict[str, int]:
        """`advance` several batches (every batch by default); how many calls each changed.

        Without a `seed`, each call of this method uses the next number of a counter (1, 2,
        …), so repeated steps differ while a fresh fake steered the same way repeats them.
        """
        with self._lock:
            if seed is None:
                self._steps_taken += 1
                seed = self._steps_taken
            ids = list(self.batches) if batch_ids is None else list(batch_ids)
            return {batch_id: self.advance(batch_id, fraction, seed=seed) for batch_id in ids}

    def describe(self) -> dict[str, Any]:
        """Every batch, where it stands (FakeBatch.describe), as JSON."""
        with self._lock:
            return {"batches": [batch.describe() for batch in self.batches.values()]}

    # -- created calls -----------------------------------------------------------------------

    def created_calls(self, batch_id: str) -> list[Mapping[str, Any]]:
        """The Call records the batch's `created_calls` listing serves, in its order."""
        with self._lock:
            return self.batches[batch_id].created_calls()

    def finish_billing(self, batch_id: str, call_id: str | None = None) -> int:
        """Let billing (and the end and summaries) arrive now for one call whose billing is
        pending (KeyError if it is not), or for all of the batch's; returns how many."""
        with self._lock:
            return self.batches[batch_id].finish_billing(call_id)

    def add_created_call(
        self, batch_id: str, record: Mapping[str, Any] | bytes, *, call_id: str | None = None
    ) -> str:
        """List a hand-made Call record, served as given; returns its callId.

        `record` may be raw JSON text, served byte for byte. The callId is `call_id`, else
        the record's own. A scheduled call with that callId gets this record in place of
        its generated Call; otherwise it is listed after the generated ones.
        """
        fields = (parse_object(record) or {}) if isinstance(record, bytes) else record
        call_id = call_id if call_id is not None else fields.get("callId")
        if not isinstance(call_id, str):
            raise ValueError("the record has no callId: pass call_id")
        if isinstance(record, bytes):  # what the fake reads of it includes the id it goes by
            record = RawRecord(record, {**fields, "callId": call_id})
        with self._lock:
            self.batches[batch_id].add_created_call(call_id, record)
        return call_id

    def remove_created_call(self, batch_id: str, call_id: str) -> None:
        """Delete a Call (as a retention policy does): it vanishes from created_calls, while
        its scheduled call keeps the callId. KeyError if the call is not listed."""
        with self._lock:
            self.batches[batch_id].remove_created_call(call_id)

    # -- faults ------------------------------------------------------------------------------

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
        self._faults.add(status_fault(status, times, path_contains, retry_after, body))

    def inject_connection_reset(self, *, times: int = 1, path_contains: str = "") -> None:
        """Close the connection (with a TCP reset) without any response."""
        self._faults.add(Fault("reset", times, path_contains))

    def inject_truncated_body(self, *, times: int = 1, path_contains: str = "") -> None:
        """Answer 200 with half of the real body under the full Content-Length, then close."""
        self._faults.add(Fault("truncate", times, path_contains))

    def inject_invalid_json(self, *, times: int = 1, path_contains: str = "") -> None:
        """Answer 200, application/json, with a body that is not JSON."""
        self._faults.add(invalid_json_fault(times, path_contains))

    def inject_payload(self, payload: Any, *, times: int = 1, path_contains: str = "") -> None:
        """Answer 200 with exactly this JSON payload."""
        self._faults.add(payload_fault(payload, times, path_contains))

    def clear_faults(self) -> None:
        """Drop every fault not yet used."""
        self._faults.clear()

    def _take_fault(self, target: str) -> Fault | None:
        return self._faults.take(target)

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

    def _route(self, path: str, query: list[tuple[str, str]], link_base: str) -> FakeResponse:
        """The answer to an authenticated GET of `path`."""
        match = _ROUTE.match(path)
        if match is None:
            return error_response(404, "Not found.")
        agent_id = unquote(match["agent"])
        page = functools.partial(
            paginate,
            query=query,
            path=path,
            link_base=link_base,
            default_size=self.default_page_size,
            max_size=self.max_page_size,
        )
        with self._lock:
            if match["batch"] is None:
                batches = [b for b in self.batches.values() if b.agent_id == agent_id]
                return page(batches, lambda b: dumps(b.as_api()))
            batch = self.batches.get(unquote(match["batch"]))
            if batch is None or batch.agent_id != agent_id:
                return error_response(404, "Not found.")
            if match["listing"] is None:
                return FakeResponse(200, dumps(batch.as_api()))
            if match["listing"] == "created_calls":
                return page(
                    batch.created_call_entries(),
                    lambda entry: encode_record(batch.created_call(entry)),
                )
            status = dict(query).get("status", "")
            # django-filter ignores an empty value but rejects anything outside the enum.
            if status and status not in STATUSES:
                message = f"Select a valid choice. {status} is not one of the available choices."
                return FakeResponse(400, dumps({"status": [message]}))
            return page(batch.listed_calls(status), encode_record)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeUltravox) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up before its answer is written (a run stopped by a signal,
        # a timeout) is no fault of the fake's: say nothing rather than print a traceback
        # into whatever stderr the process has at that moment.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


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
        body = self._read_request_body()
        if split.path.startswith(control.PREFIX):
            self._send(control.handle(fake, self.command, split.path, body))
            return
        query = parse_qsl(split.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake._record(
            RecordedRequest(self.command, split.path, dict(query), headers, time.monotonic())
        )
        if fake.latency_seconds > 0:
            time.sleep(fake.latency_seconds)

        if headers.get("x-api-key") != fake.api_key:
            self._send(error_response(401, "Invalid API key."))
            return
        fault = fake._take_fault(self.path)
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind != "truncate":
            headers_out = [("Retry-After", fault.retry_after)] if fault.retry_after else []
            self._send(FakeResponse(fault.status, fault.body, headers_out, fault.content_type))
            return
        if self.command != "GET":
            response = error_response(405, f'Method "{self.command}" not allowed.')
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

    def _read_request_body(self) -> bytes | None:
        """The request's body (b"" if none); None if it cannot be delimited, in which case
        the connection is closed after the answer."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length and not length.isdecimal()):
            self.close_connection = True  # cannot find the next request in this stream
            return None
        return self.rfile.read(int(length)) if length else b""

    def _head(self, response: FakeResponse, content_length: int) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(content_length))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()

    def _send(self, response: FakeResponse) -> None:
        self._head(response, len(response.body))
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _send_truncated(self, body: bytes) -> None:
        self._head(FakeResponse(200, body), len(body) + 1)
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER 0: closing sends RST instead of an orderly FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
