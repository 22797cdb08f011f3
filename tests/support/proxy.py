"""`FaultProxy`: a counting, fault-injecting HTTP reverse proxy in front of an S3 server.

    client (boto3, modelfs) --HTTP/1.1 keep-alive--> FaultProxy 127.0.0.1:PORT --> upstream S3

Every request is recorded (`requests`, `count(...)`) before it is forwarded, so a test can
say exactly which GETs and ranges reached "the network". Faults apply to the next N requests
(or to every request) that match an optional predicate:

- delay:     wait `seconds`, then forward normally (all matching delays add up);
- status:    answer an S3-style XML error (500, 503, ...) without forwarding;
- reset:     forward, send the headers and `after_bytes` of the body, then reset the TCP
             connection (SO_LINGER 0); `after_bytes=None` resets before any answer;
- truncate:  forward, send the headers (Content-Length of the whole body) and `after_bytes`
             of the body, then close the connection cleanly (FIN): a body cut short;
- cut:       the request's turn: send the upstream its headers and `after_bytes` of its body,
             then close that connection and reset the client's: a client (or a connection)
             that died while sending, as the server sees it;
- stall:     forward, send the headers and `after_bytes` of the body, then send nothing more
             (until the proxy stops): a source that hangs mid-download;
- corrupt:   forward, with the body's byte at offset `after_bytes` flipped: wrong bytes;
- throttle:  forward, sending the body at `rate` bytes/s: a source below a throughput floor;
- blackhole: accept the request and never answer (until the proxy stops).

Each request records when it arrived and when the proxy was done with it (`started`,
`finished`, monotonic), so a test can count the requests in flight at any moment.

Besides the delays, the first matching fault (in injection order) is the one that applies.

A skewed clock: `clock_offset` (seconds, default 0) moves the X-Amz-Date (and Date) header of
every forwarded request, as if the client's clock were that far off. The signature no longer
matches the moved date; S3 servers (SeaweedFS included) check the time first, and answer
RequestTimeTooSkewed, as they do for a client whose clock is wrong.

Bodies are streamed both ways in 1 MiB pieces through one reused buffer per connection, so a
1 GiB GET never sits in memory. The Host header is forwarded unchanged: SigV4 signs it, and
the upstream verifies the signature against what it receives. Stdlib only.
"""

from __future__ import annotations

import calendar
import email.utils
import http.client
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

FaultKind = Literal[
    "delay", "status", "reset", "truncate", "cut", "stall", "corrupt", "blackhole", "throttle"
]
Predicate = Callable[["ProxyRequest"], bool]

_PIECE = 1 << 20  # streaming buffer: big enough for GB/s, small enough per connection
_THROTTLED_PIECE = 16 << 10  # a throttled body trickles in pieces this small
_UPSTREAM_TIMEOUT = 300.0  # a stuck upstream must not pin a proxy thread forever
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",  # the proxy answers 100-continue itself
    }
)
_ERROR_CODES = {
    403: "AccessDenied",
    404: "NoSuchKey",
    500: "InternalError",
    501: "NotImplemented",
    502: "BadGateway",
    503: "SlowDown",
    504: "GatewayTimeout",
}


@dataclass
class ProxyRequest:
    """One request as the proxy saw it, and what the client got back."""

    method: str
    path: str
    range: str | None
    headers: dict[str, str]
    status: int | None = None  # None: no answer (reset before reply, blackhole)
    fault: FaultKind | None = None
    response_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None  # when the proxy was done with it (None: not yet)


@dataclass
class Fault:
    kind: FaultKind
    remaining: int | None  # None: every matching request, until cleared
    match: Predicate | None = None
    seconds: float = 0.0
    status: int = 503
    after_bytes: int | None = 0
    rate: float = 0.0  # throttle: bytes/s

    def applies_to(self, request: ProxyRequest) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            self.match is None or self.match(request)
        )


@dataclass
class _Plan:
    delay: float = 0.0
    terminal: Fault | None = None
    kinds: list[FaultKind] = field(default_factory=list)


def method_is(method: str) -> Predicate:
    """Predicate: requests with this HTTP method (e.g. "GET")."""
    return lambda request: request.method == method


def path_contains(text: str) -> Predicate:
    return lambda request: text in request.path


