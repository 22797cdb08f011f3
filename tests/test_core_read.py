"""Unit tests of the read core (no FUSE, no S3): fetcher, readahead, budget, namespace, fs."""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from cachetools import TTLCache

from fakes.memcache import MemoryDataCache
from fakes.memstore import MemoryStore
from modelfs.core import namespace as namespace_module
from modelfs.core import paths
from modelfs.core.attributes import FsOptions
from modelfs.core.filesystem import INTERNAL_FH, Filesystem
from modelfs.core.inodes import ROOT_INODE
from modelfs.core.namespace import SUBTREE_PAGES, Namespace
from modelfs.daemon.fuse_ops import FuseOperations
from modelfs.daemon.warmup import warm_up as warm_up_mount
from modelfs.errors import InvalidArgument, NotFound, ReadOnly, StaleObject
from modelfs.memory import MemoryBudget
from modelfs.objects import ListPage, ObjectId, ObjectInfo
from modelfs.read import dropbehind, pagecache
from modelfs.read.dropbehind import DropBehind
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.pagecache import PageCacheAdvisor
from modelfs.read.policy import MEMORY_TTL, MemoryProbe, ReadOptions, ReadPolicy
from modelfs.read.readahead import ReadaheadPolicy
from modelfs.write.engine import WriteBack
from modelfs.write.protocol import ReadOnlyWriter

BLOCK = 64 << 10  # small blocks keep the tests fast; the logic does not depend on the size
MiB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_fetcher(
    store: MemoryStore,
    cache: MemoryDataCache | None = None,
    *,
    slots: int = 4,
    budget: MemoryBudget | None = None,
) -> BlockFetcher:
    return BlockFetcher(
        store,
        cache or MemoryDataCache(BLOCK, 1 << 30),
        demand_limiter=trio.CapacityLimiter(slots),
        prefetch_limiter=trio.CapacityLimiter(slots),
        budget=budget or MemoryBudget(16 * BLOCK),
    )


_FS_OPTIONS = {"uid", "gid", "umask", "dir_cache_time"}


def make_fs(
    store: MemoryStore,
    *,
    clock: FakeClock | None = None,
    cache: MemoryDataCache | None = None,
    budget: int = 16 * BLOCK,
    slots: int = 4,
    memory: MemoryProbe = lambda pid: None,
    **options: object,
) -> Filesystem:
    """A read-only filesystem core over `store`; `options` go to FsOptions or ReadOptions."""
    clock = clock or FakeClock()
    cache = cache or MemoryDataCache(BLOCK, 1 << 30)
    fetcher = make_fetcher(store, cache, slots=slots, budget=MemoryBudget(budget))
    namespace = Namespace(store, "", ttl=60.0, limiter=trio.CapacityLimiter(4), clock=clock)
    read: dict[str, object] = {"part_size": 4 * BLOCK, "readahead_max": 16 * BLOCK}
    read.update({k: v for k, v in options.items() if k not in _FS_OPTIONS})
    fs_options = {k: v for k, v in options.items() if k in _FS_OPTIONS}

    async def files_in(directory: str) -> list[ObjectInfo]:
        return list((await namespace.listing(directory)).files.values())

    reads = ReadPolicy(
        fetcher,
        ReadOptions(**read),  # type: ignore[arg-type]
        siblings=files_in,
        memory=memory,
        clock=clock,
    )
    return Filesystem(namespace, reads, ReadOnlyWriter(), FsOptions(**fs_options))  # type: ignore[arg-type]


async def start_fs(
    nursery: trio.Nursery, store: MemoryStore, *, warm_up: bool = False, **options: object
) -> Filesystem:
    """`make_fs`, with its read policy running (and the mount's warm-up, if asked)."""
    fs = make_fs(store, **options)  # type: ignore[arg-type]
    await nursery.start(fs.reads.run)
    if warm_up:
        nursery.start_soon(warm_up_mount, fs.namespace, fs.reads.fetcher)
    return fs


