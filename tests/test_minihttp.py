"""minihttp against a scripted server on loopback: keep-alive, a pooled connection the server
closed, answers the lean lane must not use, and broken answers. The lane's behaviour against a
real S3 server (and through the fault proxy) is in test_store_contract.py."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from modelfs.store.http import ConnectionPool, HttpError, Origin

# An answer: the bytes to send back, and whether to close the connection after them.
Answer = tuple[bytes, bool]


def ok(body: bytes, *extra: str) -> bytes:
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{h}\r\n" for h in extra)
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


@dataclass
class ScriptedServer:
    """Answers the n-th request it receives (over all connections) with `script(n)`."""

    script: Callable[[int], Answer]
    listener: socket.socket = field(default_factory=socket.socket)
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    def start(self) -> ScriptedServer:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/bucket/"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                request, pending = pending.split(b"\r\n\r\n", 1)
                self.requests.append(request)
                answer, close = self.script(len(self.requests) - 1)
                conn.sendall(answer)
                if close:
                    return


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int], Answer]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Callable[[int], Answer]) -> ScriptedServer:
        servers.append(ScriptedServer(script).start())
        return servers[-1]

    yield start
    for server in servers:
        server.listener.close()


def pool_for(server: ScriptedServer) -> ConnectionPool:
    return ConnectionPool(Origin(server.url), max_idle=4, connect_timeout=2, read_timeout=2)


def test_answers_are_read_and_the_connection_is_kept_alive(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(lambda n: (ok(b"body %d" % n, 'ETag: "e"'), False))
    pool = pool_for(server)
    for n in range(3):
        response = pool.get(f"/bucket/k?x={n}", {"Range": "bytes=0-5"})
        assert response.status == 200
        assert response.headers["etag"] == '"e"'
        assert response.read_all() == b"body %d" % n
    assert server.connections == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /bucket/k?x=0 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.listener.getsockname()[1]}" in first
    assert "Range: bytes=0-5" in first
    pool.close()


def test_a_pooled_connection_the_server_closed_is_replaced_once(
    serve: Callable[..., ScriptedServer],
) -> None:
    # Every answer claims keep-alive, then the server closes: the next request finds the
    # pooled connection dead and must go out again on a new one.
    server = serve(lambda n: (ok(b"answer %d" % n), True))
    pool = pool_for(server)
    assert pool.get("/bucket/a", {}).read_all() == b"answer 0"
    assert pool.get("/bucket/b", {}).read_all() == b"answer 1"
    assert server.connections == 2
    pool.close()


def test_connection_close_or_an_unread_body_keeps_the_connection_out_of_the_pool(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(
        lambda n: (ok(b"x" * 100, "Connection: close") if n == 0 else ok(b"y" * 100), False)
    )
    pool = pool_for(server)
    assert pool.get("/bucket/a", {}).read_all() == b"x" * 100
    partly = pool.get("/bucket/b", {})
    assert partly.read(10) == b"y" * 10
    partly.close()  # 90 bytes unread: this connection cannot carry another request
    assert pool.get("/bucket/c", {}).read_all() == b"y" * 100
    assert server.connections == 3
    pool.close()


def test_a_chunked_answer_has_no_length_and_reads_as_empty(
    serve: Callable[..., ScriptedServer],
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    server = serve(lambda n: (chunked, False))
    response = pool_for(server).get("/bucket/a", {})
    assert response.status == 200
    assert response.length is None  # the lean lane then hands the request to botocore
    assert response.read(100) == b""
    response.close()


def test_a_body_cut_short_is_an_error_not_short_data(serve: Callable[..., ScriptedServer]) -> None:
    short = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 1000\r\n\r\n" + b"z" * 300
    server = serve(lambda n: (short, True))
    response = pool_for(server).get("/bucket/a", {})
    assert response.read(300) == b"z" * 300
    with pytest.raises(HttpError, match="700 bytes of the body unread"):
        response.read(700)


def test_garbage_instead_of_an_answer_is_an_error(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n: (b"SSH-2.0-OpenSSH\r\n\r\n", True))
    with pytest.raises(HttpError, match=r"not an HTTP/1\.x status line"):
        pool_for(server).get("/bucket/a", {})


def test_a_refused_connection_is_an_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    pool = ConnectionPool(
        Origin(f"http://127.0.0.1:{port}/b/"), max_idle=1, connect_timeout=1, read_timeout=1
    )
    with pytest.raises(HttpError, match=r"connecting to 127\.0\.0\.1"):
        pool.get("/b/a", {})


def test_origin_host_header_drops_default_ports_and_brackets_ipv6() -> None:
    assert Origin("http://Example.COM:80/b/").host_header == "example.com"
    assert Origin("https://s3.example.com:443/b/").host_header == "s3.example.com"
    assert Origin("http://127.0.0.1:8333/b/").host_header == "127.0.0.1:8333"
    assert Origin("http://[::1]:8333/b/").host_header == "[::1]:8333"
    assert Origin("http://[::1]:8333/b/").path_of("http://[::1]:8333/b/key?x=1") == "/b/key?x=1"
    assert Origin("http://h:1/b/").path_of("http://h:1") == "/"
    assert Origin("http://[::1]:8333/b/").path_of("https://[::1]:8333/b/key") is None
    assert Origin("http://h:1/b/").path_of("http://h:10/b/key") is None
    with pytest.raises(ValueError, match="not an http"):
        Origin("ftp://example.com/")


def test_a_connection_idle_too_long_is_not_reused(serve: Callable[..., ScriptedServer]) -> None:
    """A server, NAT or firewall may drop an idle connection without a word; a request sent
    on it would wait out the read timeout. Older than the idle limit, it is closed instead."""
    server = serve(lambda n: (ok(b"answer %d" % n), False))
    now = [1000.0]
    pool = ConnectionPool(
        Origin(server.url), max_idle=4, connect_timeout=2, read_timeout=2,
        idle_limit=20.0, clock=lambda: now[0],
    )  # fmt: skip
    assert pool.get("/bucket/a", {}).read_all() == b"answer 0"
    now[0] += 19.0
    assert pool.get("/bucket/b", {}).read_all() == b"answer 1"
    assert server.connections == 1  # idle 19 s: reused
    now[0] += 21.0
    assert pool.get("/bucket/c", {}).read_all() == b"answer 2"
    assert server.connections == 2  # idle 21 s: a new one
    pool.close()


def test_pooled_connections_have_tcp_keepalive(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda n: (ok(b"x"), False))
    pool = pool_for(server)
    pool.get("/bucket/a", {}).read_all()
    connection = pool._take_idle()
    assert connection is not None
    sock = connection.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    connection.close()
    pool.close()
