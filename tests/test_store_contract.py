"""The ObjectStore contract, run against MemoryStore and S3Store on a real SeaweedFS.

The first part runs every test on both stores (the `backend` fixture), so the fake used by
unit tests elsewhere is known to behave like S3. The second part is S3Store only: error
mapping against the real server, and fault handling through the FaultProxy.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fakes.memstore import MemoryStore
from modelfs.config.remote import RemoteConfig
from modelfs.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    InvalidArgument,
    ModelfsError,
    NotFound,
    StaleObject,
    StoreUnavailable,
)
from modelfs.objects import ObjectId
from modelfs.store.protocol import Expect, ObjectStore, UploadedPart
from modelfs.store.s3 import S3Store
from support import (
    ACCESS_KEY,
    SECRET_KEY,
    FaultProxy,
    ProxyRequest,
    SeaweedServer,
    method_is,
    remote_config,
)
from support.lanes import data_gets, lane_of, list_requests

MIB = 1 << 20
PART = 5 * MIB  # S3's minimum size of every part but the last


@dataclass
class Backend:
    store: ObjectStore
    replace_behind_back: Callable[[str, bytes], object]


@pytest.fixture(params=["memory", "s3"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        memory = MemoryStore()
        return Backend(memory, memory.replace_behind_back)
    seaweed: SeaweedServer = request.getfixturevalue("seaweed")
    bucket: str = request.getfixturevalue("bucket")
    client = seaweed.client()

    def replace(key: str, data: bytes) -> object:
        return client.put_object(Bucket=bucket, Key=key, Body=data)

    return Backend(S3Store(remote_config(seaweed.endpoint), bucket), replace)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def list_all(store: ObjectStore, prefix: str, max_keys: int) -> tuple[list[str], list[str], int]:
    """All object keys and prefixes under `prefix`, following tokens; and the page count."""
    keys: list[str] = []
    prefixes: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = store.list_page(prefix, token, max_keys=max_keys)
        pages += 1
        assert len(page.objects) + len(page.prefixes) <= max_keys
        keys += [info.key for info in page.objects]
        prefixes += page.prefixes
        token = page.next_token
        if token is None:
            return keys, prefixes, pages


# -- contract: metadata ----------------------------------------------------------------------


def test_put_then_head(backend: Backend) -> None:
    store = backend.store
    before = time.time()
    written = store.put_bytes("models/a.bin", b"hello world")
    head = store.head("models/a.bin")
    assert (head.key, head.size, head.etag) == (written.key, written.size, written.etag)
    # A PUT answer carries no Last-Modified: its mtime is the answer's Date, stamped after the
    # object's, so the two may differ by one second at S3's one-second resolution.
    assert abs(written.mtime - head.mtime) <= 1
    assert head.size == 11
    assert head.etag == md5(b"hello world")  # unquoted
    assert before - 2 <= head.mtime <= time.time() + 2  # S3 dates have 1 s resolution


def test_head_missing_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound, match="nope"):
        backend.store.head("nope")


def test_list_page_delimits_like_a_directory(backend: Backend) -> None:
    store = backend.store
    for key in ("a", "b/1", "b/2", "c/d/e", "m", "dir/", "dir/f"):
        store.put_bytes(key, key.encode())
    root = store.list_page("")
    assert [info.key for info in root.objects] == ["a", "m"]
    assert root.prefixes == ("b/", "c/", "dir/")
    assert root.next_token is None
    listed = {info.key: info for info in root.objects}
    assert listed["a"] == store.head("a")
    inside = store.list_page("b/")
    assert [info.key for info in inside.objects] == ["b/1", "b/2"]
    assert inside.prefixes == ()
    # A directory marker object is listed under its own prefix, as S3 does.
    assert [info.key for info in store.list_page("dir/").objects] == ["dir/", "dir/f"]
    assert store.list_page("nothing/") == store.list_page("nothing/")  # empty, no error
    assert store.list_page("nothing/").objects == ()


def test_list_pages_follow_tokens(backend: Backend) -> None:
    store = backend.store
    keys = [f"k/{i:02d}" for i in range(7)] + [f"k/sub{i}/x" for i in range(3)]
    for key in keys:
        store.put_bytes(key, b"x")
    found, prefixes, pages = list_all(store, "k/", max_keys=3)
    assert found == [f"k/{i:02d}" for i in range(7)]
    assert prefixes == ["k/sub0/", "k/sub1/", "k/sub2/"]
    assert pages == 4  # 10 entries, 3 per page: keys and prefixes both count


def test_keys_with_spaces_and_unicode(backend: Backend) -> None:
    store = backend.store
    key = "voices/中文 sample+1%.wav"
    info = store.put_bytes(key, b"RIFF")
    assert store.head(key) == info
    assert [o.key for o in store.list_page("voices/").objects] == [key]
    assert store.get_range(info.id, 0, 4) == b"RIFF"


def test_empty_object(backend: Backend) -> None:
    info = backend.store.put_bytes("empty", b"")
    assert info.size == 0
    assert backend.store.head("empty").size == 0
    assert backend.store.get_range(info.id, 0, 0) == b""
    assert list(backend.store.iter_range(info.id, 0, 0, 4)) == []


# -- contract: reads -------------------------------------------------------------------------


def test_get_range_is_exact(backend: Backend) -> None:
    data = os.urandom(100_000)
    info = backend.store.put_bytes("blob", data)
    for start, end in [(0, 100_000), (0, 1), (99_999, 100_000), (4096, 8192), (12_345, 67_890)]:
        assert backend.store.get_range(info.id, start, end) == data[start:end]


def test_get_range_past_the_end(backend: Backend) -> None:
    info = backend.store.put_bytes("blob", b"0123456789")
    assert backend.store.get_range(info.id, 5, 50) == b"56789"  # clamped by the store
    assert list(backend.store.iter_range(info.id, 5, 50, 3)) == [b"567", b"89"]
    with pytest.raises(InvalidArgument):
        backend.store.get_range(info.id, 10, 20)  # S3's 416


@pytest.mark.parametrize(
    ("start", "end", "chunk", "sizes"),
    [
        (0, 1000, 300, [300, 300, 300, 100]),
        (0, 900, 300, [300, 300, 300]),
        (10, 20, 300, [10]),
        (999, 1000, 1, [1]),
    ],
)
def test_iter_range_chunks(
    backend: Backend, start: int, end: int, chunk: int, sizes: list[int]
) -> None:
    data = os.urandom(1000)
    info = backend.store.put_bytes("blob", data)
    chunks = list(backend.store.iter_range(info.id, start, end, chunk))
    assert [len(c) for c in chunks] == sizes
    assert b"".join(chunks) == data[start:end]


def test_iter_range_rejects_a_zero_chunk(backend: Backend) -> None:
    info = backend.store.put_bytes("blob", b"abc")
    with pytest.raises(InvalidArgument):
        list(backend.store.iter_range(info.id, 0, 3, 0))


def test_replaced_object_is_stale_never_mixed(backend: Backend) -> None:
    old = backend.store.put_bytes("model.pt", b"A" * 1000)
    backend.replace_behind_back("model.pt", b"B" * 1000)
    with pytest.raises(StaleObject, match=r"model\.pt"):
        backend.store.get_range(old.id, 0, 10)
    with pytest.raises(StaleObject):
        list(backend.store.iter_range(old.id, 0, 1000, 100))
    new = backend.store.head("model.pt")
    assert new.etag != old.etag
    assert backend.store.get_range(new.id, 0, 3) == b"BBB"


def test_reading_a_deleted_object_is_not_found(backend: Backend) -> None:
    info = backend.store.put_bytes("gone", b"data")
    backend.store.delete("gone")
    with pytest.raises(NotFound):
        backend.store.get_range(info.id, 0, 4)
    with pytest.raises(NotFound):
        backend.store.head("gone")


def test_get_range_of_an_unknown_etag_is_stale(backend: Backend) -> None:
    backend.store.put_bytes("x", b"data")
    with pytest.raises(StaleObject):
        backend.store.get_range(ObjectId("x", md5(b"other")), 0, 4)


def test_concurrent_reads_from_many_threads(backend: Backend) -> None:
    """The read path calls one store from worker threads at once."""
    data = os.urandom(256 * 1024)
    info = backend.store.put_bytes("shared", data)
    ranges = [(i * 4096, i * 4096 + 8192) for i in range(64)]

    def read(bounds: tuple[int, int]) -> bool:
        return backend.store.get_range(info.id, *bounds) == data[bounds[0] : bounds[1]]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(read, ranges))


# -- contract: writes ------------------------------------------------------------------------


def test_delete_is_idempotent(backend: Backend) -> None:
    backend.store.put_bytes("x", b"1")
    backend.store.delete("x")
    backend.store.delete("x")
    backend.store.delete("never-existed")
    assert backend.store.list_page("").objects == ()


def test_copy(backend: Backend) -> None:
    source = backend.store.put_bytes("v23/model.pt", b"weights")
    copied = backend.store.copy("v23/model.pt", "v24/model.pt")
    assert copied.key == "v24/model.pt"
    assert copied.size == source.size
    assert copied.etag == source.etag  # single-part content: same md5
    assert backend.store.head("v24/model.pt") == copied
    assert backend.store.get_range(copied.id, 0, 7) == b"weights"
    with pytest.raises(NotFound):
        backend.store.copy("missing", "elsewhere")


def test_multipart_upload_complete(backend: Backend) -> None:
    store = backend.store
    first, last = os.urandom(PART), os.urandom(1234)
    upload_id = store.create_multipart("out/gen.wav")
    assert [(p.key, p.upload_id) for p in store.list_multipart("out/")] == [
        ("out/gen.wav", upload_id)
    ]
    parts = [
        store.upload_part("out/gen.wav", upload_id, 1, first),
        store.upload_part("out/gen.wav", upload_id, 2, last),
    ]
    assert parts[0] == UploadedPart(1, md5(first))
    info = store.complete_multipart("out/gen.wav", upload_id, parts)
    assert info.size == PART + 1234
    assert info.etag.endswith("-2")
    assert store.head("out/gen.wav") == info
    assert store.get_range(info.id, PART - 2, PART + 2) == first[-2:] + last[:2]
    assert store.list_multipart("out/") == []


def test_multipart_abort(backend: Backend) -> None:
    store = backend.store
    upload_id = store.create_multipart("out/x")
    store.upload_part("out/x", upload_id, 1, b"abc")
    store.abort_multipart("out/x", upload_id)
    store.abort_multipart("out/x", upload_id)  # already gone: fine
    assert store.list_multipart("") == []
    with pytest.raises(NotFound):
        store.upload_part("out/x", upload_id, 2, b"def")
    with pytest.raises(NotFound):
        store.head("out/x")


def test_multipart_rejects_small_parts(backend: Backend) -> None:
    store = backend.store
    upload_id = store.create_multipart("small")
    parts = [store.upload_part("small", upload_id, n, b"tiny") for n in (1, 2)]
    with pytest.raises(InvalidArgument):
        store.complete_multipart("small", upload_id, parts)
    store.abort_multipart("small", upload_id)


def test_a_write_expecting_a_version_lands_only_on_it(backend: Backend) -> None:
    store = backend.store
    first = store.put_bytes("out.json", b"v1", Expect(None))  # no object yet: created
    with pytest.raises(StaleObject):
        store.put_bytes("out.json", b"v2", Expect(None))  # there is one now
    second = store.put_bytes("out.json", b"v2", Expect(first.etag))
    with pytest.raises(StaleObject):
        store.put_bytes("out.json", b"v3", Expect(first.etag))  # v1 was replaced
    with pytest.raises(StaleObject):
        store.put_bytes("never.json", b"x", Expect(first.etag))  # no object at all
    assert store.head("out.json") == second
    assert store.get_range(second.id, 0, 2) == b"v2"
    with pytest.raises(NotFound):
        store.head("never.json")


def test_a_completion_expecting_a_version_lands_only_on_it(backend: Backend) -> None:
    store = backend.store
    current = store.put_bytes("big", b"current")
    backend.replace_behind_back("big", b"replaced by someone else")
    replaced = store.head("big")
    upload_id = store.create_multipart("big")
    parts = [
        store.upload_part("big", upload_id, 1, os.urandom(PART)),
        store.upload_part("big", upload_id, 2, b"tail"),
    ]
    with pytest.raises(StaleObject):
        store.complete_multipart("big", upload_id, parts, Expect(current.etag))
    assert store.head("big") == replaced
    store.abort_multipart("big", upload_id)
    fresh = store.create_multipart("fresh")
    part = store.upload_part("fresh", fresh, 1, b"only part")
    info = store.complete_multipart("fresh", fresh, [part], Expect(None))
    assert store.head("fresh") == info
    assert store.list_multipart("") == []


def test_list_multipart_filters_by_prefix(backend: Backend) -> None:
    store = backend.store
    kept = store.create_multipart("logs/a")
    other = store.create_multipart("out/b")
    assert [p.upload_id for p in store.list_multipart("logs/")] == [kept]
    for key, upload_id in (("logs/a", kept), ("out/b", other)):
        store.abort_multipart(key, upload_id)


# -- MemoryStore only: its test helpers ------------------------------------------------------


def test_memory_store_counts_and_injects_faults() -> None:
    store = MemoryStore()
    info = store.put_bytes("k", b"0123456789")
    store.fail_next("get_range", StoreUnavailable("injected"), times=2)
    for _ in range(2):
        with pytest.raises(StoreUnavailable, match="injected"):
            store.get_range(info.id, 0, 1)
    assert store.get_range(info.id, 0, 1) == b"0"
    assert store.ops["get_range"] == 3
    assert store.ops["put_bytes"] == 1
    store.replace_behind_back("k", b"changed")  # not an operation of the code under test
    assert store.ops["put_bytes"] == 1
    assert store.data_of("k") == b"changed"


def test_memory_store_can_break_a_stream_midway() -> None:
    store = MemoryStore()
    info = store.put_bytes("k", b"x" * 100)
    store.fail_next("iter_range.chunk", StoreUnavailable("reset"))
    stream = store.iter_range(info.id, 0, 100, 10)
    with pytest.raises(StoreUnavailable):
        next(stream)
    assert store.ops["iter_range"] == 1


def test_memory_store_delay_hook_sees_each_op() -> None:
    seen: list[str] = []
    store = MemoryStore(delay=seen.append)
    info = store.put_bytes("k", b"abc")
    store.head("k")
    list(store.iter_range(info.id, 0, 3, 2))
    assert seen == ["put_bytes", "head", "iter_range", "iter_range.chunk", "iter_range.chunk"]


def test_memory_store_missing_bucket() -> None:
    store = MemoryStore()
    store.bucket_exists = False
    with pytest.raises(BucketNotFound):
        store.check_bucket()
    with pytest.raises(BucketNotFound):
        store.list_page("")


# -- S3Store only: error mapping on the real server ------------------------------------------


def store_for(endpoint: str, bucket: str, **options: float) -> S3Store:
    return S3Store(remote_config(endpoint), bucket, **options)  # type: ignore[arg-type]


def test_check_bucket_succeeds(s3_store: S3Store) -> None:
    s3_store.check_bucket()


def test_wrong_secret_is_access_denied(seaweed: SeaweedServer, bucket: str) -> None:
    store = S3Store(remote_config(seaweed.endpoint, secret_access_key="wrong"), bucket)
    with pytest.raises(AccessDenied) as caught:
        store.check_bucket()
    message = str(caught.value)
    assert f"access denied by {seaweed.endpoint}" in message
    assert "check access_key_id/secret_access_key" in message
    assert "SignatureDoesNotMatch" in message
    assert isinstance(caught.value.__cause__, Exception)
    with pytest.raises(AccessDenied):
        store.head("anything")


def test_unknown_key_id_is_access_denied(seaweed: SeaweedServer, bucket: str) -> None:
    store = S3Store(remote_config(seaweed.endpoint, access_key_id="AKIANOBODY"), bucket)
    with pytest.raises(AccessDenied, match=r"\(InvalidAccessKeyId\)"):
        store.check_bucket()
    with pytest.raises(AccessDenied, match="InvalidAccessKeyId"):
        store.list_page("")


def test_missing_bucket(seaweed: SeaweedServer) -> None:
    store = S3Store(remote_config(seaweed.endpoint), "no-such-bucket-here")
    expected = f"bucket 'no-such-bucket-here' does not exist at {seaweed.endpoint}"
    with pytest.raises(BucketNotFound, match=expected):
        store.check_bucket()
    with pytest.raises(BucketNotFound, match=expected):
        store.list_page("")


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused_connection_fails_fast() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    store = store_for(endpoint, "bucket")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="connection refused") as caught:
        store.check_bucket()
    assert f"cannot reach S3 endpoint {endpoint}" in str(caught.value)
    assert time.monotonic() - started < 3
    with pytest.raises(StoreUnavailable, match="connection refused"):
        store.head("x")
    assert time.monotonic() - started < 10  # three attempts with backoff, still prompt


def test_blackholed_endpoint_times_out_in_seconds(proxy: FaultProxy, bucket: str) -> None:
    proxy.blackhole_next(times=None)
    store = store_for(proxy.endpoint, bucket, probe_timeout=1.0, read_timeout=1.0, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="did not answer in time"):
        store.check_bucket()
    with pytest.raises(StoreUnavailable, match="did not answer in time"):
        store.head("x")
    assert time.monotonic() - started < 5


def test_default_probe_timeout_is_a_few_seconds(proxy: FaultProxy, bucket: str) -> None:
    proxy.blackhole_next(times=None)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store_for(proxy.endpoint, bucket).check_bucket()
    assert time.monotonic() - started < 5


def has_condition(request: ProxyRequest) -> bool:
    names = {name.lower() for name in request.headers}
    return "if-match" in names or "if-none-match" in names


def test_a_store_refusing_conditional_writes_gets_them_unconditioned(
    proxy: FaultProxy, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_for(proxy.endpoint, bucket)
    proxy.fail_next(501, times=None, match=lambda r: r.method == "PUT" and has_condition(r))
    first = store.put_bytes("a", b"1", Expect(None))  # refused, then sent without
    assert "refuses conditional writes" in caplog.text
    second = store.put_bytes("a", b"2", Expect("0" * 32))  # unchecked from now on
    assert first.etag != second.etag
    assert store.get_range(second.id, 0, 1) == b"2"
    puts = [r for r in proxy.requests if r.method == "PUT"]
    assert [(has_condition(r), r.status) for r in puts] == [(True, 501), (False, 200), (False, 200)]


def test_a_412_with_a_code_of_its_own_still_fails_the_condition(
    proxy: FaultProxy, bucket: str
) -> None:
    store = store_for(proxy.endpoint, bucket)
    # The proxy's injected 412 carries the code "InternalError": the status must decide.
    proxy.fail_next(412, match=lambda r: r.method == "PUT" and has_condition(r))
    with pytest.raises(StaleObject):
        store.put_bytes("a", b"1", Expect(None))
    store.put_bytes("a", b"2", Expect(None))  # conditions still sent, and honoured
    with pytest.raises(StaleObject):
        store.put_bytes("a", b"3", Expect(None))


def test_503_is_retried_then_succeeds(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket)
    store.put_bytes("k", b"v")
    proxy.clear_requests()
    proxy.fail_next(503, times=2)
    assert store.head("k").size == 1
    assert proxy.count("HEAD") == 3
    assert [r.status for r in proxy.requests] == [503, 503, 200]


@pytest.mark.parametrize("sent", [0, 1000])
def test_a_write_cut_off_mid_body_never_leaves_a_torn_object(
    proxy: FaultProxy, bucket: str, sent: int
) -> None:
    """The connection dies after the headers (and `sent` body bytes): SeaweedFS keeps an empty
    object for such a PUT unless Content-MD5 tells it what was meant. The retry then lands
    whole, and a new key's If-None-Match still holds."""
    store = store_for(proxy.endpoint, bucket)
    data = os.urandom(MIB)
    proxy.cut_request_next(after_bytes=sent, match=method_is("PUT"))
    assert store.put_bytes("new.bin", data, Expect(None)).size == MIB
    upload = store.create_multipart("parts.bin")
    proxy.cut_request_next(after_bytes=sent, match=method_is("PUT"))
    part = store.upload_part("parts.bin", upload, 1, data)
    store.complete_multipart("parts.bin", upload, [part])
    assert [r.fault for r in proxy.requests if r.method == "PUT"] == ["cut", None, "cut", None]
    for key in ("new.bin", "parts.bin"):
        assert store.get_range(store.head(key).id, 0, MIB) == data