async def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll `condition` (set by worker threads, which cannot signal a trio.Event directly)."""
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def open_path(fs: Filesystem, path: str) -> int:
    ino = ROOT_INODE
    for name in path.split("/"):
        ino = (await fs.lookup(ino, name)).ino
    fh, _ = await fs.open(ino, os.O_RDONLY)
    return fh


async def whole_fetch_done(fs: Filesystem, info: ObjectInfo) -> None:
    fetch = fs.reads.whole_fetch(info.id)
    assert fetch is not None, f"no whole-object fetch of {info.key}"
    await fetch.done.wait()


async def read_all(fs: Filesystem, fh: int, size: int, request: int = 128 << 10) -> bytes:
    out = bytearray()
    for offset in range(0, size, request):
        out += await fs.read(fh, offset, request)
    return bytes(out)


# -- ReadaheadPolicy -----------------------------------------------------------------------------


def test_window_grows_on_sequential_reads_up_to_the_maximum() -> None:
    policy = ReadaheadPolicy(8 * MiB, 64 * MiB, tolerance=8 * MiB)
    windows = []
    for offset in range(0, 200 * MiB, MiB):
        policy.on_read(offset, MiB, 1 << 40)
        windows.append(policy.window)
    assert windows[0] == 8 * MiB
    assert windows[1] == 16 * MiB
    assert max(windows) == 64 * MiB
    assert windows == sorted(windows)


def test_readahead_asks_in_large_parts_and_covers_the_file() -> None:
    policy = ReadaheadPolicy(8 * MiB, 64 * MiB, tolerance=8 * MiB)
    asked: list[tuple[int, int]] = []
    size = 300 * MiB
    for offset in range(0, size, MiB):
        decision = policy.on_read(offset, MiB, size)
        if decision.fetch_to > decision.fetch_from:
            asked.append((decision.fetch_from, decision.fetch_to))
    # Requests are contiguous, never overlap, and reach the end of the file.
    for (_, end), (start, _) in itertools.pairwise(asked):
        assert start == end
    assert asked[-1][1] == size
    assert len(asked) < 40  # far fewer requests than reads


def test_readahead_keeps_the_window_full_in_whole_parts() -> None:
    """Once the window is at its maximum, a sequential reader always has all but one part of
    it asked for ahead of it (on a link with a per-connection limit, every part in flight is
    throughput), and each request is one whole part."""
    part, maximum, size = 8 * MiB, 64 * MiB, 400 * MiB
    policy = ReadaheadPolicy(part, maximum, tolerance=part)
    asked_to = 0
    for offset in range(0, size, MiB):
        grown = policy.window == maximum
        decision = policy.on_read(offset, MiB, size)
        if decision.fetch_to > decision.fetch_from:
            if grown and decision.fetch_to < size:
                assert decision.fetch_to - decision.fetch_from == part
            asked_to = decision.fetch_to
        if policy.window == maximum:
            assert asked_to - (offset + MiB) >= min(maximum - part, size - offset - MiB)


def test_seek_resets_window_and_abandons() -> None:
    policy = ReadaheadPolicy(8 * MiB, 64 * MiB, tolerance=8 * MiB)
    for offset in range(0, 10 * MiB, MiB):
        policy.on_read(offset, MiB, 1 << 30)
    decision = policy.on_read(500 * MiB, 4096, 1 << 30)
    assert decision.abandon
    assert policy.window == 0
    assert decision.fetch_to == decision.fetch_from
    # A second random read does not abandon again, and asks for nothing.
    again = policy.on_read(100 * MiB, 4096, 1 << 30)
    assert not again.abandon
    assert again.fetch_to == again.fetch_from


def test_small_forward_jump_and_reordered_kernel_reads_stay_sequential() -> None:
    policy = ReadaheadPolicy(8 * MiB, 64 * MiB, tolerance=8 * MiB)
    policy.on_read(0, MiB, 1 << 30)
    policy.on_read(2 * MiB, MiB, 1 << 30)  # skipped one request (arrives later)
    decision = policy.on_read(MiB, MiB, 1 << 30)  # the late one
    assert not decision.abandon
    assert policy.window > 0


# -- MemoryBudget -------------------------------------------------------------------------------


def test_budget_never_exceeded_by_concurrent_threads() -> None:
    budget = MemoryBudget(4 * MiB)

    def worker() -> None:
        for _ in range(200):
            assert budget.acquire(MiB)
            budget.release(MiB)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = budget.statistics()
    assert stats.peak <= 4 * MiB
    assert stats.in_use == 0


def test_budget_wait_can_be_cancelled() -> None:
    budget = MemoryBudget(MiB)
    assert budget.acquire(MiB)
    cancel = threading.Event()
    cancel.set()
    assert not budget.acquire(MiB, cancel)


# -- BlockFetcher ------------------------------------------------------------------------------


async def test_concurrent_misses_on_one_block_share_one_get() -> None:
    store = MemoryStore()
    data = os.urandom(BLOCK * 4)
    info = store.put_bytes("m.bin", data)
    gate = threading.Event()
    store.delay = lambda op: gate.wait(5) if op == "iter_range" else None
    fetcher = make_fetcher(store, budget=MemoryBudget(8 * BLOCK))
    results: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)

        async def reader() -> None:
            results.append(await fetcher.block(info, 1))

        async with trio.open_nursery() as readers:
            for _ in range(5):
                readers.start_soon(reader)
            await trio.sleep(0.05)
            gate.set()
        nursery.cancel_scope.cancel()
    assert results == [data[BLOCK : 2 * BLOCK]] * 5
    assert store.ops["iter_range"] == 1
    assert fetcher.statistics().shared_waits >= 4


async def test_changed_object_is_stale_never_mixed() -> None:
    store = MemoryStore()
    old = store.put_bytes("m.bin", b"a" * BLOCK * 3)
    fs_cache = MemoryDataCache(BLOCK, 1 << 30)
    fetcher = make_fetcher(store, fs_cache, slots=2, budget=MemoryBudget(4 * BLOCK))
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        assert await fetcher.block(old, 0) == b"a" * BLOCK
        store.replace_behind_back("m.bin", b"b" * BLOCK * 3)
        assert await fetcher.block(old, 0) == b"a" * BLOCK  # the old version, from the cache
        with pytest.raises(StaleObject):
            await fetcher.block(old, 1)
        nursery.cancel_scope.cancel()


async def test_memory_budget_bounds_inflight_data_with_many_parallel_gets() -> None:
    store = MemoryStore()
    info = store.put_bytes("big.bin", os.urandom(BLOCK * 64))
    budget = MemoryBudget(3 * BLOCK)
    fetcher = make_fetcher(store, slots=8, budget=budget)
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        for first in range(0, 64, 8):
            fetcher.start_fetch(info, first, 8, prefetch=True)
        for index in range(64):
            await fetcher.block(info, index)
        nursery.cancel_scope.cancel()
    await trio.testing.wait_all_tasks_blocked()  # the last disk-write callbacks have run
    held = fetcher.statistics().held_blocks
    assert budget.statistics().peak <= 3 * BLOCK
    # What is still charged is exactly what is kept in RAM for readers, at most half the budget.
    assert budget.statistics().in_use == held * BLOCK <= 3 * BLOCK // 2


@dataclass
class Sixteen:
    """A 16-block object in a MemoryStore, and a fetcher with a budget of `budget_blocks`."""

    store: MemoryStore
    data: bytes
    info: ObjectInfo
    budget: MemoryBudget
    cache: MemoryDataCache
    fetcher: BlockFetcher


def sixteen_blocks(budget_blocks: int) -> Sixteen:
    store = MemoryStore()
    data = os.urandom(BLOCK * 16)
    info = store.put_bytes("sixteen.bin", data)
    budget = MemoryBudget(budget_blocks * BLOCK)
    cache = MemoryDataCache(BLOCK, 1 << 30)
    return Sixteen(store, data, info, budget, cache, make_fetcher(store, cache, budget=budget))


async def test_block_read_to_its_end_leaves_ram_once_on_disk() -> None:
    t = sixteen_blocks(64)
    store, data, info, budget, cache, fetcher = (
        t.store,
        t.data,
        t.info,
        t.budget,
        t.cache,
        t.fetcher,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        fetcher.start_fetch(info, 0, 16, prefetch=True)
        await fetcher.wait_for(info.id, 15)  # everything delivered, nothing read to its end yet
        await wait_until(lambda: all(cache.contains(info.id, i) for i in range(16)))
        await wait_until(lambda: fetcher.statistics().held_blocks == 16)  # kept for the reader
        assert budget.statistics().in_use == 16 * BLOCK
        for index in range(16):
            assert await fetcher.block(info, index) == data[index * BLOCK : (index + 1) * BLOCK]
            fetcher.done_with(info.id, index)
        assert fetcher.statistics().held_blocks == 0
        assert budget.statistics().in_use == 0
        assert store.ops["iter_range"] == 1  # all of it from RAM: no second GET
        nursery.cancel_scope.cancel()


async def test_a_reader_takes_over_a_block_a_background_get_reaches_late() -> None:
    """A background GET stuck at its first block: a reader of a block far ahead of it gets it
    from a GET of its own, the background GET reads past it, and it reaches the cache once; a
    block right behind the stream's position is waited for instead."""
    first_stream: list[int] = []
    hold = threading.Event()

    def delay(op: str) -> None:
        if op == "iter_range" and not first_stream:
            first_stream.append(threading.get_ident())
        elif op == "iter_range.chunk" and first_stream == [threading.get_ident()]:
            hold.wait(10)

    store = MemoryStore(delay=delay)
    data = os.urandom(BLOCK * 16)
    info = store.put_bytes("sixteen.bin", data)
    cache = MemoryDataCache(BLOCK, 1 << 30)
    puts: collections.Counter[int] = collections.Counter()
    real_put = cache.put

    def counted_put(obj: ObjectId, index: int, block: bytes, *, page_cache: bool = False) -> None:
        puts[index] += 1
        real_put(obj, index, block, page_cache=page_cache)

    cache.put = counted_put  # type: ignore[method-assign]
    fetcher = make_fetcher(store, cache, budget=MemoryBudget(32 * BLOCK))
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        fetcher.start_fetch(info, 0, 16, prefetch=True)
        await wait_until(lambda: bool(first_stream))
        with trio.fail_after(5):
            assert await fetcher.block(info, 10) == data[10 * BLOCK : 11 * BLOCK]
        assert fetcher.statistics().taken_over == 1
        assert store.ops["iter_range"] == 2
        near = trio.Event()

        async def read_near() -> None:
            assert await fetcher.block(info, 1) == data[BLOCK : 2 * BLOCK]
            near.set()

        nursery.start_soon(read_near)
        await trio.sleep(0.05)
        assert not near.is_set()  # one block from the stream: it waits
        hold.set()
        with trio.fail_after(5):
            await near.wait()
        await wait_until(lambda: len(puts) == 16)
        await trio.sleep(0.05)  # a second write of a block would come now
        assert fetcher.statistics().taken_over == 1
        assert puts == dict.fromkeys(range(16), 1)
        for index in range(16):
            assert await fetcher.block(info, index) == data[index * BLOCK : (index + 1) * BLOCK]
        assert store.ops["iter_range"] == 2
        nursery.cancel_scope.cancel()


