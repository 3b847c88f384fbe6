"""HTTP client for the Ultravox REST API: one keep-alive session, retries, clear errors.

The API key travels only in the `X-API-Key` header of requests to the configured base URL:
redirects are never followed (requests would carry a custom header to any host), and
pagination links are reduced to their cursor by :mod:`etl.extract.pagination`.

A request that gets no HTTP answer names the host and the cause (etl.extract.transport); a
host that cannot be reached at all stops every request of the client at once, after one
request's retries (etl.extract.circuit).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import tenacity
from tenacity.wait import wait_base

from etl import __version__
from etl.config import ApiSettings
from etl.extract.circuit import HostCircuit, Outage, Ticket, attempts_text
from etl.extract.ratelimit import RateLimiter
from etl.extract.transport import TransportCause, describe_transport_failure, endpoint_of

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]


class ApiError(Exception):
    """A request to the Ultravox API failed for good."""


class RunStopping(ApiError):
    """A failure no other request of the run can get past: the run stops, failed, at once."""

    @property
    def reason(self) -> str:
        """What the run record and the summary say stopped the run."""
        return str(self)


class ApiKeyRefused(RunStopping):
    """401/403: the key is wrong, revoked or lacks access. Nothing else can succeed."""


class NotFound(ApiError):
    """404: the agent, batch or cursor does not exist."""


class MalformedResponse(ApiError):
    """A 200 answer whose JSON does not have the documented shape."""


class ApiUnreachable(RunStopping):
    """The API host could not be reached for a whole retry budget: nothing else can succeed.

    Raised by every request of the client from then on, at once. `outage` names the host,
    the cause and how long it was tried, the same for every request.
    """

    def __init__(self, message: str, outage: Outage) -> None:
        super().__init__(message)
        self.outage = outage

    @property
    def reason(self) -> str:
        return str(self.outage)


class TransientError(Exception):
    """A failure worth retrying: 429, 5xx, a dropped connection, a body cut short or not JSON.

    `transport` is set when no HTTP answer arrived, and says why.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        transport: TransportCause | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.transport = transport


_TRANSIENT_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    # ASCII only: headers arrive latin-1 decoded and str.isdigit() accepts "²", which
    # float() rejects; the ValueError escaped get_json instead of falling back to backoff.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def retry_sleep(seconds: float) -> None:
    """Pause between attempts. Looked up at call time, so tests can record waits instead."""
    time.sleep(seconds)


class wait_retry_after(wait_base):  # noqa: N801 - tenacity's naming style for wait strategies
    """Wait as long as the server's `Retry-After` says (capped), else fall back."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, self.cap)
        return float(self.fallback(retry_state))


class stop_after_waiting(tenacity.stop.stop_base):  # noqa: N801 - tenacity's naming style
    """Stop once the pauses between attempts would add up to more than `max_wait` seconds."""

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return retry_state.idle_for + (retry_state.upcoming_sleep or 0.0) > self.max_wait


class stop_when_circuit_open(tenacity.stop.stop_base):  # noqa: N801 - tenacity's naming style
    """Stop as soon as the circuit is open: another request found the host unreachable."""

    def __init__(self, circuit: HostCircuit) -> None:
        self.circuit = circuit

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.circuit.outage is not None


# orjson reads an integer literal beyond 64 bits as a float (silently rounded); the json
# module keeps it exact. Any run of 19 digits (in a number or not) sends the body to the json
# module: 19 digits is the shortest integer beyond the signed 64-bit range. Found by mapping
# every digit to "0" and searching for 19 of them: ~15 times faster than re's \d{19,}, which
# took twice as long as orjson's parse of the same page.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
MAX_PARSED_DEPTH = 200
"""Deeper values are cut from a body the json module cannot parse for its depth (see
parse_json); a record holding one is then rejected for its depth, its page still loads."""


def parse_json(content: bytes) -> tuple[Any, bool]:
    """Decode a JSON body: the value, and whether it was read leniently.

    orjson first (several times faster); else the json module, which reads what orjson
    turns into floats (integers beyond 64 bits) or refuses (NaN, 1e400, lone surrogate
    escapes, nesting beyond 1,024 levels): such a body is "lenient", and its records need
    every check before they are stored. Raises ValueError for a body that is not JSON.
    """
    if _LONG_DIGIT_RUN not in content.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(content), False
        except orjson.JSONDecodeError:
            pass  # the json module decides: it accepts a little more, or raises ValueError
    try:
        return json.loads(content), True
    except RecursionError:
        return json.loads(_cut_deeper_than(content, MAX_PARSED_DEPTH)), True


def _cut_deeper_than(content: bytes, depth_limit: int) -> bytes:
    """The JSON text with each object or array nested deeper than `depth_limit` replaced by
    a string saying so, so the rest parses within Python's recursion limit."""
    out = bytearray()
    depth = 0
    copied = 0
    cut_from: int | None = None
    for token in _JSON_TOKEN.finditer(content):
        kind = token.group()[:1]
        if kind == b'"':
            continue
        if kind in b"[{":
            depth += 1
            if depth == depth_limit + 1 and cut_from is None:
                cut_from = token.start()
        else:
            if depth == depth_limit + 1 and cut_from is not None:
                out += content[copied:cut_from]
                out += b'"(nested deeper than %d levels: not read)"' % depth_limit
                copied = token.end()
                cut_from = None
            depth -= 1
    out += content[copied:]
    return bytes(out)


