"""Why a request got no HTTP answer, in plain words, from the exception requests raised.

requests wraps urllib3's exceptions, which wrap the socket's and ssl's. The fact an operator
needs (refused, a name that does not resolve, a certificate, a timeout) sits several levels
down, while the outer messages repeat the URL with its query string and object reprs. So the
whole chain is searched by exception type, and only the innermost text is ever quoted.
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import ssl
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import urllib3.exceptions


@dataclass(frozen=True, slots=True)
class TransportCause:
    """What went wrong below HTTP, and whether it means the host cannot be reached at all."""

    text: str
    """A short cause in plain words, e.g. "connection refused" or "timed out after 30s (read)"."""
    host_unreachable: bool
    """True when no connection to the host could be made (refused, DNS, TLS, connect timeout,
    a proxy that cannot get through): every request of the run would fail the same way. False
    when a connection was made and the exchange broke (read timeout, reset, body cut short):
    the host is up, and another request may well succeed."""


def endpoint_of(base_url: str) -> str:
    """host:port of a base URL, for messages: never its user info, path or query."""
    parts = urlsplit(base_url)
    host = parts.hostname or "?"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # out of range or not a number: requests will fail on it anyway
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{host}:{port}"


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it wraps, outermost first, each once.

    requests and urllib3 wrap by passing the inner exception as an argument (requests'
    ConnectionError, urllib3's ProtocolError and SSLError) or as `reason` (MaxRetryError),
    not only through `__cause__`/`__context__`; all four links are followed.
    """
    chain: list[BaseException] = []
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        chain.append(current)
        reason = getattr(current, "reason", None)
        linked = [
            *(arg for arg in current.args if isinstance(arg, BaseException)),
            *([reason] if isinstance(reason, BaseException) else []),
            *([current.__cause__] if current.__cause__ is not None else []),
            *([current.__context__] if current.__context__ is not None else []),
        ]
        pending.extend(linked)
    return chain


E = TypeVar("E", bound=BaseException)

_EAI_WORDS: dict[int | None, str] = {
    socket.EAI_NONAME: "name not known",
    socket.EAI_AGAIN: "temporary failure",
}
_ERRNO_WORDS: dict[int | None, str] = {
    errno.ECONNREFUSED: "connection refused",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "no route to host",
    errno.ECONNRESET: "connection reset",
}
_SSL_LIBRARY_TAG = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\]\s*")
_SSL_SOURCE_TAG = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _innermost(chain: list[BaseException], kind: type[E]) -> E | None:
    """The deepest exception of `kind` in the chain: the most specific account of it."""
    for exc in reversed(chain):
        if isinstance(exc, kind):
            return exc
    return None


def _first_line(exc: BaseException, limit: int = 120) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return text[:limit] + "…" if len(text) > limit else text


def _tls_text(chain: list[BaseException]) -> str:
    """The ssl module's reason without its library and source tags."""
    ssl_error = _innermost(chain, ssl.SSLError)
    source = ssl_error or _innermost(chain, urllib3.exceptions.SSLError)
    if source is None:
        return "TLS error"
    text = _SSL_SOURCE_TAG.sub("", _SSL_LIBRARY_TAG.sub("", _first_line(source)))
    return f"TLS error: {text}" if text else "TLS error"


def _dns_text(chain: list[BaseException]) -> str:
    lookup = _innermost(chain, socket.gaierror)
    if lookup is None:
        return "DNS lookup failed"
    words = _EAI_WORDS.get(lookup.errno) or (lookup.strerror or "").lower()
    return f"DNS lookup failed ({words})" if words else "DNS lookup failed"


def _os_error_text(error: OSError) -> str:
    if error.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[error.errno]
    return (error.strerror or _first_line(error) or type(error).__name__).lower()


def _proxy_endpoint(chain: list[BaseException]) -> str:
    """host:port of the proxy a failed connection went to, when urllib3 says which."""
    for exc in reversed(chain):
        conn = getattr(exc, "conn", None)
        host, port = getattr(conn, "host", None), getattr(conn, "port", None)
        if isinstance(host, str) and isinstance(port, int):
            return f"proxy {host}:{port}"
    return "the proxy"


def describe_transport_failure(exc: BaseException, *, timeout_seconds: float) -> TransportCause:
    """Name the cause of a request that got no HTTP answer.

    `timeout_seconds` is the timeout the request was sent with (requests applies it to the
    connect and to each read), so a timeout can say how long was waited.
    """
    chain = exception_chain(exc)
    cause = _classify(chain, timeout_seconds)
    if _innermost(chain, urllib3.exceptions.ProxyError) is not None:
        # Nothing gets through a proxy that cannot be reached or will not tunnel.
        return TransportCause(f"{cause.text} at {_proxy_endpoint(chain)}", host_unreachable=True)
    return cause


def _classify(chain: list[BaseException], timeout_seconds: float) -> TransportCause:
    # Most specific first: urllib3's NameResolutionError and NewConnectionError are
    # subclasses of its ConnectTimeoutError, and requests' SSLError of its ConnectionError.
    def has(*kinds: type[BaseException]) -> bool:
        return any(isinstance(exc, kinds) for exc in chain)

    if has(ssl.SSLError, urllib3.exceptions.SSLError, requests.exceptions.SSLError):
        return TransportCause(_tls_text(chain), host_unreachable=True)
    if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
        return TransportCause(_dns_text(chain), host_unreachable=True)
    new_connection = _innermost(chain, urllib3.exceptions.NewConnectionError)
    if new_connection is not None:
        # Only below it: requests' own exceptions are OSErrors too, and quote the URL.
        os_error = _innermost(exception_chain(new_connection)[1:], OSError)
        text = _os_error_text(os_error) if os_error is not None else "connection failed"
        return TransportCause(text, host_unreachable=True)
    wait = f"{timeout_seconds:g}s"
    if has(urllib3.exceptions.ConnectTimeoutError, requests.exceptions.ConnectTimeout):
        return TransportCause(f"timed out after {wait} (connect)", host_unreachable=True)
    if has(urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout):
        return TransportCause(f"timed out after {wait} (read)", host_unreachable=False)
    if has(
        urllib3.exceptions.IncompleteRead,
        http.client.IncompleteRead,
        urllib3.exceptions.InvalidChunkLength,
        requests.exceptions.ChunkedEncodingError,
    ):
        return TransportCause("response cut short", host_unreachable=False)
    if has(http.client.RemoteDisconnected):
        return TransportCause("connection closed without a response", host_unreachable=False)
    if has(ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return TransportCause("connection reset", host_unreachable=False)
    if has(requests.exceptions.ContentDecodingError):
        return TransportCause("response body could not be decoded", host_unreachable=False)
    root = chain[-1]
    line = _first_line(root)
    text = f"{type(root).__name__}: {line}" if line else type(root).__name__
    return TransportCause(text, host_unreachable=False)