async def test_clean_blocks_are_capped_at_half_the_budget_oldest_first() -> None:
    t = sixteen_blocks(8)
    data, info, budget, cache, fetcher = t.data, t.info, t.budget, t.cache, t.fetcher
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        fetcher.start_fetch(info, 0, 16, prefetch=True)  # nobody reads: all of it goes clean
        await wait_until(lambda: all(cache.contains(info.id, i) for i in range(16)))
        await wait_until(lambda: fetcher.statistics().inflight_blocks == 0)
        await wait_until(lambda: fetcher.statistics().held_blocks <= 4)
        assert budget.statistics().in_use == fetcher.statistics().held_blocks * BLOCK
        # The newest blocks are the ones kept; the oldest come back from the cache.
        assert fetcher.cached_range(info, 0, 0, BLOCK) == data[:BLOCK]
        assert fetcher.cached_range(info, 15, 0, BLOCK) is None  # still held in RAM
        assert await fetcher.block(info, 15) == data[15 * BLOCK :]
        nursery.cancel_scope.cancel()


async def test_abandoned_part_lets_waiting_reader_fetch_itself() -> None:
    store = MemoryStore()
    data = os.urandom(BLOCK * 8)
    info = store.put_bytes("m.bin", data)
    gate = threading.Event()
    store.delay = lambda op: gate.wait(5) if op == "iter_range" else None
    fetcher = make_fetcher(store, slots=2, budget=MemoryBudget(8 * BLOCK))
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        ticket = fetcher.start_fetch(info, 0, 8, prefetch=True)
        assert ticket is not None
        fetcher.abandon(ticket)
        gate.set()
        assert await fetcher.block(info, 5) == data[5 * BLOCK : 6 * BLOCK]
        await wait_until(lambda: fetcher.statistics().inflight_blocks == 0)
        nursery.cancel_scope.cancel()


# -- Namespace and Filesystem ------------------------------------------------------------------


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


async def test_tree_lookup_readdir_and_attributes(store: MemoryStore) -> None:
    store.put_bytes("cache_hub/models/model.pt", b"x" * 1000)
    store.put_bytes("cache_hub/tokenizer/vocab.json", b"{}")
    store.put_bytes("cache_hub/dirmarker/", b"")
    store.put_bytes("top.txt", b"hello")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, uid=1234, gid=99, umask=0o027)
        root_fh = await fs.opendir(ROOT_INODE)
        assert [e.name for e in fs.readdir(root_fh, 0)] == ["cache_hub", "top.txt"]
        hub = await fs.lookup(ROOT_INODE, "cache_hub")
        assert hub.is_dir
        hub_fh = await fs.opendir(hub.ino)
        assert [e.name for e in fs.readdir(hub_fh, 0)] == ["dirmarker", "models", "tokenizer"]
        assert [e.name for e in fs.readdir(hub_fh, 2)] == ["tokenizer"]
        models = await fs.lookup(hub.ino, "models")
        model = await fs.lookup(models.ino, "model.pt")
        assert (model.size, model.uid, model.gid) == (1000, 1234, 99)
        assert model.mode & 0o777 == 0o440
        assert (await fs.lookup(ROOT_INODE, "top.txt")).ino == (
            await fs.lookup(ROOT_INODE, "top.txt")
        ).ino
        nursery.cancel_scope.cancel()


async def test_negative_lookups_are_cached_until_ttl(store: MemoryStore) -> None:
    clock = FakeClock()
    store.put_bytes("a.txt", b"a")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, clock=clock)
        for _ in range(3):
            with pytest.raises(NotFound):
                await fs.lookup(ROOT_INODE, "missing.txt")
        assert store.ops["list_page"] == 1
        store.put_bytes("missing.txt", b"now here")
        with pytest.raises(NotFound):
            await fs.lookup(ROOT_INODE, "missing.txt")
        clock.now += 61
        assert (await fs.lookup(ROOT_INODE, "missing.txt")).size == 8
        assert store.ops["list_page"] == 2
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("where", ["dir", "dir/sub"])
async def test_a_listing_that_an_upload_overtook_is_not_cached(where: str) -> None:
    """A LIST in flight while write-back uploads a key in it (and invalidates the directory)
    may have seen the old version: it is sent again, never cached for the TTL (else an open
    would ask for the old ETag, and get ESTALE, until the TTL runs out)."""
    listed = threading.Event()
    go_on = threading.Event()

    class ListsThenWaits(MemoryStore):
        def list_page(self, *args: Any, **kwargs: Any) -> ListPage:
            page = super().list_page(*args, **kwargs)  # the bucket as it is now
            if not listed.is_set():
                listed.set()
                go_on.wait(10)  # the answer still on its way
            return page

    store = ListsThenWaits()
    old = store.put_bytes(f"{where}/app.log", b"old")
    namespace = Namespace(store, "", ttl=60.0, limiter=trio.CapacityLimiter(4))
    async with trio.open_nursery() as nursery:
        found: list[ObjectInfo] = []

        async def look() -> None:
            listing = await namespace.listing("dir", subtree=True)
            found.append(listing.files["app.log"] if where == "dir" else old)

        nursery.start_soon(look)
        await trio.to_thread.run_sync(listed.wait)
        new = store.put_bytes(f"{where}/app.log", b"new, uploaded meanwhile")
        namespace.uploaded(f"{where}/app.log", new)
        go_on.set()
    seen = (await namespace.listing(where)).files["app.log"]
    assert seen.etag == new.etag
    if where == "dir":
        assert found[0].etag == new.etag


async def test_listing_pages_through_many_keys() -> None:
    store = MemoryStore()
    for i in range(2500):
        store.put_bytes(f"d/f{i:05d}", b"")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        d = await fs.lookup(ROOT_INODE, "d")
        fh = await fs.opendir(d.ino)
        assert len(fs.readdir(fh, 0)) == 2500
        assert store.ops["list_page"] >= 3  # 1000 keys a page
        nursery.cancel_scope.cancel()


async def test_keys_that_cannot_be_paths_are_skipped(store: MemoryStore) -> None:
    store.put_bytes("ok/file", b"1")
    store.put_bytes("bad/../escape", b"2")
    store.put_bytes("bad//double", b"3")
    store.put_bytes("bad/./dot", b"4")
    store.put_bytes("bad/" + "n" * 256, b"5")
    store.put_bytes("bad/fine", b"6")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        bad = await fs.lookup(ROOT_INODE, "bad")
        fh = await fs.opendir(bad.ino)
        assert [e.name for e in fs.readdir(fh, 0)] == ["fine"]
        for name in ("..", "."):
            # '.' and '..' resolve to real directories, never to the odd keys
            assert (await fs.lookup(bad.ino, name)).is_dir
        nursery.cancel_scope.cancel()


async def test_sequential_read_is_exact_and_reads_ahead(store: MemoryStore) -> None:
    data = os.urandom(BLOCK * 40 + 123)
    store.put_bytes("m.dat", data)
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        fh = await open_path(fs, "m.dat")
        assert await read_all(fs, fh, len(data), request=BLOCK // 2) == data
        fs.release(fh)
        stats = fs.reads.fetcher.statistics()
        assert stats.blocks_fetched == 41  # every block once
        assert stats.gets < 20  # in parts, not block by block
        nursery.cancel_scope.cancel()


class SlowAdviceCache(MemoryDataCache):
    """A cache whose readahead hints block (like opening block files on a cold disk) until
    `release` is set, and which notes the block of each hint."""

    def __init__(self) -> None:
        super().__init__(BLOCK, 1 << 30)
        self.release = threading.Event()
        self.advised: list[int] = []

    def advise(self, obj: ObjectId, index: int) -> None:
        self.release.wait(timeout=2)
        self.advised.append(index)


async def test_a_warm_read_is_answered_before_its_readahead_hints(store: MemoryStore) -> None:
    data = os.urandom(BLOCK * 12)
    info = store.put_bytes("m.dat", data)
    cache = SlowAdviceCache()
    for index in range(12):  # a warm file: every block in the cache
        cache.put(info.id, index, data[index * BLOCK : (index + 1) * BLOCK])
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, cache=cache)
        fh = await open_path(fs, "m.dat")
        assert await fs.read(fh, 0, 4096) == data[:4096]
        assert cache.advised == []  # the hints (stuck) did not hold the answer back
        cache.release.set()
        await wait_until(lambda: len(cache.advised) == 4)
        assert cache.advised == [0, 1, 2, 3]  # the first window, one part, in order
        assert await read_all(fs, fh, len(data), request=BLOCK) == data
        fs.release(fh)
        nursery.cancel_scope.cancel()