@dataclass(frozen=True, slots=True)
class ApiResponse:
    body: Any
    lenient: bool
    """True when the body may hold what a database cannot store as it is: U+0000 or a lone
    surrogate (\\u0000, \\ud800 escapes), or values only the json module reads (NaN,
    1e400, integers beyond 64 bits, deep nesting). Its records then get every check."""
    digest: bytes = b""
    """A digest of the body's bytes: equal bodies, equal digests (see etl.load.page_memory)."""


class ApiKeyHeader(requests.auth.AuthBase):
    """The API key in the `X-API-Key` header, as the session's auth: with an auth of its own,
    requests never looks in ~/.netrc for another (a file lookup before every request, and a
    password nobody configured sent to the API)."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["X-API-Key"] = self._api_key
        return request


class UltravoxClient:
    """GET JSON from the configured Ultravox API with bounded, jittered retries.

    Safe to share between threads: requests go through one keep-alive session and one rate
    limiter, and each request gets its own retry state.
    """

    def __init__(
        self,
        settings: ApiSettings,
        api_key: str,
        *,
        sleep: Sleep | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.rate_limiter = rate_limiter or RateLimiter(settings.max_requests_per_second)
        self.base_url = settings.base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.endpoint = endpoint_of(self.base_url)
        """host:port, the way messages name the API host."""
        self.circuit = HostCircuit(self.endpoint)
        self._api_key = api_key  # only to scrub it from error bodies quoted in messages
        self._session = requests.Session()
        pool = max(10, settings.concurrency * 2)
        self._session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=pool))
        self._session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=pool))
        self._session.headers.update(
            {"Accept": "application/json", "User-Agent": f"ultravox-etl/{__version__}"}
        )
        self._session.auth = ApiKeyHeader(api_key)
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.max_attempts)
            | stop_after_waiting(settings.max_wait_seconds)
            | stop_when_circuit_open(self.circuit),
            wait=wait_retry_after(
                tenacity.wait_exponential_jitter(
                    multiplier=settings.backoff_initial_seconds,
                    jitter=settings.backoff_initial_seconds,
                    max=settings.backoff_max_seconds,
                ),
                cap=settings.retry_after_max_seconds,
            ),
            retry=tenacity.retry_if_exception_type(TransientError),
            sleep=sleep or (lambda seconds: retry_sleep(seconds)),
            before_sleep=self._log_retry,
            reraise=True,
        )

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> UltravoxClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_json(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        """GET `path` (relative to the base URL) and return the decoded JSON body."""
        return self.fetch(path, params).body

    def fetch(self, path: str, params: Mapping[str, str | int] | None = None) -> ApiResponse:
        """GET `path` (relative to the base URL): the decoded JSON body and a NUL hint.

        Raises ApiKeyRefused, NotFound, ApiUnreachable once the host is known to be
        unreachable, ApiError for other failures, and ApiError wrapping the last
        TransientError once the attempts or the total wait are spent.
        """
        url = f"{self.base_url}{path}"
        retrying = self._retrying.copy()
        with self.circuit.ticket() as ticket:
            try:
                return retrying(self._get_once, url, params or {}, ticket)
            except TransientError as exc:
                raise self._gave_up(path, exc, ticket, retrying.statistics) from None

    def _gave_up(
        self, path: str, last: TransientError, ticket: Ticket, statistics: Mapping[str, Any]
    ) -> ApiError:
        """The error for a request whose retries are spent (or cut short by the circuit)."""
        attempts = int(statistics.get("attempt_number", 1))
        seconds = float(statistics.get("delay_since_first_attempt", 0.0))
        cause = last.transport
        if cause is not None and cause.host_unreachable:
            outage = self.circuit.give_up(ticket, cause.text, attempts, seconds)
        else:
            outage = self.circuit.outage
        if outage is not None:
            if ticket.opened_circuit:
                return ApiUnreachable(f"GET {path}: {outage}", outage)
            return _unreachable_for_another(path, outage)
        if cause is not None:
            return ApiError(f"{last} ({attempts_text(attempts)} over {seconds:.1f}s)")
        return ApiError(f"GET {path} failed after {attempts} attempts: {last}")

    def _get_once(self, url: str, params: Mapping[str, str | int], ticket: Ticket) -> ApiResponse:
        path = urlsplit(url).path
        outage = self.circuit.admit(ticket)
        if outage is not None:
            raise _unreachable_for_another(path, outage)
        self.rate_limiter.wait()
        try:
            response = self._session.get(
                url, params=params, timeout=self.settings.timeout_seconds, allow_redirects=False
            )
        except _TRANSIENT_EXCEPTIONS as exc:
            cause = describe_transport_failure(exc, timeout_seconds=self.settings.timeout_seconds)
            if cause.host_unreachable:
                self.circuit.host_unreachable(ticket)
                message = f"GET {path}: {self.endpoint} unreachable: {cause.text}"
            else:
                self.circuit.host_answered()
                message = f"GET {path}: {self.endpoint}: {cause.text}"
            raise TransientError(message, transport=cause) from None
        self.circuit.host_answered()
        status = response.status_code
        if status == 200:
            content = response.content
            try:
                body, lenient = parse_json(content)
            except ValueError:
                raise TransientError(f"GET {path}: the 200 response is not valid JSON") from None
            lenient = (
                lenient or b"\\u0000" in content or _SURROGATE_ESCAPE.search(content) is not None
            )
            return ApiResponse(body, lenient, hashlib.blake2b(content, digest_size=16).digest())
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientError(f"HTTP {status} on GET {path}", retry_after=retry_after)
        detail = _detail(response, self._api_key)
        if status in (401, 403):
            raise ApiKeyRefused(
                f"the Ultravox API refused the API key (HTTP {status}{detail}); "
                f"check ULTRAVOX_API_KEY"
            )
        if status == 404:
            raise NotFound(f"HTTP 404 on GET {path}{detail}")
        if 300 <= status < 400:
            target = urlsplit(response.headers.get("Location", "")).netloc or "?"
            raise ApiError(f"HTTP {status} redirect on GET {path} to {target}; not followed")
        raise ApiError(f"HTTP {status} on GET {path}{detail}")

    @staticmethod
    def _log_retry(retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning("%s; retrying in %.1fs (attempt %d)", exc, wait, retry_state.attempt_number + 1)


def _unreachable_for_another(path: str, outage: Outage) -> ApiUnreachable:
    """The error of a request stopped because another one found the host unreachable."""
    tried = f"another request gave up after {attempts_text(outage.attempts)}"
    message = (
        f"GET {path}: {outage.endpoint} unreachable: {outage.cause} "
        f"({tried} over {outage.seconds:.1f}s)"
    )
    return ApiUnreachable(message, outage)


def _detail(response: requests.Response, api_key: str) -> str:
    """A short, single-line excerpt of an error body for the message."""
    text = response.text.strip().replace("\n", " ")
    # A server or gateway that echoes the key it refused ("Invalid API key: sk-...") must
    # not put it into the message, which ends up in logs and in etl_runs.
    if api_key:
        text = text.replace(api_key, "[API key]")
    if not text:
        return ""
    if len(text) > 200:
        text = text[:200] + "…"
    return f": {text}"
