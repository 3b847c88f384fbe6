"""The extract layer over real HTTP against the fake Ultravox API, and real sockets that
refuse, never answer or speak the wrong protocol.

Retry waits are recorded through `UltravoxClient(..., sleep=waits.append)`, never slept.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import urllib3
import urllib3.connection
import urllib3.exceptions
from sqlalchemy import Engine

from etl.config import ApiSettings, BatchRef
from etl.extract.client import (
    ApiError,
    ApiKeyRefused,
    ApiUnreachable,
    MalformedResponse,
    NotFound,
    UltravoxClient,
    parse_retry_after,
)
from etl.extract.endpoints import batch_listing_pages
from etl.extract.pagination import Page, RepeatedCursor
from etl.extract.ratelimit import RateLimiter
from etl.extract.transport import TransportCause, describe_transport_failure, endpoint_of
from etl.fake_api import FakeBatch, FakeUltravox, generate_calls, retry_after_date
from tests.conftest import TEST_API_KEY, CliResult, rows, write_config

KEY = "sk-test-5e1f0c2b-never-print-me"
AGENT = "11111111-2222-4333-8444-555555555555"
BATCH = "66666666-7777-4888-8999-aaaaaaaaaaaa"
CALLS_PATH = f"/api/agents/{AGENT}/scheduled_batches/{BATCH}/scheduled_calls"
PAGE_SIZE = 10
MAX_ATTEMPTS = 4
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 120.0


def make_settings(base_url: str, **overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "page_size": PAGE_SIZE,
        "timeout_seconds": 5.0,
        "max_attempts": MAX_ATTEMPTS,
        "backoff_initial_seconds": BACKOFF_INITIAL,
        "backoff_max_seconds": BACKOFF_MAX,
        "retry_after_max_seconds": RETRY_AFTER_MAX,
        # The rate cap and the total-wait budget have tests of their own below.
        "max_requests_per_second": 10_000.0,
        "max_wait_seconds": 100_000.0,
    }
    values.update(overrides)
    return ApiSettings(**values)


def backoff_bounds(attempt: int) -> tuple[float, float]:
    """The jittered exponential wait after failed attempt `attempt` (1-based), uncapped."""
    base = BACKOFF_INITIAL * 2 ** (attempt - 1)
    return base, base + BACKOFF_INITIAL


def assert_backoff(waits: list[float]) -> None:
    assert waits
    for attempt, wait in enumerate(waits, start=1):
        low, high = backoff_bounds(attempt)
        assert low <= wait <= high, (attempt, wait)


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeUltravox]:
    # One server for the module: stopping one waits out its poll interval (~50 ms).
    with FakeUltravox(api_key=KEY) as server:
        yield server


@pytest.fixture
def fake(shared_fake: FakeUltravox) -> Iterator[FakeUltravox]:
    """The shared fake, reset to a blank state for each test."""
    server = shared_fake
    server.clear_faults()
    server.batches.clear()
    server.requests.clear()
    server.next_link_base = None
    server.latency_seconds = 0.0
    yield server
    server.clear_faults()


@pytest.fixture
def batch(fake: FakeUltravox) -> FakeBatch:
    return fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 95))


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def client(fake: FakeUltravox, waits: list[float]) -> Iterator[UltravoxClient]:
    with UltravoxClient(make_settings(fake.base_url), KEY, sleep=waits.append) as c:
        yield c


def pages_of(client: UltravoxClient, batch_id: str = BATCH) -> Iterator[Page]:
    return batch_listing_pages(
        client,
        BatchRef(AGENT, batch_id),
        "scheduled_calls",
        {},
        page_size=client.settings.page_size,
        where=f"batch {batch_id}",
    )


def all_calls(client: UltravoxClient, batch_id: str = BATCH) -> list[Any]:
    return [call for page in pages_of(client, batch_id) for call in page.results]


def collect_until_error(client: UltravoxClient) -> tuple[list[Page], Exception]:
    """The pages yielded before the listing failed, and the failure."""
    pages: list[Page] = []
    with pytest.raises(Exception) as info:
        for page in pages_of(client):
            pages.append(page)
    assert isinstance(info.value, Exception)
    return pages, info.value


def link(base: str, cursor: str) -> str:
    return f"{base}{CALLS_PATH}?cursor={cursor}&pageSize={PAGE_SIZE}"


# -- pagination ------------------------------------------------------------------------------


def test_full_pagination_returns_every_call_once_in_order(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    pages = list(pages_of(client))

    assert [p.number for p in pages] == list(range(1, 11))
    assert [len(p.results) for p in pages] == [10] * 9 + [5]
    assert [p.total for p in pages] == [95] * 10
    assert [p.is_last for p in pages] == [False] * 9 + [True]
    assert pages[0].cursor is None
    assert all(p.cursor for p in pages[1:])
    assert len({p.cursor for p in pages[1:]}) == 9
    assert [c for p in pages for c in p.results] == batch.calls
    assert waits == []

    assert len(fake.requests) == 10
    for i, request in enumerate(fake.requests):
        assert request.method == "GET"
        assert request.path == CALLS_PATH
        assert request.query["pageSize"] == str(PAGE_SIZE)
        assert request.header("X-API-Key") == KEY
        assert request.header("Accept") == "application/json"
        assert ("cursor" in request.query) == (i > 0)
        if i > 0:
            assert request.query["cursor"] == pages[i].cursor
        assert KEY not in str(request.query)


def test_a_netrc_file_adds_no_credentials_to_the_api_requests(
    fake: FakeUltravox,
    batch: FakeBatch,
    waits: list[float],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    with UltravoxClient(make_settings(fake.base_url), KEY, sleep=waits.append) as c:
        assert len(list(pages_of(c))) == 10

    assert all(r.header("X-API-Key") == KEY for r in fake.requests)
    assert [r.header("Authorization") for r in fake.requests] == [None] * 10


def test_page_size_comes_from_the_settings(
    fake: FakeUltravox, batch: FakeBatch, waits: list[float]
) -> None:
    with UltravoxClient(make_settings(fake.base_url, page_size=7), KEY, sleep=waits.append) as c:
        pages = list(pages_of(c))
    assert [len(p.results) for p in pages] == [7] * 13 + [4]
    assert {r.query["pageSize"] for r in fake.requests} == {"7"}
    assert [call for p in pages for call in p.results] == batch.calls


def test_exact_multiple_of_page_size_has_no_trailing_empty_page(
    fake: FakeUltravox, client: UltravoxClient
) -> None:
    calls = generate_calls(BATCH, 30)
    fake.add_batch(AGENT, BATCH, calls)
    pages = list(pages_of(client))
    assert [len(p.results) for p in pages] == [10, 10, 10]
    assert pages[-1].is_last
    assert [c for p in pages for c in p.results] == calls
    assert len(fake.requests) == 3


def test_empty_batch_is_one_empty_last_page(fake: FakeUltravox, client: UltravoxClient) -> None:
    fake.add_batch(AGENT, BATCH, [])
    pages = list(pages_of(client))
    assert pages == [Page(number=1, results=[], total=0, cursor=None, is_last=True, lenient=False)]
    assert len(fake.requests) == 1


def test_one_keep_alive_connection_for_many_pages(
    fake: FakeUltravox, client: UltravoxClient
) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 200))
    before = fake.connections_opened
    assert len(all_calls(client)) == 200
    assert len(fake.requests) == 20
    assert fake.connections_opened - before == 1


def test_listing_ids_are_url_quoted(fake: FakeUltravox, client: UltravoxClient) -> None:
    with pytest.raises(NotFound):
        list(
            batch_listing_pages(
                client, BatchRef("a/b", "c?d"), "scheduled_calls", {}, page_size=5, where="b"
            )
        )
    assert fake.requests[0].path == "/api/agents/a%2Fb/scheduled_batches/c%3Fd/scheduled_calls"


# -- Retry-After -----------------------------------------------------------------------------


def test_429_retry_after_seconds_is_the_wait(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(429, retry_after="7")
    assert all_calls(client) == batch.calls
    assert waits == [7.0]
    assert len(fake.requests) == 11


def test_503_retry_after_is_honoured_too(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(503, retry_after="3", path_contains="cursor=")
    assert all_calls(client) == batch.calls
    assert waits == [3.0]


def test_429_retry_after_http_date(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(429, retry_after=retry_after_date(30))
    assert all_calls(client) == batch.calls
    assert len(waits) == 1
    # An HTTP date has whole seconds, and a little time passes before it is read.
    assert 28.0 <= waits[0] <= 30.0


@pytest.mark.parametrize("retry_after", ["3600", retry_after_date(3600)])
def test_retry_after_over_the_cap_is_capped(
    fake: FakeUltravox,
    batch: FakeBatch,
    client: UltravoxClient,
    waits: list[float],
    retry_after: str,
) -> None:
    fake.inject(429, retry_after=retry_after)
    assert all_calls(client) == batch.calls
    assert waits == [RETRY_AFTER_MAX]


def test_retry_after_cap_comes_from_the_settings(
    fake: FakeUltravox, batch: FakeBatch, waits: list[float]
) -> None:
    fake.inject(429, retry_after="90")
    settings = make_settings(fake.base_url, retry_after_max_seconds=5.0)
    with UltravoxClient(settings, KEY, sleep=waits.append) as c:
        assert all_calls(c) == batch.calls
    assert waits == [5.0]


def test_429_without_retry_after_backs_off_exponentially(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(429, times=3)
    assert all_calls(client) == batch.calls
    assert len(waits) == 3
    assert_backoff(waits)
    assert waits[0] < waits[1] < waits[2]
    # Jittered: the chance of a uniform draw landing exactly on the bare exponential is nil.
    jitters = [wait - backoff_bounds(attempt)[0] for attempt, wait in enumerate(waits, start=1)]
    assert all(j > 0 for j in jitters)
    assert len(set(jitters)) == 3


# "²" arrives as byte 0xB2 (latin-1); str.isdigit() accepts it but float() does not.
@pytest.mark.parametrize("retry_after", ["soon", "1.5", "-3", "²"])
def test_unusable_retry_after_falls_back_to_backoff(
    fake: FakeUltravox,
    batch: FakeBatch,
    client: UltravoxClient,
    waits: list[float],
    retry_after: str,
) -> None:
    fake.inject(429, retry_after=retry_after)
    assert all_calls(client) == batch.calls
    assert len(waits) == 1
    assert_backoff(waits)


def test_backoff_is_capped_at_backoff_max(
    fake: FakeUltravox, batch: FakeBatch, waits: list[float]
) -> None:
    fake.inject(500, times=5)
    settings = make_settings(fake.base_url, max_attempts=6, backoff_max_seconds=1.2)
    with UltravoxClient(settings, KEY, sleep=waits.append) as c:
        assert all_calls(c) == batch.calls
    assert len(waits) == 5
    assert BACKOFF_INITIAL <= waits[0] <= 1.0
    assert waits[2:] == [1.2, 1.2, 1.2]


def test_retry_after_then_backoff_on_the_same_request(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(429, retry_after="2")
    fake.inject(500)
    assert all_calls(client) == batch.calls
    assert waits[0] == 2.0
    low, high = backoff_bounds(2)
    assert low <= waits[1] <= high


def test_each_request_gets_its_own_attempt_budget(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    # MAX_ATTEMPTS - 1 failures on page 1 and again on page 2: both still succeed.
    fake.inject(503, times=MAX_ATTEMPTS - 1)
    fake.inject(503, times=MAX_ATTEMPTS - 1, path_contains="cursor=")
    assert all_calls(client) == batch.calls
    assert len(waits) == 2 * (MAX_ATTEMPTS - 1)
    assert_backoff(waits[: MAX_ATTEMPTS - 1])
    assert_backoff(waits[MAX_ATTEMPTS - 1 :])
    assert len(fake.requests) == 10 + 2 * (MAX_ATTEMPTS - 1)


# -- transient faults ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_then_success(
    fake: FakeUltravox,
    batch: FakeBatch,
    client: UltravoxClient,
    waits: list[float],
    status: int,
) -> None:
    body = b"<html><body>Bad gateway</body></html>" if status in (502, 504) else None
    fake.inject(status, times=2, path_contains="cursor=", body=body)
    assert all_calls(client) == batch.calls
    assert len(waits) == 2
    assert_backoff(waits)
    assert len(fake.requests) == 12


def test_connection_reset_then_success(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject_connection_reset(path_contains="cursor=")
    assert all_calls(client) == batch.calls
    assert len(waits) == 1
    assert_backoff(waits)
    assert len(fake.requests) == 11


def test_truncated_body_then_success(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject_truncated_body(path_contains="cursor=")
    before = fake.connections_opened
    assert all_calls(client) == batch.calls
    assert len(waits) == 1
    assert_backoff(waits)
    assert len(fake.requests) == 11
    # The server closed the cut-short connection; the client opened exactly one more.
    assert fake.connections_opened - before == 2


def test_invalid_json_then_success(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject_invalid_json()
    assert all_calls(client) == batch.calls
    assert len(waits) == 1
    assert_backoff(waits)
    assert len(fake.requests) == 11


def test_timeout_then_success(fake: FakeUltravox, batch: FakeBatch) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        fake.latency_seconds = 0.0  # the server answers promptly from now on

    latency = 0.4
    fake.latency_seconds = latency
    with UltravoxClient(make_settings(fake.base_url, timeout_seconds=0.1), KEY, sleep=sleep) as c:
        assert all_calls(c) == batch.calls
    assert len(waits) == 1
    assert_backoff(waits)
    assert len(fake.requests) == 11
    # Let the abandoned handler finish inside this test: its write to the closed socket
    # fails, and the server's traceback for that belongs in this test's captured output.
    time.sleep(max(0.0, fake.requests[0].at + latency + 0.1 - time.monotonic()))


def test_attempts_exhausted(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(503, times=100)
    with pytest.raises(ApiError) as info:
        all_calls(client)
    assert type(info.value) is ApiError
    message = str(info.value)
    assert f"after {MAX_ATTEMPTS} attempts" in message
    assert "HTTP 503" in message
    assert CALLS_PATH in message
    assert len(fake.requests) == MAX_ATTEMPTS
    assert len(waits) == MAX_ATTEMPTS - 1
    assert_backoff(waits)


def test_single_attempt_means_no_retry(
    fake: FakeUltravox, batch: FakeBatch, waits: list[float]
) -> None:
    fake.inject_connection_reset()
    settings = make_settings(fake.base_url, max_attempts=1)
    with (
        UltravoxClient(settings, KEY, sleep=waits.append) as c,
        pytest.raises(ApiError, match=r"\(1 attempt over \d+\.\ds\)$"),
    ):
        all_calls(c)
    assert len(fake.requests) == 1
    assert waits == []


# -- the host unreachable: the cause named, one circuit for the client -----------------------


class SocketCalls:
    """connect() and getaddrinfo() calls of this process, by port and by host name.

    Seen through an audit hook (sys.addaudithook): every real attempt, on any thread, counted
    without mocking anything. A hook cannot be removed, so one is installed for the session.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: Counter[tuple[str, object]] = Counter()

    def record(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect" and isinstance(args[1], tuple):
            key: tuple[str, object] = ("connect", args[1][1])
        elif event == "socket.getaddrinfo":
            key = ("lookup", args[0])
        else:
            return
        with self._lock:
            self._seen[key] += 1

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def connects(self, port: int) -> int:
        with self._lock:
            return self._seen[("connect", port)]

    def lookups(self, host: str) -> int:
        with self._lock:
            return self._seen[("lookup", host)]


_SOCKET_CALLS: SocketCalls | None = None


@pytest.fixture
def socket_calls() -> SocketCalls:
    global _SOCKET_CALLS
    if _SOCKET_CALLS is None:
        _SOCKET_CALLS = SocketCalls()
        sys.addaudithook(_SOCKET_CALLS.record)
    _SOCKET_CALLS.reset()
    return _SOCKET_CALLS


def free_port() -> int:
    """A port nothing listens on: bound, then closed, so a connect to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def full_backlog_port() -> Iterator[int]:
    """A port whose listener never accepts and whose queue is full: a SYN gets no answer.

    Linux drops a SYN when the accept queue of the listener is full; with a backlog of 0 one
    connection fills it. Deterministic, and needs no network beyond loopback.
    """
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port: int = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(2)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture(scope="module")
def self_signed_tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """https://127.0.0.1:PORT of a TLS server whose certificate no trusted CA signed."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI"):
            pytest.fail("the openssl command is needed to make a test certificate")
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x"]
    subprocess.run(
        [openssl, *request, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            # The client refuses the certificate: the handshake fails on this side too.
            with conn, contextlib.suppress(OSError):
                context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    listener.close()


def unreachable_message(path: str, endpoint: str, cause: str, attempts: int) -> str:
    """The pattern of the error of the request that found the host unreachable."""
    tried = rf"\({attempts} attempts over \d+\.\ds\)"
    return rf"GET {re.escape(path)}: {re.escape(endpoint)} unreachable: {cause} {tried}"


def test_connection_refused_names_host_and_cause_and_opens_the_circuit(
    socket_calls: SocketCalls, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    with UltravoxClient(make_settings(f"http://{endpoint}"), KEY, sleep=waits.append) as client:
        with pytest.raises(ApiUnreachable) as first:
            all_calls(client)
        assert re.fullmatch(
            unreachable_message(CALLS_PATH, endpoint, "connection refused", MAX_ATTEMPTS),
            str(first.value),
        )
        outage = first.value.outage
        assert (outage.endpoint, outage.cause, outage.attempts) == (
            endpoint,
            "connection refused",
            MAX_ATTEMPTS,
        )
        assert client.circuit.outage is outage
        assert socket_calls.connects(port) == MAX_ATTEMPTS
        assert_backoff(waits)
        assert len(waits) == MAX_ATTEMPTS - 1

        # The circuit is open: the next request fails at once, without a connection attempt.
        with pytest.raises(ApiUnreachable) as second:
            client.get_json("/api/agents/x/scheduled_batches")
        assert str(second.value) == (
            f"GET /api/agents/x/scheduled_batches: {endpoint} unreachable: connection refused "
            f"(another request gave up after {MAX_ATTEMPTS} attempts over {outage.seconds:.1f}s)"
        )
        assert second.value.outage is outage
        assert socket_calls.connects(port) == MAX_ATTEMPTS
        assert len(waits) == MAX_ATTEMPTS - 1

    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == MAX_ATTEMPTS - 1
    assert all(f"{endpoint} unreachable: connection refused; retrying" in m for m in retries)
    for text in (str(first.value), str(second.value), caplog.text):
        assert KEY not in text and "pageSize" not in text


def test_an_unresolvable_host_is_a_dns_failure(
    socket_calls: SocketCalls, waits: list[float]
) -> None:
    host = "api.ultravox.invalid"  # RFC 6761: never resolves, with or without a network
    settings = make_settings(f"https://{host}", max_attempts=2)
    with UltravoxClient(settings, KEY, sleep=waits.append) as client:
        with pytest.raises(ApiUnreachable) as info:
            all_calls(client)
        cause = r"DNS lookup failed \((name not known|temporary failure)\)"
        assert re.fullmatch(
            unreachable_message(CALLS_PATH, f"{host}:443", cause, 2), str(info.value)
        )
        assert socket_calls.lookups(host) == 2
        with pytest.raises(ApiUnreachable):
            all_calls(client)
        assert socket_calls.lookups(host) == 2


def test_tls_to_a_plain_http_server_is_a_tls_error(
    redirect_server: RedirectServer, waits: list[float]
) -> None:
    redirect_server.seen.clear()
    endpoint = urlsplit(redirect_server.base_url).netloc
    settings = make_settings(f"https://{endpoint}", max_attempts=2)
    with (
        UltravoxClient(settings, KEY, sleep=waits.append) as client,
        pytest.raises(ApiUnreachable) as info,
    ):
        all_calls(client)
    assert re.fullmatch(
        unreachable_message(CALLS_PATH, endpoint, "TLS error: .+", 2), str(info.value)
    )
    assert "_ssl.c" not in str(info.value) and "[SSL" not in str(info.value)
    assert redirect_server.seen == []  # the server never read an HTTP request


def test_an_untrusted_certificate_is_a_tls_error_that_says_so(
    self_signed_tls_url: str, waits: list[float]
) -> None:
    settings = make_settings(self_signed_tls_url, max_attempts=2)
    with (
        UltravoxClient(settings, KEY, sleep=waits.append) as client,
        pytest.raises(ApiUnreachable) as info,
    ):
        all_calls(client)
    endpoint = urlsplit(self_signed_tls_url).netloc
    cause = "TLS error: certificate verify failed: self[- ]signed certificate"
    assert re.fullmatch(unreachable_message(CALLS_PATH, endpoint, cause, 2), str(info.value))


def test_a_connect_timeout_names_the_wait_and_opens_the_circuit(
    full_backlog_port: int, socket_calls: SocketCalls, waits: list[float]
) -> None:
    endpoint = f"127.0.0.1:{full_backlog_port}"
    settings = make_settings(f"http://{endpoint}", timeout_seconds=0.2, max_attempts=2)
    with UltravoxClient(settings, KEY, sleep=waits.append) as client:
        with pytest.raises(ApiUnreachable) as info:
            all_calls(client)
        cause = r"timed out after 0\.2s \(connect\)"
        assert re.fullmatch(unreachable_message(CALLS_PATH, endpoint, cause, 2), str(info.value))
        assert socket_calls.connects(full_backlog_port) == 2
        with pytest.raises(ApiUnreachable):
            all_calls(client)
        assert socket_calls.connects(full_backlog_port) == 2  # no connect timeout waited out


def test_an_unreachable_proxy_is_named_and_its_credentials_are_not(
    fake: FakeUltravox, batch: FakeBatch, waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_port = free_port()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://squid:proxy-secret@127.0.0.1:{proxy_port}")
    settings = make_settings(fake.base_url, max_attempts=2)
    with (
        UltravoxClient(settings, KEY, sleep=waits.append) as client,
        pytest.raises(ApiUnreachable) as info,
    ):
        all_calls(client)
    endpoint = urlsplit(fake.base_url).netloc
    cause = f"connection refused at proxy 127.0.0.1:{proxy_port}"
    assert re.fullmatch(
        unreachable_message(CALLS_PATH, endpoint, re.escape(cause), 2), str(info.value)
    )
    assert "proxy-secret" not in str(info.value)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ("read_timeout", r"timed out after 0\.1s \(read\)"),
        ("truncated_body", "response cut short"),
        ("connection_reset", "connection (reset|closed without a response)"),
    ],
)
def test_a_host_that_answers_badly_is_named_but_does_not_open_the_circuit(
    fake: FakeUltravox, batch: FakeBatch, waits: list[float], fault: str, cause: str
) -> None:
    latency = 0.4
    if fault == "read_timeout":
        fake.latency_seconds = latency
    elif fault == "truncated_body":
        fake.inject_truncated_body(times=2)
    else:
        fake.inject_connection_reset(times=2)
    endpoint = urlsplit(fake.base_url).netloc
    settings = make_settings(fake.base_url, timeout_seconds=0.1, max_attempts=2)
    with UltravoxClient(settings, KEY, sleep=waits.append) as client:
        with pytest.raises(ApiError) as info:
            all_calls(client)
        assert type(info.value) is ApiError
        tried = r"\(2 attempts over \d+\.\ds\)"
        pattern = rf"GET {re.escape(CALLS_PATH)}: {re.escape(endpoint)}: {cause} {tried}"
        assert re.fullmatch(pattern, str(info.value))
        assert client.circuit.outage is None
        fake.latency_seconds = 0.0
        assert all_calls(client) == batch.calls
    if fault == "read_timeout":
        # Let both abandoned slow handlers finish inside this test: each takes an injected
        # fault after its latency, which must not be one of the next test's.
        last_slow = fake.requests[1].at
        time.sleep(max(0.0, last_slow + latency + 0.1 - time.monotonic()))


def test_a_503_storm_does_not_open_the_circuit(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(503, times=100)
    with pytest.raises(ApiError) as info:
        all_calls(client)
    assert type(info.value) is ApiError
    assert f"failed after {MAX_ATTEMPTS} attempts: HTTP 503" in str(info.value)
    assert client.circuit.outage is None
    fake.clear_faults()
    assert all_calls(client) == batch.calls
    assert len(waits) == MAX_ATTEMPTS - 1


def test_an_answer_after_refusals_closes_the_circuit(
    socket_calls: SocketCalls, waits: list[float]
) -> None:
    port = free_port()
    server = FakeUltravox(api_key=KEY)
    server.add_batch(AGENT, BATCH, generate_calls(BATCH, 5))

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == MAX_ATTEMPTS - 1:
            server.start(port=port)  # the host is back for the last attempt

    try:
        with UltravoxClient(make_settings(f"http://127.0.0.1:{port}"), KEY, sleep=sleep) as c:
            # One refusal short of opening, then an answer: the listing goes on.
            assert len(all_calls(c)) == 5
            assert c.circuit.outage is None
            assert socket_calls.connects(port) == MAX_ATTEMPTS
            server.stop()
            # The refusals before the answer count for nothing: a whole new budget is spent.
            with pytest.raises(ApiUnreachable) as info:
                all_calls(c)
            assert info.value.outage.attempts == MAX_ATTEMPTS
            assert socket_calls.connects(port) == 2 * MAX_ATTEMPTS
    finally:
        server.stop()


def test_other_requests_hold_while_one_finds_out_and_go_on_when_the_host_answers(
    socket_calls: SocketCalls,
) -> None:
    port = free_port()
    server = FakeUltravox(api_key=KEY)
    server.add_batch(AGENT, BATCH, generate_calls(BATCH, 3))
    details_path = CALLS_PATH.removesuffix("/scheduled_calls")
    details: list[Any] = []
    other = threading.Thread(target=lambda: details.append(api.get_json(details_path)))

    def sleep(seconds: float) -> None:
        if not other.is_alive() and not details:
            # The listing was refused: the details request starts, and holds its attempt.
            other.start()
            deadline = time.monotonic() + 5
            while api.circuit.holding == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert api.circuit.holding == 1
            assert socket_calls.connects(port) == 1
            server.inject(503, path_contains="scheduled_calls")
            server.start(port=port)
        else:
            # The listing got a 503: the host answers, so the details request went on while
            # the listing still waits to retry.
            other.join(timeout=5)
            assert details and details[0]["batchId"] == BATCH

    try:
        settings = make_settings(f"http://127.0.0.1:{port}")
        with UltravoxClient(settings, KEY, sleep=sleep) as api:
            assert len(all_calls(api)) == 3
            assert api.circuit.holding == 0 and api.circuit.outage is None
        assert [r.path for r in server.requests] == [CALLS_PATH, details_path, CALLS_PATH]
    finally:
        server.stop()


def test_a_retry_in_flight_stops_once_the_circuit_opens(waits: list[float]) -> None:
    # One request is answered slowly; meanwhile the host stops accepting connections, and
    # another request finds it unreachable. The slow answer is a 503, which would be retried:
    # the circuit is open by then, so it is not, and it waits out no pause.
    listener = socket.create_server(("127.0.0.1", 0))
    endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
    failures: list[BaseException] = []

    def slow_request() -> None:
        try:
            api.get_json("/api/agents/slow/scheduled_batches")
        except BaseException as exc:
            failures.append(exc)

    with UltravoxClient(make_settings(f"http://{endpoint}"), KEY, sleep=waits.append) as api:
        slow = threading.Thread(target=slow_request)
        slow.start()
        conn, _ = listener.accept()
        listener.close()  # from now on every connection is refused
        with conn:
            conn.recv(65536)
            with pytest.raises(ApiUnreachable) as opened:
                api.get_json("/api/agents/x/scheduled_batches")
            assert len(waits) == MAX_ATTEMPTS - 1
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        slow.join(timeout=5)

    (failure,) = failures
    assert isinstance(failure, ApiUnreachable)
    assert failure.outage is opened.value.outage
    assert str(failure).startswith(
        f"GET /api/agents/slow/scheduled_batches: {endpoint} unreachable: connection refused "
        f"(another request gave up after {MAX_ATTEMPTS} attempts"
    )
    assert len(waits) == MAX_ATTEMPTS - 1


class StoppedProbing(Exception):
    """Raised from a retry pause: the request finding out ends without an outcome."""


def test_a_request_that_stops_finding_out_lets_the_others_go(waits: list[float]) -> None:
    port = free_port()
    failures: list[BaseException] = []

    def other_request() -> None:
        try:
            api.get_json("/api/agents/other/scheduled_batches")
        except BaseException as exc:
            failures.append(exc)

    other = threading.Thread(target=other_request, daemon=True)

    def sleep(seconds: float) -> None:
        if threading.current_thread() is other:
            waits.append(seconds)
            return
        other.start()
        deadline = time.monotonic() + 5
        while api.circuit.holding == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert api.circuit.holding == 1
        raise StoppedProbing

    with UltravoxClient(make_settings(f"http://127.0.0.1:{port}"), KEY, sleep=sleep) as api:
        with pytest.raises(StoppedProbing):
            api.get_json("/api/agents/first/scheduled_batches")
        other.join(timeout=5)
        assert not other.is_alive()  # not held for ever

    # The other request then found out for itself, with a whole budget.
    (failure,) = failures
    assert isinstance(failure, ApiUnreachable)
    assert re.fullmatch(
        unreachable_message(
            "/api/agents/other/scheduled_batches",
            f"127.0.0.1:{port}",
            "connection refused",
            MAX_ATTEMPTS,
        ),
        str(failure),
    )
    assert len(waits) == MAX_ATTEMPTS - 1


@pytest.mark.parametrize("race", range(5))  # fresh clients: each race goes differently
def test_the_circuit_under_concurrent_requests(socket_calls: SocketCalls, race: int) -> None:
    threads = 8
    port = free_port()
    start = threading.Barrier(threads)
    errors: list[BaseException] = []
    lock = threading.Lock()
    settings = make_settings(f"http://127.0.0.1:{port}")
    with UltravoxClient(settings, KEY, sleep=lambda seconds: None) as client:

        def request(n: int) -> None:
            start.wait()
            try:
                client.get_json(f"/api/agents/{n}/scheduled_batches")
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        workers = [threading.Thread(target=request, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert client.circuit.holding == 0

    assert len(errors) == threads
    assert all(isinstance(e, ApiUnreachable) for e in errors)
    outages = {id(e.outage) for e in errors if isinstance(e, ApiUnreachable)}
    assert len(outages) == 1  # one diagnosis, shared
    opened = [e for e in errors if "another request" not in str(e)]
    assert len(opened) == 1
    assert f"({MAX_ATTEMPTS} attempts over" in str(opened[0])
    # The request that found out made its attempts; each other one at most the one it had
    # started before the first refusal was known (8 * 4 = 32 without the circuit).
    assert MAX_ATTEMPTS <= socket_calls.connects(port) <= MAX_ATTEMPTS + threads - 1


def wrapped_like_requests(inner: Exception) -> requests.ConnectionError:
    """`inner` as requests raises it: in a MaxRetryError, in a requests ConnectionError."""
    pool = urllib3.HTTPConnectionPool("api.ultravox.ai", 443)
    retry = urllib3.exceptions.MaxRetryError(pool, "/api/agents?cursor=c-secret", inner)
    return requests.ConnectionError(retry)


def connection_error(cause: OSError) -> urllib3.exceptions.NewConnectionError:
    """As urllib3 raises it: `raise NewConnectionError(...) from cause`."""
    conn = urllib3.connection.HTTPConnection("api.ultravox.ai", 443)  # never connected
    error = urllib3.exceptions.NewConnectionError(conn, f"Failed to connect: {cause}")
    error.__cause__ = cause
    return error


def name_resolution_error(cause: socket.gaierror) -> urllib3.exceptions.NameResolutionError:
    """As urllib3 raises it: `raise NameResolutionError(...) from cause`."""
    conn = urllib3.connection.HTTPConnection("api.ultravox.ai", 443)
    error = urllib3.exceptions.NameResolutionError("api.ultravox.ai", conn, cause)
    error.__cause__ = cause
    return error


# What the tests above cannot make happen on a machine without a network: the types found
# in the chain decide, the words come from the innermost exception, never the outer URL.
@pytest.mark.parametrize(
    ("inner", "text", "unreachable"),
    [
        (
            connection_error(OSError(errno.ENETUNREACH, "Network is unreachable")),
            "network unreachable",
            True,
        ),
        (
            connection_error(OSError(errno.EHOSTUNREACH, "No route to host")),
            "no route to host",
            True,
        ),
        (
            connection_error(OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")),
            "cannot assign requested address",
            True,
        ),
        (
            name_resolution_error(
                socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            ),
            "DNS lookup failed (temporary failure)",
            True,
        ),
        (
            OSError(errno.EMFILE, "Too many open files"),
            "OSError: [Errno 24] Too many open files",
            False,
        ),
    ],
)
def test_transport_causes_by_type(inner: Exception, text: str, unreachable: bool) -> None:
    cause = describe_transport_failure(wrapped_like_requests(inner), timeout_seconds=30.0)
    assert cause == TransportCause(text, host_unreachable=unreachable)


@pytest.mark.parametrize(
    ("base_url", "endpoint"),
    [
        ("https://api.ultravox.ai", "api.ultravox.ai:443"),
        ("http://api.ultravox.ai/", "api.ultravox.ai:80"),
        ("https://user:secret@proxy.example:8443/base", "proxy.example:8443"),
        ("http://[::1]:9", "[::1]:9"),
    ],
)
def test_endpoint_is_host_and_port_only(base_url: str, endpoint: str) -> None:
    assert endpoint_of(base_url) == endpoint


# -- through the CLI: a run against a host that refuses ----------------------------------------

E2E_ATTEMPTS = 6
E2E_CONCURRENCY = 3


def refused_run(
    run_cli: Any, tmp_path: Path, database_url: str
) -> tuple[CliResult, str, list[str]]:
    """`sync` of three batches against a port nothing listens on.

    Not `-q`: it would leave the `etl` loggers at ERROR for the tests that follow.
    """
    endpoint = f"127.0.0.1:{free_port()}"
    batch_ids = sorted(str(uuid.uuid4()) for _ in range(3))
    config = write_config(
        tmp_path / "etl.toml",
        f"http://{endpoint}",
        [(AGENT, b) for b in batch_ids],
        database_url=database_url,
        max_attempts=E2E_ATTEMPTS,
        concurrency=E2E_CONCURRENCY,
    )
    return run_cli("sync", "--config", str(config)), endpoint, batch_ids


def test_a_run_against_a_refused_port_names_it_and_tries_it_once(
    run_cli: Any,
    engine: Engine,
    database_url: str,
    retry_waits: list[float],
    socket_calls: SocketCalls,
    tmp_path: Path,
) -> None:
    result, endpoint, batch_ids = refused_run(run_cli, tmp_path, database_url)

    assert result.exit_code == 1
    records = rows(engine, "SELECT batch_id, status, error FROM etl_batch_runs ORDER BY batch_id")
    assert [(r.batch_id, r.status) for r in records] == [(b, "failed") for b in batch_ids]
    for record in records:
        assert f"{endpoint} unreachable: connection refused" in record.error
    assert f"{endpoint} unreachable: connection refused" in result.stderr
    assert TEST_API_KEY not in result.stderr + result.stdout
    # Before the circuit each batch spent its own attempts: 3 * 6 connects, 3 * 5 waits.
    # Now one request spends them; the others make at most the attempt they had started.
    port = int(endpoint.rsplit(":", 1)[1])
    assert E2E_ATTEMPTS <= socket_calls.connects(port) <= E2E_ATTEMPTS + E2E_CONCURRENCY - 1
    assert len(retry_waits) <= (E2E_ATTEMPTS - 1) + (E2E_CONCURRENCY - 1)


def test_a_run_against_a_refused_port_fails_once_with_one_clear_line(
    run_cli: Any, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    result, endpoint, batch_ids = refused_run(run_cli, tmp_path, database_url)

    assert result.exit_code == 1
    (line,) = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert f"{endpoint} unreachable: connection refused" in line
    (run,) = rows(engine, "SELECT status, error FROM etl_runs")
    assert run.status == "failed"
    assert f"{endpoint} unreachable: connection refused" in run.error
    records = rows(engine, "SELECT batch_id, status, error FROM etl_batch_runs ORDER BY batch_id")
    assert [(r.batch_id, r.status) for r in records] == [(b, "failed") for b in batch_ids]
    for record in records:
        assert f"{endpoint} unreachable: connection refused" in record.error


# -- permanent failures ----------------------------------------------------------------------


def test_400_is_not_retried(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(400, body=b'{"pageSize": ["bad"]}')
    with pytest.raises(ApiError) as info:
        all_calls(client)
    assert type(info.value) is ApiError
    assert str(info.value) == f'HTTP 400 on GET {CALLS_PATH}: {{"pageSize": ["bad"]}}'
    assert len(fake.requests) == 1
    assert waits == []


@pytest.mark.parametrize("status", [405, 409, 410, 422])
def test_other_4xx_are_not_retried(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float], status: int
) -> None:
    fake.inject(status)
    with pytest.raises(ApiError, match=f"HTTP {status} on GET"):
        all_calls(client)
    assert len(fake.requests) == 1
    assert waits == []


def test_404_is_not_found_and_not_retried(
    fake: FakeUltravox, client: UltravoxClient, waits: list[float]
) -> None:
    with pytest.raises(NotFound) as info:
        all_calls(client)  # no batch added
    assert str(info.value) == f"HTTP 404 on GET {CALLS_PATH}: " + '{"detail":"Not found."}'
    assert len(fake.requests) == 1
    assert waits == []


def test_404_on_a_later_page(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(404, path_contains="cursor=")
    pages, error = collect_until_error(client)
    assert isinstance(error, NotFound)
    assert [p.number for p in pages] == [1]
    assert len(fake.requests) == 2
    assert waits == []


def test_401_wrong_key_is_refused_without_echoing_it(
    fake: FakeUltravox, batch: FakeBatch, waits: list[float]
) -> None:
    wrong = "sk-wrong-9d8c7b6a-also-secret"
    with (
        UltravoxClient(make_settings(fake.base_url), wrong, sleep=waits.append) as c,
        pytest.raises(ApiKeyRefused) as info,
    ):
        all_calls(c)
    message = str(info.value)
    assert "refused the API key" in message
    assert "HTTP 401" in message
    assert wrong not in message and KEY not in message
    assert wrong not in repr(info.value)
    assert len(fake.requests) == 1
    assert fake.requests[0].header("X-API-Key") == wrong
    assert waits == []


@pytest.mark.parametrize("status", [401, 403])
def test_401_403_stop_at_once(
    fake: FakeUltravox,
    batch: FakeBatch,
    client: UltravoxClient,
    waits: list[float],
    status: int,
) -> None:
    fake.inject(status, path_contains="cursor=")
    pages, error = collect_until_error(client)
    assert isinstance(error, ApiKeyRefused)
    assert isinstance(error, ApiError)
    assert "refused the API key" in str(error)
    assert f"HTTP {status}" in str(error)
    assert KEY not in str(error)
    assert [p.number for p in pages] == [1]
    assert len(fake.requests) == 2
    assert waits == []


@pytest.mark.parametrize("status", [401, 403, 400, 404])
def test_a_key_echoed_in_an_error_body_is_scrubbed(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, status: int
) -> None:
    fake.inject(status, body=f'{{"detail": "Invalid API key: {KEY}"}}'.encode())
    with pytest.raises(ApiError) as info:
        all_calls(client)
    assert KEY not in str(info.value)
    assert 'Invalid API key: [API key]"' in str(info.value)


def test_key_never_in_exceptions_or_logs(
    fake: FakeUltravox,
    batch: FakeBatch,
    waits: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    attempts = 8
    settings = make_settings(fake.base_url, max_attempts=attempts)
    with UltravoxClient(settings, KEY, sleep=waits.append) as client:
        fake.next_link_base = "http://evil.example:9"
        fake.inject(429, retry_after="1")
        fake.inject(500, path_contains="cursor=")
        fake.inject(502, path_contains="cursor=", body=b"<html>gateway</html>")
        fake.inject_connection_reset(path_contains="cursor=")
        fake.inject_truncated_body(path_contains="cursor=")
        fake.inject_invalid_json(path_contains="cursor=")
        assert all_calls(client) == batch.calls

        errors: list[Exception] = []
        fake.inject(503, times=attempts)
        fake.inject(404)
        fake.inject(400)
        fake.inject(403)
        fake.inject_payload({"results": "nope", "next": None})
        for _ in range(5):
            with pytest.raises(ApiError) as info:
                all_calls(client)
            errors.append(info.value)
    assert [type(e) for e in errors] == [
        ApiError,
        NotFound,
        ApiError,
        ApiKeyRefused,
        MalformedResponse,
    ]
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
        assert error.__cause__ is None or KEY not in str(error.__cause__)

    # The faults above did produce log lines (retries, the foreign link), none with the key.
    retry_lines = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retry_lines) == 6 + attempts - 1
    assert any("evil.example:9" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in str(record.args)
        assert KEY not in (record.exc_text or "")
    assert KEY not in caplog.text


# -- the configured host only ----------------------------------------------------------------


def test_next_link_to_another_host_uses_the_configured_base_url(
    fake: FakeUltravox,
    batch: FakeBatch,
    client: UltravoxClient,
    waits: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="etl.extract.pagination")
    fake.next_link_base = "http://evil.example:9"
    pages = list(pages_of(client))
    assert [c for p in pages for c in p.results] == batch.calls
    # Every page arrived at the fake: none was lost on the way to another host.
    assert len(fake.requests) == 10
    assert all(r.path == CALLS_PATH for r in fake.requests)
    assert all(r.header("X-API-Key") == KEY for r in fake.requests)
    assert all(r.header("Host") == urlsplit(fake.base_url).netloc for r in fake.requests)
    assert waits == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 9
    assert "'evil.example:9'" in warnings[0].getMessage()
    assert f"batch {BATCH}" in warnings[0].getMessage()


def test_next_link_to_a_live_other_host_receives_nothing(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient
) -> None:
    # The other host would serve the same data to the same key: nothing must reach it.
    with FakeUltravox(api_key=KEY) as other:
        other.add_batch(AGENT, BATCH, batch.calls)
        fake.next_link_base = other.base_url
        assert all_calls(client) == batch.calls
        assert other.requests == []
        assert other.connections_opened == 0
    assert len(fake.requests) == 10


def test_next_link_path_is_ignored_only_cursor_used(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient
) -> None:
    # A link pointing at another path (and page size) still lists the configured batch.
    real = list(pages_of(client))
    cursor = real[1].cursor
    assert cursor is not None
    fake.requests.clear()
    fake.inject_payload(
        {
            "results": batch.calls[:10],
            "next": f"http://evil.example/api/agents/x/scheduled_batches/y/scheduled_calls"
            f"?pageSize=1000&cursor={cursor}",
            "total": 95,
        }
    )
    assert all_calls(client) == batch.calls
    assert [r.path for r in fake.requests] == [CALLS_PATH] * 10
    assert {r.query["pageSize"] for r in fake.requests} == {str(PAGE_SIZE)}


class _RedirectHandler(BaseHTTPRequestHandler):
    """Answers every GET with `server.status` and a Location of `server.location`."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, RedirectServer)
        server.seen.append(self.path)
        body = b"moved"
        self.send_response(server.status)
        self.send_header("Location", server.location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RedirectServer(ThreadingHTTPServer):
    daemon_threads = True
    status = 302
    location = ""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RedirectHandler)
        self.seen: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def redirect_server() -> Iterator[RedirectServer]:
    server = RedirectServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_not_followed(
    fake: FakeUltravox, redirect_server: RedirectServer, waits: list[float], status: int
) -> None:
    # The configured host redirects to another host (the fake, which would accept the key).
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 5))
    redirect_server.status = status
    redirect_server.location = f"{fake.base_url}{CALLS_PATH}"
    redirect_server.seen.clear()
    settings = make_settings(redirect_server.base_url)
    with (
        UltravoxClient(settings, KEY, sleep=waits.append) as c,
        pytest.raises(ApiError) as info,
    ):
        all_calls(c)
    assert type(info.value) is ApiError
    message = str(info.value)
    assert message == (
        f"HTTP {status} redirect on GET {CALLS_PATH} to {urlsplit(fake.base_url).netloc}; "
        "not followed"
    )
    assert redirect_server.seen == [f"{CALLS_PATH}?pageSize={PAGE_SIZE}"]
    assert fake.requests == []
    assert waits == []


def test_redirect_from_the_fake_without_location(
    fake: FakeUltravox, batch: FakeBatch, client: UltravoxClient, waits: list[float]
) -> None:
    fake.inject(302)
    with pytest.raises(ApiError) as info:
        all_calls(client)
    assert str(info.value) == f"HTTP 302 redirect on GET {CALLS_PATH} to ?; not followed"
    assert len(fake.requests) == 1
    assert waits == []


# -- malformed listings ----------------------------------------------------------------------


@pytest.mark.parametrize("cycle", [1, 2, 3])
def test_repeated_cursor_is_an_error_not_a_loop(
    fake: FakeUltravox, client: UltravoxClient, waits: list[float], cycle: int
) -> None:
    fake.add_batch(AGENT, BATCH, [])
    base = fake.base_url
    cursors = [f"c{i}" for i in range(cycle)]
    fake.inject_payload({"results": [{"n": 0}], "next": link(base, cursors[0]), "total": 9})
    for i, cursor in enumerate(cursors):
        following = cursors[(i + 1) % cycle]  # the last one points back at the first
        fake.inject_payload(
            {"results": [{"n": i + 1}], "next": link(base, following), "total": 9},
            path_contains=f"cursor={cursor}",
        )
    pages, error = collect_until_error(client)
    assert isinstance(error, RepeatedCursor)
    assert isinstance(error, MalformedResponse)
    assert f"batch {BATCH}" in str(error)
    assert f"after page {cycle + 1}" in str(error)
    assert [p.number for p in pages] == list(range(1, cycle + 2))
    assert len(fake.requests) == cycle + 1
    assert [r.query.get("cursor") for r in fake.requests] == [None, *cursors]
    assert waits == []


def _body_list() -> Any:
    return [{"status": "FUTURE"}]


MALFORMED = [
    pytest.param({"next": None, "total": 0}, "has no 'results' array", id="results-missing"),
    pytest.param({"results": {"a": 1}, "next": None}, "has no 'results' array", id="not-a-list"),
    pytest.param({"results": None}, "has no 'results' array", id="results-null"),
    pytest.param({"results": [], "next": 5}, "'next' that is not a string", id="next-int"),
    pytest.param({"results": [], "next": ["x"]}, "'next' that is not a string", id="next-list"),
    pytest.param({"results": [], "next": None, "total": -1}, "invalid 'total': -1", id="neg"),
    pytest.param({"results": [], "total": "9"}, "invalid 'total': '9'", id="total-str"),
    pytest.param({"results": [], "total": True}, "invalid 'total': True", id="total-bool"),
    pytest.param({"results": [], "total": 1.5}, "invalid 'total': 1.5", id="total-float"),
    pytest.param(_body_list(), "is not a JSON object", id="body-list"),
    pytest.param("results", "is not a JSON object", id="body-string"),
    pytest.param(None, "is not a JSON object", id="body-null"),
    pytest.param(
        {"results": [], "next": "http://x/?page=2"}, "next link has no cursor", id="no-cursor"
    ),
]


@pytest.mark.parametrize(("payload", "problem"), MALFORMED)
def test_malformed_first_page(
    fake: FakeUltravox,
    batch: FakeBatch,
    client: UltravoxClient,
    waits: list[float],
    payload: Any,
    problem: str,
) -> None:
    fake.inject_payload(payload)
    with pytest.raises(MalformedResponse) as info:
        all_calls(client)
    message = str(info.value)
    assert message.startswith(f"batch {BATCH}: ")
    assert problem in message
    if problem != "next link has no cursor":
        assert "page 1 " in message
    assert len(fake.requests) == 1
    assert waits == []


@pytest.mark.parametrize(("payload", "problem"), MALFORMED[:10])
def test_malformed_later_page_is_named(
    fake: FakeUltravox,
    batch: FakeBatch,
    client: UltravoxClient,
    payload: Any,
    problem: str,
) -> None:
    fake.inject_payload(payload, path_contains="cursor=")
    pages, error = collect_until_error(client)
    assert isinstance(error, MalformedResponse)
    assert f"batch {BATCH}: page 2 " in str(error)
    assert problem in str(error)
    assert [p.number for p in pages] == [1]
    assert len(fake.requests) == 2


def test_total_may_be_absent(fake: FakeUltravox, client: UltravoxClient) -> None:
    fake.add_batch(AGENT, BATCH, [])
    fake.inject_payload({"results": [{"a": 1}], "next": None})
    assert list(pages_of(client)) == [
        Page(number=1, results=[{"a": 1}], total=None, cursor=None, is_last=True, lenient=False)
    ]


# -- parse_retry_after -----------------------------------------------------------------------

NOW = 1_700_000_000.0


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        ("120", 120.0),
        (" 42 ", 42.0),
        ("86400", 86400.0),
        (http_date(NOW + 90), 90.0),
        (http_date(NOW - 90), 0.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("Tue, 14 Nov 2023 22:13:50 -0000", 30.0),  # NOW + 30 s, no zone: read as UTC
        (None, None),
        ("", None),
        ("   ", None),
        ("soon", None),
        ("1.5", None),
        ("-5", None),
        ("²", None),
        ("Mon, 99 Foo 2024 00:00:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_uses_the_clock() -> None:
    future = parse_retry_after(http_date(time.time() + 60))
    assert future is not None and 58.0 <= future <= 60.0
    assert parse_retry_after(http_date(time.time() - 3600)) == 0.0


# -- total wait budget, rate cap, NUL hint ----------------------------------------------------


def test_total_wait_budget_stops_retrying_before_attempts_run_out(fake: FakeUltravox) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 3))
    fake.inject(429, times=10, retry_after="40")
    waits: list[float] = []
    settings = make_settings(fake.base_url, max_attempts=10, max_wait_seconds=100.0)
    with (
        UltravoxClient(settings, KEY, sleep=waits.append) as client,
        pytest.raises(ApiError, match="after 3 attempts"),
    ):
        list(pages_of(client))
    # 40 + 40 = 80 s waited; a third pause would make 120 s, over the 100 s budget.
    assert waits == [40.0, 40.0]
    assert len(fake.requests) == 3


def test_rate_limiter_spaces_requests_across_threads() -> None:
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)

    limiter = RateLimiter(4.0, monotonic=lambda: clock[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == [0.25, 0.5]
    clock[0] += 10.0  # idle for a while: no burst credit is saved up beyond the next slot
    limiter.wait()
    assert slept == [0.25, 0.5]


def test_client_requests_pass_the_rate_limiter(fake: FakeUltravox) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 30))
    calls: list[None] = []

    class CountingLimiter(RateLimiter):
        def wait(self) -> None:
            calls.append(None)

    with UltravoxClient(
        make_settings(fake.base_url), KEY, rate_limiter=CountingLimiter(1.0)
    ) as client:
        pages = list(pages_of(client))
    assert len(calls) == len(pages) == len(fake.requests)


def test_nul_hint_follows_the_json_text(fake: FakeUltravox, client: UltravoxClient) -> None:
    fake.add_batch(AGENT, BATCH, [])
    fake.inject_payload({"results": [{"error": "a\x00b"}], "next": None})
    [page] = pages_of(client)
    assert page.lenient is True and page.results == [{"error": "a\x00b"}]
    [page] = pages_of(client)
    assert page.lenient is False