async def test_random_reads_are_exact(store: MemoryStore) -> None:
    rng = random.Random(7)
    data = os.urandom(BLOCK * 16 + 5)
    store.put_bytes("m.dat", data)
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        fh = await open_path(fs, "m.dat")
        for _ in range(300):
            offset = rng.randrange(0, len(data) + 10)
            size = rng.randrange(1, 3 * BLOCK)
            assert await fs.read(fh, offset, size) == data[offset : offset + size]
        nursery.cancel_scope.cancel()


async def test_object_replaced_while_open_gives_old_bytes_or_stale(store: MemoryStore) -> None:
    old = os.urandom(BLOCK * 8)
    store.put_bytes("m.dat", old)
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, clock=clock)
        fh = await open_path(fs, "m.dat")
        assert await fs.read(fh, 0, BLOCK) == old[:BLOCK]
        new = os.urandom(BLOCK * 8)
        store.replace_behind_back("m.dat", new)
        for index in range(8):
            try:
                got = await fs.read(fh, index * BLOCK, BLOCK)
            except StaleObject:
                continue
            assert got == old[index * BLOCK : (index + 1) * BLOCK]
        fs.release(fh)
        clock.now += 61  # the listing expires: a new open sees the new version
        fh2 = await open_path(fs, "m.dat")
        assert await read_all(fs, fh2, len(new)) == new
        nursery.cancel_scope.cancel()


async def test_keep_cache_only_while_etag_unchanged(store: MemoryStore) -> None:
    store.put_bytes("m.dat", b"one")
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, clock=clock)
        ino = (await fs.lookup(ROOT_INODE, "m.dat")).ino
        _, keep_first = await fs.open(ino, os.O_RDONLY)
        _, keep_second = await fs.open(ino, os.O_RDONLY)
        store.replace_behind_back("m.dat", b"two")
        clock.now += 61
        _, keep_changed = await fs.open(ino, os.O_RDONLY)
        assert (keep_first, keep_second, keep_changed) == (False, True, False)
        nursery.cancel_scope.cancel()


async def test_model_files_are_fetched_whole_on_open(store: MemoryStore) -> None:
    data = os.urandom(BLOCK * 32)
    store.put_bytes("w/model.safetensors", data)
    store.put_bytes("w/notes.txt", data)
    cache = MemoryDataCache(BLOCK, 1 << 30)
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, cache=cache, model_min_size=BLOCK)
        await open_path(fs, "w/model.safetensors")
        info = store.head("w/model.safetensors")
        with trio.fail_after(10):
            await whole_fetch_done(fs, info)
        await wait_until(lambda: all(cache.contains(info.id, i) for i in range(32)))
        await open_path(fs, "w/notes.txt")
        await trio.sleep(0.05)
        txt = store.head("w/notes.txt")
        assert not any(cache.contains(txt.id, i) for i in range(32))
        nursery.cancel_scope.cancel()


async def test_first_small_open_bursts_its_small_siblings(store: MemoryStore) -> None:
    for i in range(20):
        store.put_bytes(f"tok/f{i}.json", b"{}" * (i + 1))
    store.put_bytes("tok/big.bin", os.urandom(3 * BLOCK))
    cache = MemoryDataCache(BLOCK, 1 << 30)
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, cache=cache, small_file_max=BLOCK)
        tok = await fs.lookup(ROOT_INODE, "tok")
        await fs.opendir(tok.ino)
        await trio.sleep(0.05)
        assert cache.statistics().blocks == 0  # listing alone fetches nothing
        fh = await open_path(fs, "tok/f3.json")
        assert await fs.read(fh, 0, 100) == b"{}" * 4
        await wait_until(lambda: cache.statistics().blocks >= 20)
        await trio.sleep(0.05)
        assert cache.statistics().blocks == 20  # every small file, not the big one
        gets = store.ops["iter_range"]
        for i in range(20):
            fh = await open_path(fs, f"tok/f{i}.json")
            assert await fs.read(fh, 0, 100) == b"{}" * (i + 1)
        assert store.ops["iter_range"] == gets  # all served from the burst
        nursery.cancel_scope.cancel()


async def test_seek_away_abandons_readahead(store: MemoryStore) -> None:
    data = os.urandom(BLOCK * 64)
    store.put_bytes("m.dat", data)
    gate = threading.Event()
    store.delay = lambda op: gate.wait(5) if op == "iter_range" else None
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        fh = await open_path(fs, "m.dat")
        (reader,) = fs.reads.readers_of(store.head("m.dat").id)
        with trio.move_on_after(0.05):
            await fs.read(fh, 0, BLOCK)  # blocked by the gate; readahead scheduled behind it
        tickets = reader.prefetcher.tickets
        assert tickets, "sequential start should schedule readahead"
        reader.prefetcher.on_read(50 * BLOCK, 10)  # seek away
        assert all(t.cancel.is_set() for t in tickets)
        gate.set()
        assert await fs.read(fh, 50 * BLOCK, 10) == data[50 * BLOCK : 50 * BLOCK + 10]
        nursery.cancel_scope.cancel()


async def test_one_recursive_listing_answers_a_whole_small_tree(store: MemoryStore) -> None:
    for d in range(10):
        for f in range(30):
            store.put_bytes(f"tree/d{d}/sub/f{f}.txt", b"x")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        walked = 0
        await fs.opendir(ROOT_INODE)  # `ls -lR` reads the root first
        tree = await fs.lookup(ROOT_INODE, "tree")
        for d in range(10):
            sub = await fs.lookup((await fs.lookup(tree.ino, f"d{d}")).ino, "sub")
            walked += len(fs.readdir(await fs.opendir(sub.ino), 0))
        assert walked == 300
        assert store.ops["list_page"] == 1  # 300 keys: one recursive page
        nursery.cancel_scope.cancel()


async def test_a_large_tree_caches_the_directories_its_pages_covered(store: MemoryStore) -> None:
    for d in range(8):
        for f in range(1000):
            store.put_bytes(f"big/d{d}/f{f:04d}", b"")
    store.put_bytes("big/zzz.txt", b"last")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        big = await fs.lookup(ROOT_INODE, "big")
        names = [e.name for e in fs.readdir(await fs.opendir(big.ino), 0)]
        assert names == [f"d{d}" for d in range(8)] + ["zzz.txt"]
        pages = SUBTREE_PAGES
        listed = store.ops["list_page"]
        # Directories wholly inside the first pages need no request of their own.
        for d in range(pages - 1):
            node = await fs.lookup(big.ino, f"d{d}")
            assert len(fs.readdir(await fs.opendir(node.ino), 0)) == 1000
        assert store.ops["list_page"] == listed
        last = await fs.lookup(big.ino, "d7")
        assert len(fs.readdir(await fs.opendir(last.ino), 0)) == 1000
        assert store.ops["list_page"] > listed
        nursery.cancel_scope.cancel()


async def test_a_lookup_lists_only_its_directory(store: MemoryStore) -> None:
    for f in range(3000):
        store.put_bytes(f"deep/below/f{f}", b"")
    store.put_bytes("model.bin", b"weights")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        assert (await fs.lookup(ROOT_INODE, "model.bin")).size == 7
        assert store.ops["list_page"] == 1  # not the 3,000 keys below `deep/`
        nursery.cancel_scope.cancel()


