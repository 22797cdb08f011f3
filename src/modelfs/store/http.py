"""A minimal HTTP/1.1 client for the lean lane: GETs over a pool of keep-alive connections.

urllib3 + http.client spend more CPU per GET than the lean lane can afford (header parsing
through the `email` package, a pool manager keyed by URL, layers of response wrappers; see
docs/performance.md). The lean lane only ever sends GETs to one host and only takes answers
with a Content-Length, so it needs a small part of that: write the request, read the status
line and headers, read the body.

What it does not do, by design (the caller sends such requests through botocore instead):
proxies, redirects, `Transfer-Encoding: chunked` answers (`Response.length` is None: the caller
must treat the answer as unusable), HTTP/1.0 servers, 100-continue.

Connections: a reused connection may have been closed by the server while idle. If sending on
it fails, or it closes before a status line arrives, the request is sent once more on a new
connection (safe: every request of this client is a GET). A connection idle for more than
`IDLE_LIMIT` is not reused at all: a server, NAT or firewall may have dropped it without a
word, and a request sent on it would wait out the whole read timeout. Every connection has TCP
keepalive (first probe after `KEEPALIVE_IDLE` s of silence), so a peer that vanished during a
long wait is noticed in about half a minute. Any other failure raises
`HttpError` and closes the connection. A connection returns to the pool only when its answer
was read to the end and the server did not ask to close it.

TLS: an https origin is verified against the CA bundle (a PEM file) given to the pool, host
name included; the caller passes the bundle botocore uses, so both lanes trust the same
servers.

Thread safety: `ConnectionPool._lock` guards only the idle deque; it is never held during I/O
and no other lock is taken while it is held. A connection and a `Response` belong to one
thread at a time.
"""

from __future__ import annotations

import collections
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

IDLE_LIMIT = 20.0  # seconds a pooled connection may sit idle and still be reused
KEEPALIVE_IDLE = 15  # seconds of silence before the first TCP keepalive probe
KEEPALIVE_INTERVAL = 5  # seconds between probes
KEEPALIVE_COUNT = 3  # unanswered probes before the kernel drops the connection
_MAX_HEADER_LINE = 65536
_MAX_HEADERS = 200
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpError(Exception):
    """The request could not be completed (connect, send, or a malformed answer)."""