class FaultProxy:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(self, upstream: str, *, port: int = 0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port)
        self._lock = threading.Lock()
        self._requests: list[ProxyRequest] = []
        self._faults: list[Fault] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", port), _Handler, self)
        self._thread: threading.Thread | None = None
        self.clock_offset = 0.0  # seconds added to the date of each forwarded request

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fault-proxy-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release blackholed requests and drop every open connection."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what went through -------------------------------------------------------------------

    @property
    def requests(self) -> list[ProxyRequest]:
        """A snapshot of the requests seen so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        ranged: bool | None = None,
    ) -> int:
        """Requests seen with this method / path substring / (ranged=True) a Range header."""
        return sum(
            1
            for request in self.requests
            if (method is None or request.method == method)
            and (path_contains is None or path_contains in request.path)
            and (ranged is None or (request.range is not None) == ranged)
        )

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- faults ------------------------------------------------------------------------------

    def delay_next(
        self, seconds: float, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("delay", times, match, seconds=seconds))

    def fail_next(
        self, status: int = 503, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("status", times, match, status=status))

    def reset_next(
        self, after_bytes: int | None = 0, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("reset", times, match, after_bytes=after_bytes))

    def truncate_next(
        self, after_bytes: int = 0, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("truncate", times, match, after_bytes=after_bytes))

    def cut_request_next(
        self, after_bytes: int = 0, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("cut", times, match, after_bytes=after_bytes))

    def stall_next(
        self, after_bytes: int = 0, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("stall", times, match, after_bytes=after_bytes))

    def corrupt_next(
        self, at_byte: int = 0, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("corrupt", times, match, after_bytes=at_byte))

    def throttle_next(
        self, rate: float, times: int | None = 1, match: Predicate | None = None
    ) -> Fault:
        return self._add(Fault("throttle", times, match, rate=rate))

    def blackhole_next(self, times: int | None = 1, match: Predicate | None = None) -> Fault:
        return self._add(Fault("blackhole", times, match))

    def remove_fault(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    # -- used by the handler -----------------------------------------------------------------

    def _admit(self, request: ProxyRequest) -> _Plan:
        """Record `request` and consume the faults that apply to it."""
        plan = _Plan()
        with self._lock:
            self._requests.append(request)
            for fault in self._faults:
                if not fault.applies_to(request):
                    continue
                if fault.kind != "delay" and plan.terminal is not None:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                if fault.kind == "delay":
                    plan.delay += fault.seconds
                else:
                    plan.terminal = fault
                plan.kinds.append(fault.kind)
            self._faults = [f for f in self._faults if f.remaining is None or f.remaining > 0]
        if plan.terminal is not None:
            request.fault = plan.terminal.kind
        elif plan.kinds:
            request.fault = "delay"
        return plan

    def _track(self, connection: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() already released every handler

    def __init__(
        self, address: tuple[str, int], handler: type[_Handler], proxy: FaultProxy
    ) -> None:
        self.proxy = proxy
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None
        self._buffer = bytearray(_PIECE)
        self.server.proxy._track(self.connection, alive=True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, alive=False)
        self._drop_upstream()
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read `requests` instead of a log."""

    def _proxy_request(self) -> None:
        request = ProxyRequest(
            method=self.command,
            path=self.path,
            range=self.headers.get("Range"),
            headers=dict(self.headers.items()),
        )
        try:
            self._handle(request)
        finally:
            request.finished = time.monotonic()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _proxy_request

    def _handle(self, request: ProxyRequest) -> None:
        proxy = self.server.proxy
        plan = proxy._admit(request)
        if plan.delay and proxy._stopping.wait(plan.delay):
            self.close_connection = True
            return
        fault = plan.terminal
        if fault is not None and fault.kind == "blackhole":
            proxy._stopping.wait()
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            self._discard_request_body()
            self._send_error_reply(request, fault.status)
            return
        if fault is not None and fault.kind == "reset" and fault.after_bytes is None:
            self._reset()
            return
        try:
            self._forward_once_more_if_stale(request, fault)
        except (OSError, http.client.HTTPException):
            self._drop_upstream()
            if request.status is None:
                self._send_error_reply(request, 502)  # what a load balancer says
            else:
                self.close_connection = True  # the answer is half sent: nothing to salvage

    def _forward_once_more_if_stale(self, request: ProxyRequest, fault: Fault | None) -> None:
        """A kept-alive upstream connection may have been closed meanwhile (idle timeout, or
        the server restarted): a request without a body is then sent again on a new one."""
        reused = self._upstream is not None
        try:
            self._forward(request, fault)
        except (OSError, http.client.HTTPException):
            has_body = int(self.headers.get("Content-Length") or 0) > 0 or (
                "Transfer-Encoding" in self.headers
            )
            if not reused or has_body or request.status is not None:
                raise
            self._drop_upstream()
            self._forward(request, fault)

    # -- forwarding --------------------------------------------------------------------------

    def _forward(self, request: ProxyRequest, fault: Fault | None) -> None:
        upstream = self._upstream_connection()
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        offset = self.server.proxy.clock_offset
        for name, value in self.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                upstream.putheader(name, _shifted(name, value, offset) if offset else value)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        upstream.endheaders()
        if fault is not None and fault.kind == "cut":
            self._relay_request_body(upstream, chunked, limit=fault.after_bytes or 0)
            self._drop_upstream()
            self._reset()
            return
        self._relay_request_body(upstream, chunked)
        response = upstream.getresponse()
        self._relay_response(request, response, fault)
        if response.will_close:
            self._drop_upstream()

    def _relay_request_body(
        self, upstream: http.client.HTTPConnection, chunked: bool, limit: int | None = None
    ) -> None:
        """Copy the request body to the upstream (only its first `limit` bytes if given)."""
        if limit is not None:
            piece = self.rfile.read(limit) if limit else b""
            if piece:
                upstream.send(piece)
            return
        if chunked:
            for piece in self._read_chunked_body():
                upstream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            upstream.send(b"0\r\n\r\n")
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        view = memoryview(self._buffer)
        while remaining > 0:
            got = self.rfile.readinto(view[: min(remaining, _PIECE)])
            if not got:
                raise ConnectionError("client closed the connection mid-body")
            upstream.send(view[:got])
            remaining -= got

    def _relay_response(
        self, request: ProxyRequest, response: http.client.HTTPResponse, fault: Fault | None
    ) -> None:
        self.send_response_only(response.status, response.reason)
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        length = response.getheader("Content-Length")
        rechunk = has_body and length is None
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        request.status = response.status  # before the client can see it
        self.end_headers()
        if not has_body:
            # Finish the upstream response (HEAD, 204) so the kept-alive upstream connection is
            # ready for the next request; left unread, that request would fail with a 502.
            response.read()
            return
        kind = fault.kind if fault is not None else None
        cut = ("reset", "truncate", "stall")
        limit = fault.after_bytes if fault is not None and kind in cut else None
        flip = fault.after_bytes if fault is not None and kind == "corrupt" else None
        rate = fault.rate if fault is not None and kind == "throttle" else 0.0
        piece = _THROTTLED_PIECE if rate else _PIECE
        began = time.monotonic()
        view = memoryview(self._buffer)
        while True:
            want = piece if limit is None else min(piece, limit - request.response_bytes)
            got = response.readinto(view[:want]) if want > 0 else 0
            if not got:
                break
            start = request.response_bytes
            if flip is not None and start <= flip < start + got:
                view[flip - start] ^= 0xFF
            request.response_bytes += got  # before the write: the client may be faster
            if rate:
                time.sleep(max(0.0, began + request.response_bytes / rate - time.monotonic()))
            self._write_body(view[:got], rechunk)
        if limit is not None:
            if kind == "stall":
                self.wfile.flush()
                self.server.proxy._stopping.wait()
            if kind == "truncate":
                self._close_cleanly()
            else:
                self._reset()
            self._drop_upstream()
            return
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")

    def _write_body(self, data: memoryview, rechunk: bool) -> None:
        if rechunk:
            self.wfile.write(b"%x\r\n" % len(data))
            self.wfile.write(data)
            self.wfile.write(b"\r\n")
        else:
            self.wfile.write(data)

    def _read_chunked_body(self) -> list[bytes]:
        pieces: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return pieces
            pieces.append(self.rfile.read(size))
            self.rfile.readline()

    def _discard_request_body(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._read_chunked_body()
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            got = self.rfile.read(min(remaining, _PIECE))
            if not got:
                break
            remaining -= len(got)

    def _send_error_reply(self, request: ProxyRequest, status: int) -> None:
        code = _ERROR_CODES.get(status, "InternalError")
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by FaultProxy</Message></Error>"
        ).encode()
        request.status = status  # before the client can see it
        try:
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the client connection with a TCP RST (once the handler's files close)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.connection.close()

    def _close_cleanly(self) -> None:
        """End the client connection with a FIN, the body short of its Content-Length."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _upstream_connection(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            host, port = self.server.proxy.upstream
            self._upstream = http.client.HTTPConnection(host, port, timeout=_UPSTREAM_TIMEOUT)
        return self._upstream

    def _drop_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.close()


def _shifted(name: str, value: str, offset: float) -> str:
    """`value` of a date header (X-Amz-Date, Date) moved by `offset` seconds; others as is."""
    lowered = name.lower()
    if lowered == "x-amz-date":
        moved = calendar.timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")) + offset
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(moved))
    if lowered == "date":
        moved = email.utils.parsedate_to_datetime(value).timestamp() + offset
        return email.utils.formatdate(moved, usegmt=True)
    return value