async def test_warm_up_lists_the_root_and_its_directories_and_probes_a_get_once(
    store: MemoryStore,
) -> None:
    store.put_bytes("model.bin", b"weights")
    for i in range(50):
        store.put_bytes(f"cache_hub/f{i}.json", b"{}")
        store.put_bytes(f"cache_hub/deeper/g{i}.json", b"{}")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, warm_up=True)
        await wait_until(lambda: store.ops["warm_up"] == 1 and store.ops["list_page"] == 2)
        await trio.sleep(0.05)
        # The root and cache_hub/, each delimited: one request each however big; not deeper/.
        assert store.ops["list_page"] == 2
        assert (await fs.lookup(ROOT_INODE, "model.bin")).size == 7
        hub = await fs.lookup(ROOT_INODE, "cache_hub")
        assert (await fs.lookup(hub.ino, "f7.json")).size == 2
        assert store.ops["list_page"] == 2  # both lookups found everything in memory
        deeper = await fs.lookup(hub.ino, "deeper")
        assert (await fs.lookup(deeper.ino, "g7.json")).size == 2
        assert store.ops["list_page"] == 3  # a deeper directory lists itself when looked up
        assert store.ops["iter_range"] == 0  # the probe is not a data download
        nursery.cancel_scope.cancel()


async def test_reading_a_directory_listed_by_a_lookup_lists_its_subtree_once(
    store: MemoryStore,
) -> None:
    for d in range(3):
        for i in range(10):
            store.put_bytes(f"tree/d{d}/f{i}.txt", b"x")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        tree = await fs.lookup(ROOT_INODE, "tree")
        await fs.lookup(tree.ino, "d0")  # a lookup: tree/ listed with a delimiter
        listed = store.ops["list_page"]
        # `ls -lR tree`: its subdirectories are not cached, so tree/'s subtree is listed
        # (one page) and then every directory below is answered from memory.
        assert [e.name for e in fs.readdir(await fs.opendir(tree.ino), 0)] == ["d0", "d1", "d2"]
        for name in ("d0", "d1", "d2"):
            sub = await fs.lookup(tree.ino, name)
            assert len(fs.readdir(await fs.opendir(sub.ino), 0)) == 10
        assert store.ops["list_page"] == listed + 1
        await fs.opendir(tree.ino)  # again within the TTL: nothing to list
        assert store.ops["list_page"] == listed + 1
        nursery.cancel_scope.cancel()


async def test_a_subtree_too_big_to_list_is_not_listed_again_on_every_read(
    store: MemoryStore,
) -> None:
    for d in range(6):
        for i in range(1000):  # 6,000 keys: more than the 5 pages a subtree listing takes
            store.put_bytes(f"big/d{d}/f{i:04d}", b"")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        big = await fs.lookup(ROOT_INODE, "big")
        await fs.opendir(big.ino)
        listed = store.ops["list_page"]
        for _ in range(3):  # d5 is still not cached: no second subtree listing for that
            await fs.opendir(big.ino)
        assert store.ops["list_page"] == listed
        nursery.cancel_scope.cancel()


async def test_no_warm_up_unless_asked(store: MemoryStore) -> None:
    store.put_bytes("model.bin", b"weights")
    async with trio.open_nursery() as nursery:
        await start_fs(nursery, store)
        await trio.sleep(0.05)
        assert store.ops["list_page"] == 0
        assert store.ops["warm_up"] == 0
        nursery.cancel_scope.cancel()


async def test_first_small_read_fetches_whole_parts_only(store: MemoryStore) -> None:
    """A 16 KiB first read (what the kernel sends) asks for blocks [0, part): not a part and a
    one-block GET for the block the window's end falls into."""
    store.put_bytes("big.dat", os.urandom(BLOCK * 40))
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        fh = await open_path(fs, "big.dat")
        await fs.read(fh, 0, 16 << 10)
        assert store.ops["iter_range"] == 1
        fs.release(fh)
        nursery.cancel_scope.cancel()


class RecordingStore(MemoryStore):
    """A MemoryStore that notes every ranged GET (key, and range), in the order they are sent."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []
        self.ranges: list[tuple[int, int]] = []

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        self.gets.append(obj.key)
        self.ranges.append((start, end))
        return super().iter_range(obj, start, end, chunk)


async def test_burst_fetches_the_opened_file_first_then_siblings_in_listing_order() -> None:
    store = RecordingStore()
    names = [f"tok/f{i:02d}.json" for i in range(40)]
    for name in names:
        store.put_bytes(name, b"{}")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, slots=1, small_file_max=BLOCK)
        fh = await open_path(fs, "tok/f10.json")
        assert await fs.read(fh, 0, 100) == b"{}"
        await wait_until(lambda: len(store.gets) == 40)
        # The opened file is a demand fetch (its own slot); the burst queues for the prefetch
        # slot one by one from the file after it, wrapping around: the order `ls` reads them.
        assert store.gets[0] in ("tok/f10.json", "tok/f11.json")
        burst = [key for key in store.gets if key != "tok/f10.json"]
        assert burst == names[11:] + names[:10]
        nursery.cancel_scope.cancel()


def gated_model_file() -> tuple[RecordingStore, bytes, threading.Event]:
    """A 32-block model file whose GETs all wait until the returned event is set."""
    store = RecordingStore()
    data = os.urandom(BLOCK * 32)
    store.put_bytes("w/model.safetensors", data)
    gate = threading.Event()
    store.delay = lambda op: gate.wait(5) if op == "iter_range" else None
    return store, data, gate


async def test_whole_fetch_lets_block_zero_arrive_before_the_other_parts() -> None:
    store, data, gate = gated_model_file()
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, slots=8, model_min_size=BLOCK)
        fh = await open_path(fs, "w/model.safetensors")
        await trio.sleep(0.1)
        assert store.gets == ["w/model.safetensors"]  # one part (of 8) while block 0 is awaited
        gate.set()
        info = store.head("w/model.safetensors")
        with trio.fail_after(10):
            await whole_fetch_done(fs, info)
        assert len(store.gets) == 8  # then the rest, in parallel
        assert await fs.read(fh, 0, 32 * BLOCK) == data
        nursery.cancel_scope.cancel()


async def test_whole_fetch_waits_for_block_zero_when_a_read_already_asked_for_it() -> None:
    store, data, gate = gated_model_file()
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, slots=8, model_min_size=BLOCK)
        fh = await open_path(fs, "w/model.safetensors")
        info = store.head("w/model.safetensors")
        # No checkpoint since open, so the whole fetch's task has not run yet: a read's demand
        # part claims block 0 first, as when the app's first read beats that task.
        assert fs.reads.fetcher.start_fetch(info, 0, 8, prefetch=False) is not None
        await trio.sleep(0.1)
        assert store.gets == ["w/model.safetensors"]  # the read's part only, block 0 awaited
        gate.set()
        with trio.fail_after(10):
            await whole_fetch_done(fs, info)
        assert await fs.read(fh, 0, 32 * BLOCK) == data
        nursery.cancel_scope.cancel()


async def test_whole_fetch_waits_while_a_reader_streams_then_fills_in_the_rest() -> None:
    store = RecordingStore()
    blocks = 64
    data = os.urandom(BLOCK * blocks)
    store.put_bytes("w/model.safetensors", data)
    async with trio.open_nursery() as nursery:
        fs = await start_fs(
            nursery, store, slots=8, budget=64 * BLOCK, model_min_size=BLOCK, transfers=8
        )
        fh = await open_path(fs, "w/model.safetensors")
        window = fs.reads.options.readahead_max + fs.reads.options.part_size
        for offset in range(0, 16 * BLOCK, BLOCK):  # a reader streaming through the first 16
            assert await fs.read(fh, offset, BLOCK) == data[offset : offset + BLOCK]
            await trio.sleep(0.01)  # let any background fetch run
            furthest = max(end for _, end in store.ranges)
            # Only the reader's readahead fetched, not the whole fetch's 8 parallel parts.
            assert furthest <= offset + BLOCK + window, (offset, furthest)
        # The reader stops (but keeps the file open): the whole fetch fills in the rest.
        info = store.head("w/model.safetensors")
        with trio.fail_after(10):
            await whole_fetch_done(fs, info)
        assert fs.reads.fetcher.fully_present(info)
        assert await fs.read(fh, 60 * BLOCK, 4 * BLOCK) == data[60 * BLOCK :]
        nursery.cancel_scope.cancel()


async def test_reading_the_root_during_the_warm_up_does_not_list_the_whole_tree(
    store: MemoryStore,
) -> None:
    """A mount's readiness check (`ls MOUNT`) often comes while the warm-up still lists the
    root's directories: those listings are on their way, so no subtree listing is started."""
    for i in range(20):
        store.put_bytes(f"tree/d{i % 4}/f{i}.txt", b"x")
    gate = threading.Event()
    lists: list[int] = []

    def hold_directory_listings(op: str) -> None:
        if op == "list_page":
            lists.append(1)
            if len(lists) > 1:  # the root's own listing passes; tree/ waits
                gate.wait(5)

    store.delay = hold_directory_listings
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, warm_up=True)
        await wait_until(lambda: len(lists) == 2)  # the warm-up is listing tree/
        names = [e.name for e in fs.readdir(await fs.opendir(ROOT_INODE), 0)]
        assert names == ["tree"]
        gate.set()
        await wait_until(lambda: fs.namespace.statistics().cached_dirs == 2)
        assert len(lists) == 2  # the root and tree/, each once; no recursive listing
        nursery.cancel_scope.cancel()