class Origin:
    """Scheme, host and port of the server, and the Host header botocore signs for it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        shown = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        if parts.port is not None and parts.port != _DEFAULT_PORTS[parts.scheme]:
            shown = f"{shown}:{parts.port}"
        self.host_header = shown
        self.url_prefix = f"{parts.scheme}://{parts.netloc}"  # as written in the URL

    def path_of(self, url: str) -> str | None:
        """The path (with query) of `url` if it is written with this origin, else None."""
        prefix = self.url_prefix
        if not url.startswith(prefix):
            return None
        path = url[len(prefix) :]
        if path == "":
            return "/"
        return path if path[0] in "/?" else None


class Response:
    """An answer whose body is read with `read(amount)`; `close()` when done with it."""

    def __init__(
        self,
        pool: ConnectionPool,
        connection: _Connection,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self.status = status
        self.headers = headers  # names in lower case
        self._pool = pool
        self._connection: _Connection | None = connection
        length = headers.get("content-length")
        self.length = int(length) if length is not None and length.isdigit() else None
        if "transfer-encoding" in headers:
            self.length = None
        self._remaining = self.length or 0
        self._reusable = self.length is not None and "close" not in (
            headers.get("connection", "").lower()
        )

    def read(self, amount: int) -> bytes:
        """Up to `amount` bytes of the body (fewer only at its end); b"" once it is all read."""
        connection = self._connection
        if connection is None or self._remaining <= 0:
            return b""
        try:
            data: bytes = connection.reader.read(min(amount, self._remaining))
        except OSError as exc:
            self._abandon()
            raise HttpError(f"reading the body: {exc}") from exc
        if not data:
            self._abandon()
            raise HttpError(f"connection closed with {self._remaining} bytes of the body unread")
        self._remaining -= len(data)
        return data

    def read_all(self) -> bytes:
        pieces = []
        while self._remaining > 0:
            pieces.append(self.read(self._remaining))
        self.close()
        return b"".join(pieces)

    def close(self) -> None:
        """Return the connection to the pool if the body was read to its end, else close it."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._reusable and self._remaining == 0:
            self._pool.put_back(connection)
        else:
            connection.close()

    def _abandon(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = 0.0  # when it went back to the pool (pool clock)
        reader = sock.makefile("rb", buffering=io.DEFAULT_BUFFER_SIZE * 8)
        self.reader = cast(io.BufferedReader, reader)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __del__(self) -> None:
        # A pool dropped with its store still holds idle connections: close them quietly.
        self.close()


class ConnectionPool:
    """Keep-alive connections to one origin; thread safe (one request per connection)."""

    def __init__(
        self,
        origin: Origin,
        *,
        max_idle: int,
        connect_timeout: float,
        read_timeout: float,
        ca_bundle: str | None = None,
        idle_limit: float = IDLE_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`ca_bundle`: the CAs an https origin is verified against (None: the system's)."""
        self.origin = origin
        self._max_idle = max(1, max_idle)
        self._idle_limit = idle_limit
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: collections.deque[_Connection] = collections.deque()
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        if origin.scheme == "https":
            self._tls = ssl.create_default_context(cafile=ca_bundle)

    def get(self, target: str, headers: Mapping[str, str]) -> Response:
        """Send `GET target` (a path with its query) and read the answer's status and headers."""
        request = _encode_request(target, self.origin.host_header, headers)
        connection = self._take_idle()
        if connection is not None:
            response = self._exchange(connection, request, reused=True)
            if response is not None:
                return response
        response = self._exchange(self._connect(), request, reused=False)
        assert response is not None
        return response

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = self._clock()
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), collections.deque()
        for connection in idle:
            connection.close()

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection, unless it sat idle too long; then it and
        every older one are closed (the deque is oldest first)."""
        oldest_usable = self._clock() - self._idle_limit
        with self._lock:
            if not self._idle:
                return None
            if self._idle[-1].idle_since >= oldest_usable:
                return self._idle.pop()
            stale, self._idle = list(self._idle), collections.deque()
        for connection in stale:
            connection.close()
        return None

    def _connect(self) -> _Connection:
        origin = self.origin
        try:
            sock = socket.create_connection(
                (origin.hostname, origin.port), timeout=self._connect_timeout
            )
        except OSError as exc:
            raise HttpError(f"connecting to {origin.host_header}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keep_alive(sock)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=origin.hostname)
            sock.settimeout(self._read_timeout)
        except OSError as exc:
            sock.close()
            raise HttpError(f"connecting to {origin.host_header}: {exc}") from exc
        return _Connection(sock)

    def _exchange(
        self, connection: _Connection, request: bytes, *, reused: bool
    ) -> Response | None:
        """Send and read the head. None: a reused connection turned out closed (try anew)."""
        try:
            connection.sock.sendall(request)
            status_line = connection.reader.readline(_MAX_HEADER_LINE + 1)
            if not status_line and reused:
                connection.close()
                return None
            status = _parse_status(status_line)
            headers = _read_headers(connection.reader)
        except (OSError, HttpError) as exc:
            connection.close()
            if reused and isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                return None
            if isinstance(exc, HttpError):
                raise
            raise HttpError(f"request to {self.origin.host_header}: {exc}") from exc
        return Response(self, connection, status, headers)


def _keep_alive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, option):  # Linux; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _encode_request(target: str, host: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items() if name.lower() != "host")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_status(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return int(parts[1])


def _read_headers(reader: io.BufferedReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = reader.readline(_MAX_HEADER_LINE + 1)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line.endswith(b"\n"):
            raise HttpError("connection closed (or line too long) in the answer's headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise HttpError(f"malformed header line {line[:80]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise HttpError("too many header lines in the answer")
