"""A mount's `SourceList` with in-memory stores: the wait for a site cache that is still
fetching an object from its origin (`store.sitefill`: a SeaweedFS remote mount answers HEAD
with an empty ETag until something has read the object and it has fetched all of it), and
which failures leave the site for every object. The real thing, through a slow uplink, is
tested in test_mount_sources.py."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from fakes.memstore import MemoryStore
from modelfs.errors import StoreUnavailable
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.store.etag import md5_etag
from modelfs.store.sitefill import MIN_SIZE
from modelfs.store.sources import Source, SourceList

KEY = "llama/model.bin"


class Clock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1


class FillingSite(MemoryStore):
    """A site cache whose objects are only at its origin until read once: HEAD shows no ETag
    until the first read (which starts the fetch), and for `fetch_heads` HEADs after it; a read
    of version "" is of whatever is there, as an S3 GET without If-Match."""

    def __init__(self, clock: Clock, fetch_heads: int | None) -> None:
        super().__init__(name="site", clock=clock)
        self.fetch_heads = fetch_heads  # None: the fetch never ends
        self.heads_left: int | None = None  # counting down once a read started the fetch

    def head(self, key: str) -> ObjectInfo:
        info = super().head(key)
        if self.heads_left is not None and self.heads_left <= 0:
            return info
        if self.heads_left is not None:
            self.heads_left -= 1
        return dataclasses.replace(info, etag="")

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        if self.heads_left is None and self.fetch_heads is not None:
            self.heads_left = self.fetch_heads
        return super().get_range(self._current(obj), start, end)

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        return super().iter_range(self._current(obj), start, end, chunk)

    def _current(self, obj: ObjectId) -> ObjectId:
        return obj if obj.etag else ObjectId(obj.key, md5_etag(self.data_of(obj.key)))


def mount_of(site: MemoryStore, origin: MemoryStore, clock: Clock, timeout: float) -> SourceList:
    return SourceList(
        [Source("site", site, lambda key: key), Source("origin", origin, lambda key: key)],
        primary="origin",
        retry_after=30.0,
        fill_timeout=timeout,
        clock=clock,
        sleep=clock.sleep,
    )


def stores(size: int, fetch_heads: int | None) -> tuple[Clock, FillingSite, MemoryStore, bytes]:
    clock = Clock()
    data = random.Random(size).randbytes(size)
    origin, site = MemoryStore(name="origin", clock=clock), FillingSite(clock, fetch_heads)
    origin.put_bytes(KEY, data)
    site.put_bytes(KEY, data)  # the remote mount's entry: the same bytes, a later mtime
    site.ops.clear()
    return clock, site, origin, data


def read(sources: SourceList, origin: MemoryStore, data: bytes) -> bytes:
    sources.verified(KEY, len(data))  # the manifest lists it: a copy with its own ETag will do
    version = ObjectId(KEY, origin.head(KEY).etag)
    return b"".join(sources.iter_range(version, 0, len(data), 1 << 20))


def test_a_copy_the_site_is_fetching_is_read_from_it_once_fetched() -> None:
    clock, site, origin, data = stores(MIN_SIZE + 1, fetch_heads=3)
    sources = mount_of(site, origin, clock, timeout=60.0)
    origin.ops.clear()
    assert read(sources, origin, data) == data
    assert site.ops["get_range"] == 1  # the one byte that starts the fetch
    assert clock.sleeps == 4  # three HEADs while it fetches, the fourth finds it fetched
    assert origin.ops["iter_range"] == 0
    counts = sources.statistics().by_source
    assert counts["site"]["fetch_waits"] == 1
    assert counts["site"]["bytes"] == len(data)


def test_past_the_timeout_the_copy_is_read_as_it_is() -> None:
    clock, site, origin, data = stores(MIN_SIZE + 1, fetch_heads=None)
    sources = mount_of(site, origin, clock, timeout=10.0)
    assert read(sources, origin, data) == data
    assert clock.sleeps == 10
    assert sources.statistics().by_source["site"]["bytes"] == len(data)


def test_small_copies_and_a_zero_timeout_are_read_at_once() -> None:
    for size, timeout in ((MIN_SIZE - 1, 60.0), (MIN_SIZE + 1, 0.0)):
        clock, site, origin, data = stores(size, fetch_heads=3)
        assert read(mount_of(site, origin, clock, timeout), origin, data) == data
        assert clock.sleeps == 0
        assert site.ops["get_range"] == 0


def test_a_site_that_fails_while_fetching_sends_the_read_to_the_origin() -> None:
    clock, site, origin, data = stores(MIN_SIZE + 1, fetch_heads=5)
    heads = 0

    def down_after_one_head(op: str) -> None:
        nonlocal heads
        heads += op == "head"
        if heads > 1:
            raise StoreUnavailable("site: connection refused")

    site.delay = down_after_one_head  # the lookup's HEAD answers; the site dies while fetching
    sources = mount_of(site, origin, clock, timeout=60.0)
    assert read(sources, origin, data) == data
    assert site.ops["get_range"] == 1
    counts = sources.statistics().by_source
    assert counts["site"]["failures"] == 1
    assert counts["origin"]["bytes"] == len(data)


def test_an_error_answered_for_one_object_leaves_the_site_for_that_object_alone() -> None:
    clock = Clock()
    origin, site = MemoryStore(name="origin", clock=clock), MemoryStore(name="site", clock=clock)
    for store in (origin, site):  # the same bytes: the same ETag, no manifest needed
        store.put_bytes("a.bin", b"a" * 1000)
        store.put_bytes("b.bin", b"b" * 1000)
    sources = mount_of(site, origin, clock, timeout=0.0)
    answered = StoreUnavailable("GET a.bin: InternalError")
    response: Any = {
        "Error": {"Code": "InternalError"},
        "ResponseMetadata": {"HTTPStatusCode": 500},
    }
    answered.__cause__ = ClientError(response, "GetObject")
    site.fail_next("iter_range", answered)
    for key in ("a.bin", "b.bin"):
        version = ObjectId(key, origin.head(key).etag)
        assert sources.get_range(version, 0, 1000) == origin.data_of(key)
    counts = sources.statistics().by_source
    assert (counts["site"]["bytes"], counts["origin"]["bytes"]) == (1000, 1000)
    site.fail_next("iter_range", StoreUnavailable("connection refused"))  # no answer: down
    sources.get_range(ObjectId("b.bin", origin.head("b.bin").etag), 0, 1000)
    sources.get_range(ObjectId("a.bin", origin.head("a.bin").etag), 0, 1000)
    assert [s.name for s in sources.usable("c.bin")] == ["origin", "site"]