# -- drop-behind (the kernel's side is tested in test_mount.py) ------------------------------------


class RecordingTrimmer(PageCacheAdvisor):
    """Records the drops (and fills) asked for instead of advising the kernel; `gate` holds
    the drops."""

    def __init__(self) -> None:
        super().__init__("/nonexistent")
        self.calls: list[tuple[str, int, int]] = []
        self.fills: list[tuple[str, int, int]] = []
        self.gate: trio.Event | None = None
        self.fill_gate: trio.Event | None = None

    async def fill(self, path: str, start: int, end: int) -> None:
        self.fills.append((path, start, end))
        if self.fill_gate is not None:
            await self.fill_gate.wait()

    async def drop(self, path: str, start: int, end: int) -> None:
        self.calls.append((path, start, end))
        if self.gate is not None:
            await self.gate.wait()
        self.dropped += end - start


@pytest.fixture
def small_drop_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dropbehind, "DROP_LAG", 4 * BLOCK)
    monkeypatch.setattr(dropbehind, "DROP_STEP", 4 * BLOCK)


def read_blocks(drop: DropBehind, first: int, last: int) -> list[tuple[int, int] | None]:
    return [drop.on_read(index * BLOCK, (index + 1) * BLOCK) for index in range(first, last + 1)]


def test_drop_behind_is_due_a_step_at_a_time_a_lag_behind(small_drop_steps: None) -> None:
    drop = DropBehind()
    assert read_blocks(drop, 0, 7) == [None] * 8
    assert read_blocks(drop, 8, 8) == [(0, 4 * BLOCK)]
    drop.pending = trio.Event()
    assert read_blocks(drop, 9, 21) == [None] * 13  # one drop at a time
    drop.finished(0, 4 * BLOCK)
    assert drop.pending is None
    assert read_blocks(drop, 22, 22) == [(4 * BLOCK, 16 * BLOCK)]  # all that is due since


def test_drop_behind_drops_only_what_the_current_run_read(small_drop_steps: None) -> None:
    drop = DropBehind()
    assert read_blocks(drop, 40, 47) == [None] * 8  # a jump starts a new run at 40
    assert read_blocks(drop, 48, 48) == [(40 * BLOCK, 44 * BLOCK)]
    drop.pending = trio.Event()
    assert read_blocks(drop, 0, 0) == [None]  # back to the start: a new run, mid-drop
    drop.finished(40 * BLOCK, 44 * BLOCK)
    assert drop.dropped_to == 0  # the drop that ended does not move the new run's start
    assert read_blocks(drop, 1, 7) == [None] * 7


async def drop_fs(store: MemoryStore, nursery: trio.Nursery, **options: object) -> Filesystem:
    fs = await start_fs(nursery, store, drop_behind_min=16 * BLOCK, **options)
    fs.reads.page_cache = RecordingTrimmer()
    return fs


def trimmer_of(fs: Filesystem) -> RecordingTrimmer:
    assert isinstance(fs.reads.page_cache, RecordingTrimmer)
    return fs.reads.page_cache


@pytest.mark.usefixtures("small_drop_steps")
async def test_drop_behind_follows_one_sequential_reader(store: MemoryStore) -> None:
    data = os.urandom(BLOCK * 32)
    store.put_bytes("big.bin", data)
    store.put_bytes("small.bin", data[: 15 * BLOCK])
    async with trio.open_nursery() as nursery:
        fs = await drop_fs(store, nursery)
        fh = await open_path(fs, "big.bin")
        assert await read_all(fs, fh, len(data), BLOCK) == data
        await fs.flush(fh)
        calls = trimmer_of(fs).calls
        assert calls[0][:2] == ("big.bin", 0)
        assert all(a[2] == b[1] for a, b in itertools.pairwise(calls))  # contiguous
        assert calls[-1][2] == 24 * BLOCK  # the last read was at 31 blocks: 4 behind, rounded
        assert fs.reads.statistics().dropped_behind == 24 * BLOCK
        calls.clear()
        fh = await open_path(fs, "small.bin")  # under drop_behind_min
        await read_all(fs, fh, 15 * BLOCK, BLOCK)
        await fs.flush(fh)
        assert calls == []
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("small_drop_steps")
async def test_no_drop_behind_for_random_reads_or_a_second_reader(store: MemoryStore) -> None:
    data = os.urandom(BLOCK * 32)
    store.put_bytes("big.bin", data)
    async with trio.open_nursery() as nursery:
        fs = await drop_fs(store, nursery)
        fh = await open_path(fs, "big.bin")
        for index in random.Random(3).sample(range(32), 32):
            assert await fs.read(fh, index * BLOCK, BLOCK) == data[index * BLOCK :][:BLOCK]
        fs.release(fh)
        first, second = await open_path(fs, "big.bin"), await open_path(fs, "big.bin")
        await read_all(fs, first, len(data), BLOCK)
        await fs.flush(first)
        assert trimmer_of(fs).calls == []
        fs.release(second)  # now the only reader: its next reads drop behind it
        await fs.read(first, 0, BLOCK)
        await read_all(fs, first, len(data), BLOCK)
        await fs.flush(first)
        assert trimmer_of(fs).calls
        nursery.cancel_scope.cancel()


def test_a_file_keeps_its_page_cache_while_four_times_its_size_is_available() -> None:
    assert pagecache.keeps_page_cache(4 << 30, 1 << 30)
    assert not pagecache.keeps_page_cache((4 << 30) - 1, 1 << 30)
    assert pagecache.keeps_page_cache(None, 1 << 40)  # unknown: the kernel decides, as for any file
    # Two copies (a file's pages and its block files' pages) need twice that.
    assert pagecache.keeps_page_cache(8 << 30, 1 << 30, copies=2)
    assert not pagecache.keeps_page_cache((8 << 30) - 1, 1 << 30, copies=2)