def test_persistent_500_is_store_unavailable(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket, max_attempts=2)
    proxy.fail_next(500, times=None)
    with pytest.raises(StoreUnavailable, match="500"):
        store.head("k")  # a HEAD answer has no body, so no error code either
    with pytest.raises(StoreUnavailable, match="InternalError: injected by FaultProxy"):
        store.list_page("")
    assert proxy.count("HEAD") == 2
    assert proxy.count("GET") == 2


def test_reset_mid_body_resumes_from_the_offset(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket)
    data = os.urandom(MIB)
    info = store.put_bytes("big", data)
    proxy.clear_requests()
    proxy.reset_next(after_bytes=200_000, match=method_is("GET"))
    chunks = list(store.iter_range(info.id, 0, MIB, 64 * 1024))
    assert b"".join(chunks) == data
    assert all(len(c) == 64 * 1024 for c in chunks)
    gets = [r for r in proxy.requests if r.method == "GET"]
    assert len(gets) == 2
    assert gets[0].range == f"bytes=0-{MIB - 1}"
    # The resumed GET starts after the last whole chunk delivered. Which one that is depends
    # on how much of the 200,000 bytes the client's kernel kept when the RST arrived.
    resumed_at = int(gets[1].range.removeprefix("bytes=").split("-")[0])  # type: ignore[union-attr]
    assert resumed_at % (64 * 1024) == 0
    assert resumed_at < 200_000
    assert all(r.headers.get("If-Match") == f'"{info.etag}"' for r in gets)


