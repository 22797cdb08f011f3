"""One block cache root used by several DiskBlockCaches at once (several mounts, one cache):
blocks stored once and served to all, one size bound and LRU for the root, pins.

Two caches in one process share a root exactly as two processes do (each has its own lock
file descriptions, index and ledger handle); the cross-process test runs real processes.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.cache import evict
from modelfs.cache.disk import HEADER_SIZE, DiskBlockCache
from modelfs.cache.pins import PINS_NAME, PinsTooLarge
from modelfs.objects import ObjectId
from test_blockcache import FILE, FakeClock, block_files, payload, tree_bytes

BLOCK = 4096
A = ObjectId("models/a.safetensors", '"etag-a"')
B = ObjectId("models/b.pt", '"etag-b"')
C = ObjectId("models/c.bin", '"etag-c"')


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pair(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[DiskBlockCache, DiskBlockCache]]:
    root = tmp_path / "c"
    first = DiskBlockCache(root, BLOCK, 8 * FILE, clock=clock, touch_interval=0)
    second = DiskBlockCache(root, BLOCK, 8 * FILE, clock=clock, touch_interval=0)
    yield first, second
    first.close()
    second.close()


def test_a_block_stored_by_one_is_served_to_the_other(
    pair: tuple[DiskBlockCache, DiskBlockCache],
) -> None:
    first, second = pair
    first.put(A, 0, payload(A, 0))
    assert second.contains(A, 0)
    assert second.get(A, 0) == payload(A, 0)
    second.put(A, 0, payload(A, 0))  # a use, not a second file
    assert len(block_files(first.root)) == 1
    for cache in pair:
        stats = cache.statistics()
        assert (stats.blocks, stats.bytes) == (1, FILE)
    assert second.statistics().hits == 1


def counted_disk_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the block cache stats or tests for existence from now on."""
    looked: list[str] = []
    real_stat, real_lexists = os.stat, os.path.lexists

    def counted_stat(path: str, *args: object, **kwargs: object) -> os.stat_result:
        looked.append(str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    def counted_lexists(path: str) -> bool:
        looked.append(str(path))
        return real_lexists(path)

    monkeypatch.setattr("modelfs.cache.disk.os.stat", counted_stat)
    monkeypatch.setattr("modelfs.cache.disk.os.path.lexists", counted_lexists)
    return looked


def test_a_missing_block_costs_no_stat_until_another_cache_links_one(
    pair: tuple[DiskBlockCache, DiskBlockCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trio thread asks `contains` for every block a read or a burst may fetch: a stat of a
    missing file there waits for a cold directory. While the ledger counts no block file this
    cache has not seen, a block it does not know is not on disk, and it asks the disk nothing."""
    first, second = pair
    stats = counted_disk_lookups(monkeypatch)
    first.put(A, 0, payload(A, 0))
    assert first.contains(A, 0)
    assert not first.contains(A, 1)
    assert not first.contains(B, 0)
    assert stats == []  # its own block is known; the others are not there
    second.put(B, 0, payload(B, 0))  # the ledger now counts a file `first` has not seen
    assert first.contains(B, 0)
    assert first.get(B, 0) == payload(B, 0)
    assert stats  # looked for on disk, and adopted
    stats.clear()
    assert not first.contains(C, 0)  # every linked file seen again: no stat
    assert stats == []


def test_a_put_asks_the_disk_nothing_while_every_linked_file_is_known(
    pair: tuple[DiskBlockCache, DiskBlockCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put looks for the block's file (did another process store it?) only while the ledger
    counts files this cache has not seen: a failed lookup in a large directory is a visible
    share of a cold small-file read's cache writing."""
    first, second = pair
    looked = counted_disk_lookups(monkeypatch)
    for index in range(3):
        first.put(A, index, payload(A, index))
    assert looked == []
    second.put(B, 0, payload(B, 0))
    first.put(B, 0, payload(B, 0))  # found on disk and adopted: not stored twice
    assert looked
    assert len(block_files(first.root)) == 4
    assert (first.statistics().blocks, first.statistics().bytes) == (4, 4 * FILE)
    looked.clear()
    first.put(C, 0, payload(C, 0))
    assert looked == []


def test_a_block_another_cache_stores_while_this_one_writes_it_is_adopted_not_counted_twice(
    pair: tuple[DiskBlockCache, DiskBlockCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = pair
    write_temp = first._tree.write_temp

    def then_the_other_stores_it(*args: object, **kwargs: object) -> tuple[str, object]:
        written = write_temp(*args, **kwargs)  # type: ignore[arg-type]
        second.put(A, 0, payload(A, 0))
        return written

    monkeypatch.setattr(first._tree, "write_temp", then_the_other_stores_it)
    first.put(A, 0, payload(A, 0))
    assert len(block_files(first.root)) == 1
    assert not list(first.root.rglob(".tmp-*"))  # its own copy, not needed, is gone
    assert tree_bytes(first.root) == FILE
    assert (first.statistics().blocks, first.statistics().bytes) == (1, FILE)
    assert first.get(A, 0) == payload(A, 0)
    assert first.statistics().hits == 1  # indexed: the adopted file, not a miss


def test_the_size_bound_is_the_roots(pair: tuple[DiskBlockCache, DiskBlockCache]) -> None:
    first, second = pair
    for index in range(6):
        first.put(A, index, payload(A, index))
    for index in range(6):
        second.put(B, index, payload(B, index))
    assert tree_bytes(first.root) == 8 * FILE
    assert first.statistics().bytes == second.statistics().bytes == 8 * FILE
    # The oldest four were first's; second evicted them, first finds them gone and refetches.
    assert [first.get(A, i) is None for i in range(6)] == [True] * 4 + [False] * 2
    assert first.statistics().corrupt == 0
    first.put(A, 0, payload(A, 0))
    assert second.get(A, 0) == payload(A, 0)
    assert tree_bytes(first.root) == 8 * FILE == second.statistics().bytes


def test_a_block_used_by_the_other_gets_a_second_chance(
    pair: tuple[DiskBlockCache, DiskBlockCache],
) -> None:
    """first's own order says A0 is the oldest, but second read it since: A1 goes instead."""
    first, second = pair
    for index in range(8):
        first.put(A, index, payload(A, index))
    assert second.get(A, 0) == payload(A, 0)  # touch_interval 0: its mtime says so
    first.put(B, 0, payload(B, 0))
    assert first.contains(A, 0)
    assert not first.contains(A, 1)
    assert first.statistics().evictions == 1


def test_blocks_another_cache_stored_unseen_are_evicted_after_a_rescan(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "c"
    with (
        DiskBlockCache(root, BLOCK, 4 * FILE, clock=clock) as first,
        DiskBlockCache(root, BLOCK, 4 * FILE, clock=clock) as second,
    ):
        for index in range(4):
            second.put(B, index, payload(B, index))  # first has not seen these
        first.put(A, 0, payload(A, 0))
        assert tree_bytes(root) == 4 * FILE
        assert first.get(A, 0) == payload(A, 0)
        assert first.statistics().evictions == 1
        assert [second.get(B, i) is None for i in range(4)] == [True, False, False, False]


def test_concurrent_writers_in_two_processes_keep_one_bound(tmp_path: Path) -> None:
    root, limit = tmp_path / "c", 12 * FILE
    script = textwrap.dedent(
        f"""
        import sys, threading
        from pathlib import Path
        from modelfs.cache.disk import DiskBlockCache
        from modelfs.objects import ObjectId
        cache = DiskBlockCache(Path({str(root)!r}), {BLOCK}, {limit})
        def write(writer):
            obj = ObjectId(f"{{sys.argv[1]}}-{{writer}}", "e")
            for index in range(120):
                cache.put(obj, index, bytes([writer]) * {BLOCK})
                if index % 7 == 0:
                    cache.get(obj, max(0, index - 3))
        threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
        for thread in threads: thread.start()
        for thread in threads: thread.join()
        stats = cache.statistics()
        assert stats.write_errors == 0 and stats.corrupt == 0, stats
        cache.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, name], env=env) for name in ("p", "q")
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    with DiskBlockCache(root, BLOCK, limit) as after:
        assert after.statistics().bytes == tree_bytes(root) <= limit
    # No process was killed: the ledger never drifted, so a cache joining now (not alone, so
    # it trusts the ledger) agrees with the files.
    blocks = len(block_files(root))
    assert blocks * FILE == tree_bytes(root)


def test_a_cache_joining_a_busy_root_leaves_its_temp_files(
    pair: tuple[DiskBlockCache, DiskBlockCache], clock: FakeClock
) -> None:
    first, second = pair
    first.put(A, 0, payload(A, 0))
    fanout = block_files(first.root)[0].parent
    in_flight = fanout / f".tmp-{os.getpid()}-999"
    in_flight.write_bytes(b"x" * 100)  # a block another process is writing
    with DiskBlockCache(first.root, BLOCK, 8 * FILE, clock=clock):
        assert in_flight.exists()
    first.close()
    second.close()
    with DiskBlockCache(first.root, BLOCK, 8 * FILE, clock=clock):  # alone: a crash's leftover
        assert not in_flight.exists()


# -- pins ----------------------------------------------------------------------------------------


def test_pinned_blocks_are_never_evicted_and_pins_survive_a_restart(
    tmp_path: Path, clock: FakeClock
) -> None:
    root = tmp_path / "c"
    with DiskBlockCache(root, BLOCK, 4 * FILE, clock=clock) as cache:
        cache.pin([(A, 2 * BLOCK)])
        assert cache.statistics().pinned_bytes == 2 * FILE
        for index in range(2):
            cache.put(A, index, payload(A, index))
        for index in range(6):
            cache.put(B, index, payload(B, index))
        assert cache.contains(A, 0)
        assert cache.contains(A, 1)
        assert tree_bytes(root) == 4 * FILE
    assert stat.S_IMODE(os.stat(root / PINS_NAME).st_mode) == 0o600
    with DiskBlockCache(root, BLOCK, 4 * FILE, clock=clock) as restarted:
        assert restarted.statistics().pinned_bytes == 2 * FILE
        for index in range(6):
            restarted.put(C, index, payload(C, index))
        assert restarted.get(A, 0) == payload(A, 0)
        assert restarted.get(A, 1) == payload(A, 1)
        assert [pin.key for pin in restarted.unpin(keys=[A.key])] == [A.key]
        assert restarted.statistics().pinned_bytes == 0
        for index in range(6, 10):
            restarted.put(C, index, payload(C, index))
        assert not restarted.contains(A, 0)


def test_pinning_more_than_the_cache_is_refused_and_pins_nothing(
    pair: tuple[DiskBlockCache, DiskBlockCache],
) -> None:
    first, second = pair
    first.pin([(A, 5 * BLOCK)])
    with pytest.raises(PinsTooLarge) as refused:
        second.pin([(B, 3 * BLOCK), (C, 1)])  # 5 + 3 + 1 blocks of a cache of 8
    assert (refused.value.adding, refused.value.max_bytes) == (4 * FILE + 1 - BLOCK, 8 * FILE)
    assert [pin.key for pin in first.pins()] == [A.key]
    second.pin([(B, 3 * BLOCK)])  # exactly full is allowed
    assert first.statistics().pinned_bytes == 8 * FILE


def test_a_pin_by_one_cache_keeps_the_other_from_evicting_it(
    pair: tuple[DiskBlockCache, DiskBlockCache],
) -> None:
    first, second = pair
    first.pin([(A, BLOCK)])
    first.put(A, 0, payload(A, 0))
    assert second.get(A, 0) == payload(A, 0)  # second knows it: its least recently used
    for index in range(12):
        second.put(B, index, payload(B, index))
    assert second.get(A, 0) == payload(A, 0)
    assert tree_bytes(first.root) == 8 * FILE


def test_pinning_a_key_again_moves_the_pin_and_unpin_takes_a_prefix(
    pair: tuple[DiskBlockCache, DiskBlockCache],
) -> None:
    first, _ = pair
    new_a = ObjectId(A.key, '"etag-a2"')
    first.pin([(A, BLOCK), (B, 10)])
    first.pin([(new_a, 2 * BLOCK)])
    assert {(pin.key, pin.etag) for pin in first.pins()} == {(A.key, new_a.etag), (B.key, B.etag)}
    assert first.statistics().pinned_bytes == 2 * FILE + HEADER_SIZE + 10
    assert len(first.unpin(prefixes=["models/"])) == 2
    assert first.pins() == []


def test_a_cache_that_is_all_pinned_stores_nothing_more_without_scanning_each_time(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DiskBlockCache(tmp_path / "c", BLOCK, 2 * FILE, clock=clock) as cache:
        cache.pin([(A, 2 * BLOCK)])
        cache.put(A, 0, payload(A, 0))
        cache.put(A, 1, payload(A, 1))
        scans = 0
        real_rescan = evict.Evictor.rescan

        def counting_rescan(self: evict.Evictor, usage: object) -> None:
            nonlocal scans
            scans += 1
            real_rescan(self, usage)  # type: ignore[arg-type]

        monkeypatch.setattr(evict.Evictor, "rescan", counting_rescan)
        for index in range(20):
            cache.put(B, index, payload(B, index))
        assert scans == 1
        assert not cache.contains(B, 0)
        assert cache.get(A, 1) == payload(A, 1)
        assert cache.statistics().write_errors == 0


def test_pins_and_puts_from_many_threads_keep_the_bound(tmp_path: Path) -> None:
    limit = 16 * FILE
    with (
        DiskBlockCache(tmp_path / "c", BLOCK, limit) as first,
        DiskBlockCache(tmp_path / "c", BLOCK, limit) as second,
    ):
        first.pin([(A, 4 * BLOCK)])
        for index in range(4):
            first.put(A, index, payload(A, index))
            assert second.get(A, index) == payload(A, index)

        def write(cache: DiskBlockCache, name: str) -> None:
            for index in range(60):
                obj = ObjectId(name, "e")
                cache.put(obj, index, payload(obj, index))

        threads = [
            threading.Thread(target=write, args=(cache, f"{id(cache)}-{n}"))
            for cache in (first, second)
            for n in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(first.get(A, i) == payload(A, i) for i in range(4))
        assert first.statistics().bytes == tree_bytes(first.root) <= limit