@pytest.mark.usefixtures("small_drop_steps")
async def test_drop_behind_auto_asks_the_memory_of_the_reader_at_each_step(
    store: MemoryStore,
) -> None:
    """With the memory rule, nothing is dropped while 4x the file is available to its reader;
    once that runs short, the next step drops all the reader has passed, from its start."""
    data = os.urandom(BLOCK * 32)
    store.put_bytes("big.bin", data)
    asked: list[int] = []
    available = [4 * len(data)]

    def memory(pid: int) -> int | None:
        asked.append(pid)
        return available[0]

    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, clock=clock, memory=memory)
        fs.reads.page_cache = trimmer = RecordingTrimmer()
        ino = (await fs.lookup(ROOT_INODE, "big.bin")).ino
        fh, _ = await fs.open(ino, os.O_RDONLY, 4242)
        for offset in range(0, 16 * BLOCK, BLOCK):
            assert await fs.read(fh, offset, BLOCK) == data[offset : offset + BLOCK]
        assert trimmer.calls == []
        # The opener's memory, asked once per MEMORY_TTL (the mount's own, pid 0, decides how
        # the fetched blocks are written: see the test after this one).
        assert [pid for pid in asked if pid] == [4242]
        available[0] -= 1
        clock.now += MEMORY_TTL
        assert await fs.read(fh, 16 * BLOCK, BLOCK) == data[16 * BLOCK : 17 * BLOCK]
        await fs.flush(fh)
        assert trimmer.calls == [("big.bin", 0, 12 * BLOCK)]  # 4 blocks behind, from the start
        assert [pid for pid in asked if pid] == [4242, 4242]
        nursery.cancel_scope.cancel()


async def test_blocks_go_through_the_page_cache_only_while_memory_is_plentiful_for_the_file(
    store: MemoryStore,
) -> None:
    """The mount's own memory (pid 0) decides, by the page cache rule for two copies (the
    file's pages and its blocks'): 8x the file available, and the blocks of its GETs are
    written to the cache through the page cache; less, and they bypass it (O_DIRECT), so a
    model is not held twice in RAM where memory would hold it only once with the margin."""
    files = {name: os.urandom(BLOCK * 8) for name in ("first.dat", "second.dat")}
    for name, data in files.items():
        store.put_bytes(name, data)
    available, asked = [8 * BLOCK * 8], []

    def memory(pid: int) -> int | None:
        asked.append(pid)
        return available[0]

    clock, cache = FakeClock(), MemoryDataCache(BLOCK, 1 << 30)
    async with trio.open_nursery() as nursery:
        fs = await start_fs(
            nursery, store, clock=clock, memory=memory, cache=cache, prefetch_small=False
        )
        for name, data in files.items():
            fh = await open_path(fs, name)
            assert await read_all(fs, fh, len(data)) == data
            await fs.reads.fetcher.settle(store.head(name).id)
            assert all(cache.contains(store.head(name).id, i) for i in range(8))
            available[0] -= 1  # short from now on, for a file of this size
            clock.now += MEMORY_TTL
        assert cache.page_cache_puts == 8  # the first file's blocks; none of the second's
        assert set(asked) == {0}
        nursery.cancel_scope.cancel()


async def test_a_whole_fetch_fills_the_page_cache_part_by_part_while_memory_allows(
    store: MemoryStore,
) -> None:
    """Parts go into the page cache in order once fetched, while a reader has the file open;
    an open of the cached file fills it again, in larger pieces (the kernel skips what it
    holds); with memory short nothing is filled, and a
    cached file then needs no background fetch at all."""
    data = os.urandom(BLOCK * 10)
    store.put_bytes("m.bin", data)
    info = store.head("m.bin")
    available = [4 * len(data)]
    clock = FakeClock()
    parts = [
        ("m.bin", 0, 4 * BLOCK),
        ("m.bin", 4 * BLOCK, 8 * BLOCK),
        ("m.bin", 8 * BLOCK, 10 * BLOCK),
    ]
    async with trio.open_nursery() as nursery:
        fs = await start_fs(
            nursery,
            store,
            clock=clock,
            model_min_size=BLOCK,
            prefetch_small=False,
            memory=lambda pid: available[0],
        )
        fs.reads.page_cache = advisor = RecordingTrimmer()
        fh = await open_path(fs, "m.bin")
        await whole_fetch_done(fs, info)
        assert advisor.fills == parts
        await fs.flush(fh)
        fs.release(fh)
        advisor.fills.clear()
        fs.release(await open_path(fs, "m.bin"))  # closed at once: nobody to fill it for
        await whole_fetch_done(fs, info)
        assert advisor.fills == []
        fh = await open_path(fs, "m.bin")
        await whole_fetch_done(fs, info)
        assert advisor.fills == [("m.bin", 0, len(data))]  # cached: one fill (up to FILL_MAX)
        fs.release(fh)
        advisor.fills.clear()
        available[0] -= 1
        clock.now += MEMORY_TTL
        fetch = fs.reads.whole_fetch(info.id)
        fs.release(await open_path(fs, "m.bin"))
        assert fs.reads.whole_fetch(info.id) is fetch  # no new one
        assert advisor.fills == []
        nursery.cancel_scope.cancel()


async def test_the_last_readers_close_waits_for_the_fill_under_way(store: MemoryStore) -> None:
    """No descriptor of ours on the file outlives the close(2) of its last reader."""
    store.put_bytes("m.bin", os.urandom(BLOCK * 4))
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, model_min_size=BLOCK, prefetch_small=False)
        fs.reads.page_cache = advisor = RecordingTrimmer()
        advisor.fill_gate = trio.Event()
        first, second = await open_path(fs, "m.bin"), await open_path(fs, "m.bin")
        await wait_until(lambda: bool(advisor.fills))
        with trio.fail_after(5):
            await fs.flush(first)  # another reader remains: no wait
        fs.release(first)
        flushed = trio.Event()

        async def close_last() -> None:
            await fs.flush(second)
            flushed.set()

        nursery.start_soon(close_last)
        await trio.sleep(0.05)
        assert not flushed.is_set()
        advisor.fill_gate.set()
        with trio.fail_after(5):
            await flushed.wait()
        nursery.cancel_scope.cancel()


async def test_an_open_of_a_new_version_waits_for_the_advisors_handles(store: MemoryStore) -> None:
    """The advice gate: the kernel's invalidation of the old version's pages must come after
    every fill of them, so the open that causes it waits until the advisor's handles close."""
    store.put_bytes("f", b"x" * 4096)
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, dir_cache_time=0.0)
        fs.reads.page_cache = advisor = RecordingTrimmer()
        ino = (await fs.lookup(ROOT_INODE, "f")).ino
        fs.release((await fs.open(ino, os.O_RDONLY))[0])
        advisor._threads.add(4242)
        internal, _ = await fs.open(ino, os.O_RDONLY, 4242)
        store.put_bytes("f", b"y" * 4096)
        fs.namespace.invalidate("")
        opened: list[tuple[int, bool]] = []

        async def open_new_version() -> None:
            opened.append(await fs.open(ino, os.O_RDONLY))

        nursery.start_soon(open_new_version)
        await trio.sleep(0.05)
        assert opened == []  # waits for the advisor's handle
        assert await fs.open(ino, os.O_RDONLY, 4242) == (INTERNAL_FH, True)  # no new fill
        fs.release(internal)
        await wait_until(lambda: bool(opened))
        fh, keep_cache = opened[0]
        assert keep_cache is False
        assert await fs.read(fh, 0, 4096) == b"y" * 4096
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("small_drop_steps")
async def test_flush_waits_for_the_drop_under_way(store: MemoryStore) -> None:
    store.put_bytes("big.bin", os.urandom(BLOCK * 16))
    async with trio.open_nursery() as nursery:
        fs = await drop_fs(store, nursery)
        trimmer = trimmer_of(fs)
        trimmer.gate = trio.Event()
        fh = await open_path(fs, "big.bin")
        await read_all(fs, fh, 16 * BLOCK, BLOCK)
        await wait_until(lambda: bool(trimmer.calls))
        flushed = trio.Event()

        async def flush() -> None:
            await fs.flush(fh)
            flushed.set()

        nursery.start_soon(flush)
        await trio.sleep(0.05)
        assert not flushed.is_set()
        trimmer.gate.set()
        with trio.fail_after(5):
            await flushed.wait()
        nursery.cancel_scope.cancel()