def test_reset_mid_body_of_get_range(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket)
    data = os.urandom(MIB)
    info = store.put_bytes("big", data)
    proxy.reset_next(after_bytes=300_000, match=method_is("GET"))
    assert store.get_range(info.id, 10, MIB) == data[10:]


def test_object_replaced_between_resets_is_stale(
    proxy: FaultProxy, bucket: str, seaweed: SeaweedServer
) -> None:
    store = store_for(proxy.endpoint, bucket)
    info = store.put_bytes("big", os.urandom(MIB))
    proxy.reset_next(after_bytes=100_000, match=method_is("GET"))
    stream = store.iter_range(info.id, 0, MIB, 64 * 1024)
    first = next(stream)
    seaweed.client().put_object(Bucket=bucket, Key="big", Body=b"new version")
    with pytest.raises(StaleObject):
        list(stream)
    assert len(first) == 64 * 1024


def test_endless_resets_give_up(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket, max_attempts=2)
    info = store.put_bytes("big", os.urandom(MIB))
    proxy.reset_next(after_bytes=1000, times=None, match=method_is("GET"))
    with pytest.raises(StoreUnavailable) as caught:
        store.get_range(info.id, 0, MIB)
    assert caught.value.__cause__ is not None


def test_no_credentials_anywhere(
    seaweed: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = RemoteConfig(name="anon", endpoint=seaweed.endpoint, env_auth=True)
    with pytest.raises(AccessDenied, match="no credentials found for remote 'anon'"):
        S3Store(config, bucket).check_bucket()


def test_env_auth_uses_the_default_chain(
    seaweed: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    config = RemoteConfig(name="env", endpoint=seaweed.endpoint, env_auth=True)
    store = S3Store(config, bucket)
    store.check_bucket()
    assert store.put_bytes("k", b"v").size == 1


def test_key_id_without_secret_is_a_config_error(seaweed: SeaweedServer) -> None:
    config = RemoteConfig(name="half", endpoint=seaweed.endpoint, access_key_id="AKIA")
    with pytest.raises(ConfigError, match="no secret_access_key"):
        S3Store(config, "bucket")


def test_large_copy_goes_part_by_part(s3_store: S3Store, proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket, copy_object_limit=PART, copy_part_size=PART)
    data = os.urandom(PART + 100)
    source = s3_store.put_bytes("src", data)
    copied = store.copy("src", "dst")
    assert copied.size == source.size
    assert copied.etag.endswith("-2")
    assert s3_store.get_range(copied.id, PART - 1, PART + 100) == data[PART - 1 :]
    assert proxy.count("PUT", path_contains="partNumber") == 2


def test_store_survives_a_server_restart(seaweed: SeaweedServer, s3_store: S3Store) -> None:
    info = s3_store.put_bytes("k", b"persisted")
    seaweed.stop()
    try:
        with pytest.raises(StoreUnavailable, match="connection refused"):
            store_for(seaweed.endpoint, s3_store.bucket, max_attempts=1).head("k")
    finally:
        seaweed.start()
    assert s3_store.get_range(info.id, 0, 9) == b"persisted"  # pooled connections renewed


def test_a_key_that_is_not_utf8_is_an_invalid_argument(s3_store: S3Store) -> None:
    """botocore cannot even encode it: EINVAL (final for an upload), not an unexpected error."""
    for call in (
        lambda: s3_store.put_bytes("bad-\udcff", b"x"),
        lambda: s3_store.head("bad-\udcff"),
    ):
        with pytest.raises(InvalidArgument, match="the key is not UTF-8"):
            call()


def test_errors_are_one_line(seaweed: SeaweedServer, bucket: str) -> None:
    stores: list[S3Store] = [
        S3Store(remote_config(seaweed.endpoint, secret_access_key="wrong"), bucket),
        S3Store(remote_config(seaweed.endpoint), "no-such-bucket-here"),
        store_for(f"http://127.0.0.1:{closed_port()}", bucket, max_attempts=1),
    ]
    for store in stores:
        with pytest.raises(ModelfsError) as caught:
            store.check_bucket()
        assert "\n" not in str(caught.value)


def test_iter_range_streams_about_as_fast_as_a_plain_get(
    seaweed: SeaweedServer, s3_store: S3Store
) -> None:
    """64 MiB in 8 MiB ranges of 1 MiB chunks vs boto3 reading the same ranges whole.

    The two run alternately, best of three each, to face the same load on a shared machine;
    the bound is loose (noise here is +-30%) because it guards against buffering or copying
    the range a few times over, not against a few percent."""
    window, chunk, total = 8 * MIB, MIB, 64 * MIB
    info = s3_store.put_bytes("perf", os.urandom(MIB) * (total // MIB))
    client = seaweed.client()

    def plain() -> None:
        for start in range(0, total, window):
            client.get_object(
                Bucket=s3_store.bucket, Key="perf", Range=f"bytes={start}-{start + window - 1}"
            )["Body"].read()

    def streamed() -> None:
        for start in range(0, total, window):
            for piece in s3_store.iter_range(info.id, start, start + window, chunk):
                assert len(piece) == chunk

    timings: dict[str, list[float]] = {"plain": [], "streamed": []}
    for _ in range(3):
        for name, run in (("plain", plain), ("streamed", streamed)):
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    assert min(timings["streamed"]) < min(timings["plain"]) * 2


# -- the lean GET lane (lean.py) -------------------------------------------------------------


def test_data_gets_take_the_lean_lane_once_botocore_showed_the_url(
    proxy: FaultProxy, bucket: str
) -> None:
    store = store_for(proxy.endpoint, bucket)
    data = os.urandom(3 * MIB)
    info = store.put_bytes("dir/a b+c~.bin", data)  # a key that needs quoting
    proxy.clear_requests()
    assert store.get_range(info.id, 0, MIB) == data[:MIB]  # botocore: teaches the URL
    assert store.get_range(info.id, MIB, 3 * MIB) == data[MIB:]
    assert b"".join(store.iter_range(info.id, 5, 2 * MIB + 7, MIB)) == data[5 : 2 * MIB + 7]
    lanes = [lane_of(r) for r in data_gets(proxy, "dir/a%20b%2Bc~.bin")]
    assert lanes == ["botocore", "lean", "lean"]


def test_warm_up_teaches_the_lean_lane_without_downloading(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket)
    info = store.put_bytes("m.bin", b"weights")
    proxy.clear_requests()
    store.warm_up(".modelfs-warm-up-probe")
    # botocore's probe teaches the URL; the lean lane's leaves a connection in its pool.
    probes = [(lane_of(r), r.status) for r in data_gets(proxy, ".modelfs-warm-up-probe")]
    assert probes == [("botocore", 404), ("lean", 404)]
    proxy.clear_requests()
    assert store.get_range(info.id, 0, 7) == b"weights"
    assert [lane_of(r) for r in data_gets(proxy, "m.bin")] == ["lean"]


def test_lean_lane_hands_a_changed_object_to_botocore_for_its_error(
    proxy: FaultProxy, bucket: str
) -> None:
    store = store_for(proxy.endpoint, bucket)
    old = store.put_bytes("m.bin", b"a" * 100)
    store.get_range(old.id, 0, 10)  # learn the URL
    store.put_bytes("m.bin", b"b" * 100)
    proxy.clear_requests()
    with pytest.raises(StaleObject):
        store.get_range(old.id, 0, 10)
    gets = data_gets(proxy, "m.bin")
    assert [(lane_of(r), r.status) for r in gets] == [("lean", 412), ("botocore", 412)]


def test_lean_lane_falls_back_to_botocore_retries_on_5xx(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket)
    data = os.urandom(MIB)
    info = store.put_bytes("m.bin", data)
    store.get_range(info.id, 0, 10)  # learn the URL
    proxy.clear_requests()
    proxy.fail_next(503, times=2, match=method_is("GET"))
    assert store.get_range(info.id, 0, MIB) == data
    gets = data_gets(proxy, "m.bin")
    assert [(lane_of(r), r.status) for r in gets] == [
        ("lean", 503),
        ("botocore", 503),
        ("botocore", 206),
    ]


def test_lean_lane_resumes_after_a_reset_mid_body(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket)
    data = os.urandom(MIB)
    info = store.put_bytes("m.bin", data)
    store.get_range(info.id, 0, 10)  # learn the URL
    proxy.clear_requests()
    proxy.reset_next(after_bytes=200_000, match=method_is("GET"))
    assert b"".join(store.iter_range(info.id, 0, MIB, 64 * 1024)) == data
    gets = data_gets(proxy, "m.bin")
    assert [lane_of(r) for r in gets] == ["lean", "lean"]
    resumed = gets[1].range
    assert resumed is not None
    assert resumed.endswith("-1048575")
    assert resumed != "bytes=0-1048575"  # from where the reset cut it, not from the start


def test_lean_lane_stays_off_when_a_proxy_is_configured(
    proxy: FaultProxy, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane does not implement proxies, so with one in the environment botocore sends all."""
    monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:3128")  # TEST-NET: never used here
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # botocore itself goes direct
    store = store_for(proxy.endpoint, bucket)
    info = store.put_bytes("m.bin", b"weights")
    store.warm_up(".modelfs-warm-up-probe")
    proxy.clear_requests()
    for _ in range(3):
        assert store.get_range(info.id, 0, 7) == b"weights"
    assert [lane_of(r) for r in data_gets(proxy, "m.bin")] == ["botocore"] * 3


# -- the lean LIST lane (lean.py, listxml.py) ------------------------------------------------

ODD_KEYS = (
    "odd dir/a b+c%~\u00e4.txt",
    "odd dir/x&y<z>'\".txt",
    "odd dir/sub/q=1?.bin",
    "odd dir/sub/deeper/\x01control",
    "odd dir/trailing space ",
)


def every_page(
    store: S3Store, prefix: str, *, recursive: bool, max_keys: int
) -> list[tuple[object, ...]]:
    pages: list[tuple[object, ...]] = []
    token: str | None = None
    while True:
        page = store.list_page(prefix, token, max_keys, recursive=recursive)
        pages.append((page.objects, page.prefixes, page.next_token is None))
        token = page.next_token
        if token is None:
            return pages


def test_lean_listing_equals_botocores_for_odd_keys_and_every_page_size(
    proxy: FaultProxy, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean = store_for(proxy.endpoint, bucket)
    for index, key in enumerate(ODD_KEYS):
        lean.put_bytes(key, b"x" * index)
    for index in range(12):
        lean.put_bytes(f"odd dir/many/{index:02d}.json", b"{}")
    lean.list_page("")  # botocore's LIST teaches the URL
    monkeypatch.setenv("HTTP_PROXY", "http://192.0.2.1:3128")  # this store: botocore only
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    reference = store_for(proxy.endpoint, bucket)
    proxy.clear_requests()
    for prefix in ("", "odd dir/", "odd dir/sub/", "odd dir/many/", "absent/"):
        for recursive in (False, True):
            for max_keys in (1000, 5, 1):
                expected = every_page(reference, prefix, recursive=recursive, max_keys=max_keys)
                got = every_page(lean, prefix, recursive=recursive, max_keys=max_keys)
                assert got == expected, (prefix, recursive, max_keys)
    lanes = {lane_of(r) for r in list_requests(proxy)}
    assert lanes == {"lean", "botocore"}  # both stores really listed, each its own way
    # Every lean LIST was answered (a bad signature would be a 403, then botocore's answer).
    assert {r.status for r in list_requests(proxy) if lane_of(r) == "lean"} == {200}


def test_lists_take_the_lean_lane_once_botocore_showed_the_url(
    proxy: FaultProxy, bucket: str
) -> None:
    store = store_for(proxy.endpoint, bucket)
    store.put_bytes("d/a.txt", b"a")
    proxy.clear_requests()
    for _ in range(3):
        assert [info.key for info in store.list_page("d/").objects] == ["d/a.txt"]
    assert [lane_of(r) for r in list_requests(proxy)] == ["botocore", "lean", "lean"]


def test_lean_list_falls_back_to_botocore_retries_on_5xx(proxy: FaultProxy, bucket: str) -> None:
    store = store_for(proxy.endpoint, bucket)
    store.put_bytes("d/a.txt", b"a")
    store.list_page("d/")  # learn the URL
    proxy.clear_requests()
    proxy.fail_next(503, times=2, match=method_is("GET"))
    assert [info.key for info in store.list_page("d/").objects] == ["d/a.txt"]
    requests = list_requests(proxy)
    assert [(lane_of(r), r.status) for r in requests] == [
        ("lean", 503),
        ("botocore", 503),
        ("botocore", 200),
    ]


def test_a_missing_bucket_lists_through_botocore_for_its_error(
    proxy: FaultProxy, seaweed: SeaweedServer, bucket: str
) -> None:
    store = store_for(proxy.endpoint, bucket)
    store.list_page("")  # learn the URL, on an empty bucket
    seaweed.client().delete_bucket(Bucket=bucket)
    proxy.clear_requests()
    with pytest.raises(BucketNotFound):
        store.list_page("")
    assert [(lane_of(r), r.status) for r in list_requests(proxy)] == [
        ("lean", 404),
        ("botocore", 404),
    ]
