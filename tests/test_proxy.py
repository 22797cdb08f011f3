"""The shared test infrastructure itself: FaultProxy, SeaweedServer helpers, make_config.

Other engineers' tests lean on these parts to prove their claims (GET counts, faults), so the
parts are tested too: a proxy that silently buffered or dropped keep-alive would make those
tests lie.
"""

from __future__ import annotations

import http.client
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelfs.config.files import resolve
from modelfs.errors import StoreUnavailable
from modelfs.store.s3 import S3Store
from support import FaultProxy, SeaweedServer, path_contains, remote_config

MIB = 1 << 20


@pytest.fixture
def connect(proxy: FaultProxy) -> Iterator[Callable[[], http.client.HTTPConnection]]:
    """Raw HTTP connections to the proxy, all closed after the test."""
    opened: list[http.client.HTTPConnection] = []

    def open_connection() -> http.client.HTTPConnection:
        opened.append(http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10))
        return opened[-1]

    yield open_connection
    for connection in opened:
        connection.close()


def raw_get(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status


def test_keep_alive_and_counting(
    connect: Callable[[], http.client.HTTPConnection], proxy: FaultProxy
) -> None:
    connection = connect()
    statuses = [raw_get(connection, path) for path in ("/a", "/b?x=1", "/a/c")]
    first_socket = connection.sock
    assert raw_get(connection, "/a") in statuses
    assert connection.sock is first_socket  # the same TCP connection all along
    assert proxy.count() == 4
    assert proxy.count("GET", path_contains="/a") == 3
    assert proxy.count("PUT") == 0
    assert [r.path for r in proxy.requests][:2] == ["/a", "/b?x=1"]


def test_faults_follow_predicates_and_counts(
    connect: Callable[[], http.client.HTTPConnection], proxy: FaultProxy
) -> None:
    connection = connect()
    proxy.fail_next(503, times=2, match=path_contains("/flaky"))
    assert raw_get(connection, "/steady") != 503
    assert raw_get(connection, "/flaky") == 503
    assert raw_get(connection, "/flaky") == 503
    assert raw_get(connection, "/flaky") != 503
    assert [r.fault for r in proxy.requests] == [None, "status", "status", None]


def test_delay_adds_latency(
    connect: Callable[[], http.client.HTTPConnection], proxy: FaultProxy
) -> None:
    connection = connect()
    proxy.delay_next(0.3)
    started = time.monotonic()
    raw_get(connection, "/slow")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    raw_get(connection, "/fast")
    assert time.monotonic() - started < 0.3


def test_reset_before_answer(
    connect: Callable[[], http.client.HTTPConnection], proxy: FaultProxy
) -> None:
    proxy.reset_next(after_bytes=None)
    connection = connect()
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        raw_get(connection, "/x")
    assert proxy.requests[0].status is None


def test_stop_releases_blackholed_requests(seaweed: SeaweedServer) -> None:
    proxy = FaultProxy(seaweed.endpoint).start()
    proxy.blackhole_next()
    outcome: list[BaseException | int] = []

    def request() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        try:
            outcome.append(raw_get(connection, "/hang"))
        except Exception as exc:
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 5
    while proxy.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # wait for the request to reach the proxy
    assert proxy.requests[0].fault == "blackhole"
    assert outcome == []
    started = time.monotonic()
    proxy.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], Exception)


def test_large_bodies_stream_without_buffering(
    proxy: FaultProxy, s3_store: S3Store, bucket: str
) -> None:
    """64 MiB through the proxy while Python's allocations stay far below that."""
    size = 64 * MIB
    info = s3_store.put_bytes("big", bytes(MIB) * (size // MIB))
    via_proxy = S3Store(remote_config(proxy.endpoint), bucket)
    tracemalloc.start()
    try:
        received = sum(len(c) for c in via_proxy.iter_range(info.id, 0, size, MIB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == size
    assert peak < 16 * MIB
    assert proxy.requests[-1].response_bytes == size


def test_chunked_request_bodies_are_relayed(
    connect: Callable[[], http.client.HTTPConnection], proxy: FaultProxy
) -> None:
    connection = connect()
    connection.request("PUT", "/some-bucket/key", body=iter([b"abc", b"defg"]))
    response = connection.getresponse()
    response.read()
    assert response.status in (400, 403, 411)  # unsigned: refused, but answered in sync
    assert raw_get(connection, "/after") > 0  # the connection is still usable


def test_upstream_down_answers_502_and_recovers(
    connect: Callable[[], http.client.HTTPConnection], seaweed: SeaweedServer, proxy: FaultProxy
) -> None:
    connection = connect()
    raw_get(connection, "/warm")  # leaves a kept-alive upstream connection
    seaweed.stop()
    try:
        assert raw_get(connection, "/down") == 502
    finally:
        seaweed.start()
    assert raw_get(connection, "/up") != 502


def test_s3_store_through_proxy_with_transient_503(
    proxy: FaultProxy, s3_store: S3Store, bucket: str
) -> None:
    info = s3_store.put_bytes("k", b"payload")
    store = S3Store(remote_config(proxy.endpoint), bucket, max_attempts=1)
    proxy.fail_next(503)
    with pytest.raises(StoreUnavailable):
        store.get_range(info.id, 0, 7)
    assert store.get_range(info.id, 0, 7) == b"payload"


def test_server_side_get_count(seaweed: SeaweedServer, s3_store: S3Store, bucket: str) -> None:
    info = s3_store.put_bytes("k", b"0123456789")
    before = seaweed.get_request_count(bucket, codes=("206",))
    s3_store.get_range(info.id, 0, 5)
    s3_store.get_range(info.id, 5, 10)
    assert seaweed.get_request_count(bucket, codes=("206",)) == before + 2
    assert seaweed.get_request_count(bucket, kind="PUT") >= 1


def test_make_config_resolves_to_a_working_store(
    seaweed: SeaweedServer, bucket: str, tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    path = make_config(tmp_path, seaweed.endpoint, name="seaweed")
    remote, spec = resolve(f"seaweed:{bucket}/models", str(path))
    store = S3Store(remote, spec.bucket)
    store.check_bucket()
    store.put_bytes(spec.prefix + "a.bin", b"1")
    assert [o.key for o in store.list_page(spec.prefix).objects] == ["models/a.bin"]


def test_seaweed_server_restarts_on_the_same_ports(tmp_path: Path) -> None:
    with SeaweedServer(tmp_path / "own") as server:
        endpoint = server.endpoint
        server.create_bucket("keep")
        server.client().put_object(Bucket="keep", Key="k", Body=b"v")
        server.stop()
        assert not server.running
        server.start()
        assert server.endpoint == endpoint
        body = server.client().get_object(Bucket="keep", Key="k")["Body"].read()
        assert body == b"v"
    assert not server.running