async def test_own_opens_are_recognised_by_thread_while_they_open(
    store: MemoryStore, tmp_path: Path
) -> None:
    (tmp_path / "f").write_bytes(b"x" * 4096)
    store.put_bytes("f", b"x" * 4096)
    seen: list[bool] = []
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        ino = (await fs.lookup(ROOT_INODE, "f")).ino
        me = threading.get_native_id()
        assert (await fs.open(ino, os.O_RDONLY, me))[0] != INTERNAL_FH  # no trimmer: not ours
        trimmer = PageCacheAdvisor(str(tmp_path))
        fs.reads.page_cache = trimmer
        real_open = os.open

        def open_and_look(path: str, flags: int) -> int:
            seen.append(trimmer.is_own(threading.get_native_id()))
            return real_open(path, flags)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pagecache.os, "open", open_and_look)
            await trimmer.drop("f", 0, 4096)
            await trimmer.drop("absent", 0, 4096)  # the open fails quietly
        assert seen == [True, True]  # the opening thread is ours while it opens
        assert trimmer.dropped == 4096
        assert not trimmer._threads  # and no longer after: its id may be reused elsewhere
        assert (await fs.open(ino, os.O_RDONLY, me))[0] != INTERNAL_FH  # the trio thread is not
        trimmer._threads.add(me)
        reads = fs.statistics().reads
        fh, keep_cache = await fs.open(ino, os.O_RDONLY, me)  # ours: a reader, no user read
        assert (fh != INTERNAL_FH, keep_cache) == (True, True)
        assert await fs.read(fh, 0, 4096) == b"x" * 4096
        assert fs.statistics().reads == reads
        fs.release(fh)
        store.put_bytes("f", b"y" * 4096)  # another version, not yet opened by anyone
        fs.inodes.get(ino).info = store.head("f")
        assert await fs.open(ino, os.O_RDONLY, me) == (INTERNAL_FH, True)  # nothing to fill
        nursery.cancel_scope.cancel()


async def test_listings_are_cached_on_the_trio_thread_only(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cachetools caches are not thread safe: the LIST requests run in worker threads, but
    every write of the listing cache happens on the trio thread."""
    writers: set[int] = set()

    class RecordingCache(TTLCache):  # type: ignore[type-arg]
        def __setitem__(self, key: object, value: object) -> None:
            writers.add(threading.get_ident())
            super().__setitem__(key, value)

    monkeypatch.setattr(namespace_module, "TTLCache", RecordingCache)
    for d in range(8):
        for f in range(5):
            store.put_bytes(f"t/d{d}/s/f{f}", b"x")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        async with trio.open_nursery() as readers:
            readers.start_soon(fs.opendir, ROOT_INODE)
            for d in range(8):
                readers.start_soon(fs.namespace.listing, f"t/d{d}")
            readers.start_soon(functools.partial(fs.namespace.listing, "t", subtree=True))
        assert fs.namespace.statistics().cached_dirs > 8
        nursery.cancel_scope.cancel()
    assert writers == {threading.get_ident()}


async def test_opening_a_cached_object_to_append_reads_it_from_the_cache(
    store: MemoryStore, tmp_path: Path
) -> None:
    """Write-back copies an object into its staging file through the block cache (the mount
    passes `BlockFetcher.chunks`): a model already read once is not downloaded again."""
    data = os.urandom(BLOCK * 5 + 7)
    info = store.put_bytes("logs/run.log", data)
    fetcher = make_fetcher(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(fetcher.run)
        assert b"".join([chunk async for chunk in fetcher.chunks(info)]) == data
        gets = store.ops["iter_range"]
        engine = WriteBack(store, tmp_path, source=fetcher.chunks)
        try:
            handle = await engine.open("logs/run.log", info, append=True)
            engine.write(handle, 0, b"more")
            assert engine.read(handle, 0, len(data) + 4) == data + b"more"
            engine.release(handle)
        finally:
            engine.close()
        assert store.ops["iter_range"] == gets  # every block came from the cache
        nursery.cancel_scope.cancel()


async def test_names_that_are_not_utf8_are_refused_with_einval(store: MemoryStore) -> None:
    """The adapter decodes names with surrogateescape; such a name cannot be an S3 key."""
    store.put_bytes("d/f.txt", b"x")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store)
        d = await fs.lookup(ROOT_INODE, "d")
        bad = os.fsdecode(b"\xffname")
        for change in (
            lambda: fs.create(d.ino, bad, os.O_WRONLY),
            lambda: fs.mkdir(d.ino, bad),
            lambda: fs.rename(d.ino, "f.txt", d.ino, bad, 0),
        ):
            with pytest.raises(InvalidArgument):
                await change()
        with pytest.raises(NotFound):
            await fs.lookup(d.ino, bad)
        nursery.cancel_scope.cancel()


def test_the_warned_keys_are_bounded(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(paths, "_warned", set())
    monkeypatch.setattr(paths, "WARNED_KEYS_MAX", 3)
    with caplog.at_level(logging.WARNING, logger="modelfs.core.paths"):
        for _ in range(2):
            for number in range(1000):
                paths.warn_skipped(f"bad//{number}")
    assert len(paths._warned) == 4  # three by name, and the one that said "more"
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4
    assert lines[-1] == "more keys cannot be paths; skipping them without a warning each"


async def test_fsyncdir_reaches_the_writer_through_the_fuse_adapter(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel takes ENOSYS from fsyncdir for success: `mv tmp final; sync dir` must not
    be a no-op. The adapter awaits the core, the core the writer (see test_writeback.py for
    what the writer syncs)."""
    fs = make_fs(store)
    synced: list[str] = []

    async def fsync_names() -> None:
        synced.append("names")

    monkeypatch.setattr(fs.writer, "fsync_names", fsync_names)
    fh = await fs.opendir(ROOT_INODE)
    await FuseOperations(fs).fsyncdir(fh, False)
    assert synced == ["names"]


async def test_a_read_only_core_refuses_every_change_with_erofs(store: MemoryStore) -> None:
    """A read-only mount has the null writer: no None checks, every change is EROFS."""
    store.put_bytes("d/f.txt", b"x")
    async with trio.open_nursery() as nursery:
        fs = await start_fs(nursery, store, umask=0)
        d = await fs.lookup(ROOT_INODE, "d")
        f = await fs.lookup(d.ino, "f.txt")
        assert f.mode & 0o777 == 0o444
        changes = [
            lambda: fs.create(d.ino, "new.txt", os.O_WRONLY),
            lambda: fs.open(f.ino, os.O_WRONLY),
            lambda: fs.set_size(f.ino, 0, None),
            lambda: fs.unlink(d.ino, "f.txt"),
            lambda: fs.rename(d.ino, "f.txt", d.ino, "g.txt", 0),
            lambda: fs.mkdir(ROOT_INODE, "e"),
        ]
        for change in changes:
            with pytest.raises(ReadOnly):
                await change()
        assert store.keys() == ["d/f.txt"]
        nursery.cancel_scope.cancel()
