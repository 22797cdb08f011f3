"""DiskBlockCache on real files: round trip, restart, LRU bound, corruption, write failures.

Write failures use what really fails for root: a file where a directory should be (ENOTDIR), a
read-only bind mount (EROFS) and a full tiny tmpfs (ENOSPC). The mounts need root.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from modelfs.cache import blockfile
from modelfs.cache.disk import HEADER_SIZE, DiskBlockCache
from modelfs.cache.protocol import DataCache
from modelfs.errors import ConfigError, MountError
from modelfs.host import locks
from modelfs.objects import ObjectId
from support.marks import page_cache
from support.pagecache import resident_pages

BLOCK = 4096  # small blocks keep the tests fast; nothing depends on the size
FILE = HEADER_SIZE + BLOCK
A = ObjectId("models/a.safetensors", '"etag-a"')
B = ObjectId("models/b.pt", '"etag-b"')


class FakeClock:
    """Strictly increasing time: every reading is one second after the previous."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def payload(obj: ObjectId, index: int, size: int = BLOCK) -> bytes:
    seed = f"{obj.key}|{obj.etag}|{index}|".encode()
    return (seed * (size // len(seed) + 1))[:size]


def block_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.blk"))


BOOKKEEPING = {"lock", "ledger", "pins.json"}  # the root's own files, not blocks


def tree_bytes(root: Path) -> int:
    """Bytes of every file under the block tree (block and temp files alike)."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name not in BOOKKEEPING:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # unlinked while we walked
                    pass
    return total


def only_file(cache: DiskBlockCache) -> Path:
    (path,) = block_files(cache.root)
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(tmp_path: Path, clock: FakeClock) -> Iterator[DiskBlockCache]:
    with DiskBlockCache(tmp_path / "c", BLOCK, 16 * FILE, clock=clock) as c:
        yield c


def reopen(cache: DiskBlockCache, clock: FakeClock, **kwargs: int) -> DiskBlockCache:
    cache.close()
    max_bytes = kwargs.get("max_bytes", cache.max_bytes)
    return DiskBlockCache(cache.root, cache.block_size, max_bytes, clock=clock)


# -- basics ------------------------------------------------------------------------------------


def test_round_trip_and_statistics(cache: DiskBlockCache) -> None:
    as_protocol: DataCache = cache  # mypy checks the protocol
    assert as_protocol.get(A, 0) is None
    as_protocol.put(A, 0, payload(A, 0))
    cache.put(A, 1, b"short last block")
    assert cache.contains(A, 0)
    assert not cache.contains(A, 2)
    assert cache.get(A, 0) == payload(A, 0)
    assert cache.get(A, 1) == b"short last block"
    stats = cache.statistics()
    assert (stats.blocks, stats.hits, stats.misses) == (2, 2, 1)
    assert stats.bytes == FILE + HEADER_SIZE + len(b"short last block") == tree_bytes(cache.root)
    assert (stats.evictions, stats.corrupt, stats.write_errors) == (0, 0, 0)


def test_empty_block_round_trips(cache: DiskBlockCache) -> None:
    cache.put(A, 7, b"")
    assert cache.get(A, 7) == b""


def test_etags_of_one_key_are_distinct_blocks(cache: DiskBlockCache) -> None:
    new_a = ObjectId(A.key, '"etag-a2"')
    cache.put(A, 0, payload(A, 0))
    assert not cache.contains(new_a, 0)
    assert cache.get(new_a, 0) is None
    cache.put(new_a, 0, payload(new_a, 0))
    assert cache.get(A, 0) == payload(A, 0)
    assert cache.get(new_a, 0) == payload(new_a, 0)


def test_long_and_odd_keys(cache: DiskBlockCache) -> None:
    odd = ObjectId("dir/" * 300 + "naïve \n\udcff ✓.bin", '"x"')
    cache.put(odd, 3, b"odd")
    assert cache.get(odd, 3) == b"odd"


def test_survives_restart(cache: DiskBlockCache, clock: FakeClock) -> None:
    for index in range(3):
        cache.put(A, index, payload(A, index))
    cache.put(B, 0, b"tail")
    restarted = reopen(cache, clock)
    assert restarted.statistics().blocks == 4
    assert restarted.statistics().bytes == 3 * FILE + HEADER_SIZE + 4
    assert [restarted.get(A, i) for i in range(3)] == [payload(A, i) for i in range(3)]
    assert restarted.get(B, 0) == b"tail"
    restarted.close()


def test_a_root_held_alone_by_another_process_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older modelfs holds the root exclusively for its whole life: not shared, refused."""
    root = tmp_path / "c"
    root.mkdir()
    fd = locks.hold_lock(root, "block cache")
    monkeypatch.setattr(locks, "JOIN_WAIT", 0.2)
    try:
        with pytest.raises(MountError, match="in use"):
            DiskBlockCache(root, BLOCK, FILE)
    finally:
        os.close(fd)
    DiskBlockCache(root, BLOCK, FILE).close()


def test_root_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ConfigError):
        DiskBlockCache(tmp_path / "f", BLOCK, FILE)
    with pytest.raises(ConfigError):
        DiskBlockCache(tmp_path / "f" / "sub", BLOCK, FILE)


def test_other_block_size_tree_is_dropped(cache: DiskBlockCache, clock: FakeClock) -> None:
    cache.put(A, 0, payload(A, 0))
    cache.close()
    with DiskBlockCache(cache.root, 2 * BLOCK, 16 * FILE, clock=clock) as bigger:
        assert bigger.get(A, 0) is None
        assert block_files(cache.root) == []


# -- LRU and the size bound ------------------------------------------------------------------


def test_evicts_least_recently_used(tmp_path: Path, clock: FakeClock) -> None:
    with DiskBlockCache(tmp_path, BLOCK, 3 * FILE, clock=clock) as cache:
        for index in range(3):
            cache.put(A, index, payload(A, index))
        assert cache.get(A, 0) is not None  # 1 is now the least recently used ...
        cache.put(A, 1, payload(A, 1))  # ... but re-putting a cached block is a use too
        cache.put(A, 3, payload(A, 3))
        assert [cache.contains(A, i) for i in range(4)] == [True, True, False, True]
        assert not any(p.name.endswith("-2.blk") for p in block_files(tmp_path))
        stats = cache.statistics()
        assert (stats.blocks, stats.bytes, stats.evictions) == (3, 3 * FILE, 1)
        assert tree_bytes(tmp_path) == 3 * FILE


def test_block_larger_than_the_cache_is_not_stored(tmp_path: Path) -> None:
    with DiskBlockCache(tmp_path, BLOCK, FILE - 1) as cache:
        cache.put(A, 0, payload(A, 0))
        assert not cache.contains(A, 0)
        assert cache.statistics().write_errors == 0
        assert tree_bytes(tmp_path) == 0


def test_concurrent_writers_stay_within_one_block_each(tmp_path: Path) -> None:
    writers, puts_each, limit = 4, 150, 10 * FILE
    cache = DiskBlockCache(tmp_path, BLOCK, limit)
    done = threading.Event()
    peak = 0

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_bytes(tmp_path))

    def write(writer: int) -> None:
        obj = ObjectId(f"w{writer}", "e")
        for index in range(puts_each):
            cache.put(obj, index, payload(obj, index))

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    stats = cache.statistics()
    # The bound is one block per writer. The sampler's walk is not atomic, though: it can count
    # a victim before its unlink and, in a later directory, a block written after it, so under
    # CPU contention it may see up to one more block per writer than ever existed at once.
    assert peak <= limit + 2 * writers * FILE
    assert stats.bytes <= limit
    assert stats.bytes == tree_bytes(tmp_path) == len(block_files(tmp_path)) * FILE
    assert stats.blocks == len(block_files(tmp_path))
    assert stats.evictions == writers * puts_each - stats.blocks
    assert stats.write_errors == 0
    cache.close()


def test_lowered_limit_evicts_at_startup(cache: DiskBlockCache, clock: FakeClock) -> None:
    for index in range(6):
        cache.put(A, index, payload(A, index))
    restarted = reopen(cache, clock, max_bytes=2 * FILE)
    assert [restarted.contains(A, i) for i in range(6)] == [False] * 4 + [True] * 2
    assert restarted.statistics().evictions == 4
    assert tree_bytes(cache.root) == 2 * FILE
    restarted.close()


def test_restart_keeps_recency_from_hits(tmp_path: Path, clock: FakeClock) -> None:
    cache = DiskBlockCache(tmp_path, BLOCK, 16 * FILE, clock=clock, touch_interval=0)
    for index in range(3):
        cache.put(A, index, payload(A, index))
    assert cache.get(A, 0) is not None  # on disk too: 1 is now the oldest
    cache.close()
    with DiskBlockCache(tmp_path, BLOCK, 2 * FILE, clock=clock) as restarted:
        assert [restarted.contains(A, i) for i in range(3)] == [True, False, True]


def test_hits_touch_the_file_at_most_once_per_interval(tmp_path: Path, clock: FakeClock) -> None:
    with DiskBlockCache(tmp_path, BLOCK, 16 * FILE, clock=clock, touch_interval=100) as cache:
        cache.put(A, 0, payload(A, 0))
        path = only_file(cache)
        written = path.stat().st_mtime
        cache.get(A, 0)
        assert path.stat().st_mtime == written  # one second later: not yet
        clock.now += 100
        cache.get(A, 0)
        touched = path.stat().st_mtime
        assert touched > written + 100
        cache.get(A, 0)
        assert path.stat().st_mtime == touched


def test_evict_object_drops_every_version(cache: DiskBlockCache) -> None:
    new_a = ObjectId(A.key, '"etag-a2"')
    for obj in (A, new_a, B):
        for index in range(2):
            cache.put(obj, index, payload(obj, index))
    assert cache.evict_object(A.key) == 4
    assert not any(cache.contains(obj, i) for obj in (A, new_a) for i in range(2))
    assert cache.get(B, 1) == payload(B, 1)
    assert len(block_files(cache.root)) == 2
    stats = cache.statistics()
    assert (stats.blocks, stats.bytes, stats.evictions) == (2, 2 * FILE, 0)
    assert cache.evict_object("never/cached") == 0


def test_clear(cache: DiskBlockCache) -> None:
    cache.put(A, 0, payload(A, 0))
    cache.put(B, 0, payload(B, 0))
    cache.clear()
    assert not cache.contains(A, 0)
    assert cache.statistics().bytes == 0
    assert block_files(cache.root) == []
    cache.put(A, 0, payload(A, 0))
    assert cache.get(A, 0) == payload(A, 0)


# -- verification -----------------------------------------------------------------------------


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def assert_dropped_as_corrupt(cache: DiskBlockCache, path: Path, obj: ObjectId = A) -> None:
    before = cache.statistics()
    assert cache.get(obj, 0) is None
    after = cache.statistics()
    assert after.corrupt == before.corrupt + 1
    assert after.misses == before.misses + 1
    assert not path.exists()
    assert not cache.contains(obj, 0)
    assert after.bytes == before.bytes - FILE


@pytest.mark.parametrize(
    "offset",
    [
        pytest.param(0, id="magic"),
        pytest.param(4, id="format"),
        pytest.param(6, id="header-size"),
        pytest.param(8, id="key-hash"),
        pytest.param(24, id="etag-hash"),
        pytest.param(40, id="index"),
        pytest.param(48, id="length"),
        pytest.param(56, id="checksum"),
        pytest.param(HEADER_SIZE, id="payload-first"),
        pytest.param(HEADER_SIZE + BLOCK // 2, id="payload-middle"),
        pytest.param(FILE - 1, id="payload-last"),
    ],
)
def test_bit_flip_is_a_counted_miss(cache: DiskBlockCache, offset: int) -> None:
    cache.put(A, 0, payload(A, 0))
    path = only_file(cache)
    flip_byte(path, offset)
    assert_dropped_as_corrupt(cache, path)


@pytest.mark.parametrize("keep", [0, 10, HEADER_SIZE, HEADER_SIZE + 1, FILE - 1])
def test_truncated_file_is_a_counted_miss(cache: DiskBlockCache, keep: int) -> None:
    cache.put(A, 0, payload(A, 0))
    path = only_file(cache)
    os.truncate(path, keep)
    assert_dropped_as_corrupt(cache, path)


def test_file_grown_behind_our_back_is_a_counted_miss_after_restart(
    cache: DiskBlockCache, clock: FakeClock
) -> None:
    cache.put(A, 0, payload(A, 0))
    path = only_file(cache)
    with path.open("ab") as f:
        f.write(b"junk")
    assert cache.get(A, 0) == payload(A, 0)  # the verified bytes; the tail is never read
    restarted = reopen(cache, clock)  # now the file size disagrees with the header
    before = restarted.statistics()
    assert restarted.get(A, 0) is None
    assert restarted.statistics().corrupt == before.corrupt + 1
    assert not path.exists()
    restarted.close()


@pytest.mark.parametrize(
    ("other", "index"),
    [(B, 0), (ObjectId(A.key, '"other-etag"'), 0), (A, 1)],
    ids=["other-key", "other-etag", "other-index"],
)
def test_other_block_moved_into_place_is_a_counted_miss(
    cache: DiskBlockCache, other: ObjectId, index: int
) -> None:
    cache.put(A, 0, payload(A, 0))
    path = only_file(cache)
    cache.put(other, index, payload(A, 0))  # same payload: only the header can tell
    (other_path,) = set(block_files(cache.root)) - {path}
    os.replace(other_path, path)
    assert_dropped_as_corrupt(cache, path)


def test_corruption_found_after_restart(cache: DiskBlockCache, clock: FakeClock) -> None:
    cache.put(A, 0, payload(A, 0))
    path = only_file(cache)
    flip_byte(path, HEADER_SIZE + 5)
    restarted = reopen(cache, clock)
    assert_dropped_as_corrupt(restarted, path)
    restarted.close()


def test_unreadable_block_is_a_counted_miss(cache: DiskBlockCache) -> None:
    cache.put(A, 0, payload(A, 0))
    path = only_file(cache)
    path.unlink()
    path.mkdir()  # open() of it reads EISDIR, which even root cannot get around
    before = cache.statistics()
    assert cache.get(A, 0) is None
    assert cache.statistics().corrupt == before.corrupt + 1
    assert not cache.contains(A, 0)


def test_vanished_file_is_a_plain_miss(cache: DiskBlockCache, clock: FakeClock) -> None:
    """A file that vanished was usually evicted by another process (which took it off the
    ledger); one deleted behind every process's back is off the ledger at the next start."""
    cache.put(A, 0, payload(A, 0))
    only_file(cache).unlink()
    assert cache.get(A, 0) is None
    stats = cache.statistics()
    assert (stats.corrupt, stats.misses) == (0, 1)
    assert not cache.contains(A, 0)
    restarted = reopen(cache, clock)
    assert (restarted.statistics().blocks, restarted.statistics().bytes) == (0, 0)
    restarted.put(A, 0, payload(A, 0))
    assert restarted.get(A, 0) == payload(A, 0)
    assert restarted.statistics().bytes == FILE == tree_bytes(cache.root)
    restarted.close()


# -- startup -----------------------------------------------------------------------------------


def test_startup_removes_temp_and_unknown_files(cache: DiskBlockCache, clock: FakeClock) -> None:
    cache.put(A, 0, payload(A, 0))
    fanout = only_file(cache).parent
    (fanout / ".tmp-0123456789abcdef").write_bytes(b"x" * 100)
    (fanout / "garbage").write_bytes(b"y")
    (fanout / ("0" * 32 + "-" + "1" * 32 + "-0.blk")).write_bytes(b"too short for a header")
    restarted = reopen(cache, clock)
    assert sorted(p.name for p in fanout.iterdir()) == [only_file(restarted).name]
    assert restarted.get(A, 0) == payload(A, 0)
    assert restarted.statistics().bytes == FILE
    restarted.close()


def test_startup_removes_a_block_another_user_planted(
    cache: DiskBlockCache, clock: FakeClock
) -> None:
    """xxh3 is not a MAC: a block with a valid header and checksum, owned by another user, was
    planted while the directory was open to others. It is never served."""
    cache.put(A, 0, payload(A, 0))
    os.chown(only_file(cache), 65534, 65534)
    restarted = reopen(cache, clock)
    assert restarted.get(A, 0) is None
    assert block_files(restarted.root) == []
    assert restarted.statistics().corrupt == 1
    restarted.close()


def test_startup_scan_of_10k_blocks_is_fast(cache: DiskBlockCache, clock: FakeClock) -> None:
    cache.put(A, 0, b"x")
    template = only_file(cache)
    tree = template.parent.parent
    for index in range(1, 10_000):  # hard links: the scan stats names, it does not read them
        key_hash = hashlib.md5(str(index).encode()).hexdigest()
        os.link(template, tree / key_hash[:2] / f"{key_hash}-{'0' * 32}-{index}.blk")
    cache.close()
    # CPU time, not wall time: what the scan costs, whatever else the machine is running.
    started = time.process_time()
    with DiskBlockCache(cache.root, BLOCK, 1 << 30, clock=clock) as restarted:
        spent = time.process_time() - started
        assert restarted.statistics().blocks == 10_000
    print(f"startup scan of 10,000 blocks: {spent:.2f} CPU-s")
    assert spent < 1.0


# -- write failures ----------------------------------------------------------------------------


def test_put_into_a_file_where_a_dir_should_be(cache: DiskBlockCache) -> None:
    cache.put(B, 0, payload(B, 0))
    b_file = only_file(cache)
    cache.put(A, 0, payload(A, 0))
    (a_file,) = set(block_files(cache.root)) - {b_file}
    assert a_file.parent != b_file.parent  # true for these two keys' hashes
    cache.evict_object(A.key)
    a_file.parent.rmdir()
    a_file.parent.write_bytes(b"")  # ENOTDIR for every block of A, even for root
    cache.put(A, 0, payload(A, 0))
    cache.put(A, 1, payload(A, 1))
    stats = cache.statistics()
    assert stats.write_errors == 2
    assert not cache.contains(A, 0)
    assert cache.get(B, 0) == payload(B, 0)
    assert stats.bytes == FILE


def test_write_error_logs_warn_once_per_interval(
    cache: DiskBlockCache, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache.put(A, 0, payload(A, 0))
    fanout = only_file(cache).parent
    cache.clear()
    fanout.rmdir()
    fanout.write_bytes(b"")
    with caplog.at_level(logging.DEBUG, logger="modelfs.cache.disk"):
        for index in range(5):
            cache.put(A, index, payload(A, index))
        clock.now += 3600
        cache.put(A, 9, payload(A, 9))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert cache.statistics().write_errors == 6


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to `umount -l` at teardown, whatever the test did."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs / read-only bind mount needs root")
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_cache_serves_reads_and_counts_write_errors(
    tmp_path: Path, clock: FakeClock, mounts: list[Path]
) -> None:
    root = tmp_path / "c"
    with DiskBlockCache(root, BLOCK, 16 * FILE, clock=clock) as cache:
        cache.put(A, 0, payload(A, 0))
    run("mount", "--bind", str(root), str(root))
    mounts.append(root)
    run("mount", "-o", "remount,bind,ro", str(root))
    with DiskBlockCache(root, BLOCK, 16 * FILE, clock=clock) as cache:
        assert cache.get(A, 0) == payload(A, 0)
        cache.put(B, 0, payload(B, 0))  # EROFS
        assert cache.statistics().write_errors == 1
        assert not cache.contains(B, 0)
        assert cache.get(A, 0) == payload(A, 0)


def test_full_disk_counts_write_errors_and_leaves_no_temp_files(
    tmp_path: Path, clock: FakeClock, mounts: list[Path]
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk))
    mounts.append(disk)
    big = 64 * 1024
    with DiskBlockCache(disk / "c", big, 1 << 30, clock=clock) as cache:
        for index in range(8):  # 8 x 64 KiB cannot fit in 256 KiB
            cache.put(A, index, payload(A, index, big))
        stats = cache.statistics()
        assert stats.write_errors > 0
        assert 0 < stats.blocks < 8
        assert not list(disk.rglob(".tmp-*"))
        stored = [i for i in range(8) if cache.contains(A, i)]
        assert [cache.get(A, i) for i in stored] == [payload(A, i, big) for i in stored]


# -- randomized model test ---------------------------------------------------------------------

OBJECTS = [A, B, ObjectId(A.key, '"etag-a2"')]


class CacheModel(RuleBasedStateMachine):
    """DiskBlockCache against an in-memory LRU of the same byte accounting, across restarts."""

    @initialize()
    def open_cache(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        self.max_bytes = 5 * FILE
        self.model: OrderedDict[tuple[ObjectId, int], bytes] = OrderedDict()
        self.cache = self.open()

    def open(self) -> DiskBlockCache:
        return DiskBlockCache(
            Path(self.dir.name), BLOCK, self.max_bytes, clock=self.clock, touch_interval=0
        )

    def model_bytes(self) -> int:
        return sum(HEADER_SIZE + len(data) for data in self.model.values())

    @rule(obj=st.sampled_from(OBJECTS), index=st.integers(0, 6), size=st.integers(0, BLOCK))
    def put(self, obj: ObjectId, index: int, size: int) -> None:
        data = payload(obj, index, size)
        self.cache.put(obj, index, data)
        if (obj, index) in self.model:
            self.model.move_to_end((obj, index))
            return
        while self.model and self.model_bytes() + HEADER_SIZE + size > self.max_bytes:
            self.model.popitem(last=False)
        self.model[(obj, index)] = data

    @rule(obj=st.sampled_from(OBJECTS), index=st.integers(0, 6))
    def get(self, obj: ObjectId, index: int) -> None:
        expected = self.model.get((obj, index))
        if expected is not None:
            self.model.move_to_end((obj, index))
        assert self.cache.get(obj, index) == expected

    @rule(obj=st.sampled_from(OBJECTS))
    def evict_object(self, obj: ObjectId) -> None:
        self.cache.evict_object(obj.key)
        for name in [name for name in self.model if name[0].key == obj.key]:
            del self.model[name]

    @rule()
    def restart(self) -> None:
        self.cache.close()
        self.cache = self.open()

    @precondition(lambda self: self.max_bytes > FILE)
    @rule()
    def lower_limit_and_restart(self) -> None:
        self.cache.close()
        self.max_bytes -= FILE
        while self.model_bytes() > self.max_bytes:
            self.model.popitem(last=False)
        self.cache = self.open()

    @invariant()
    def same_contents(self) -> None:
        if not hasattr(self, "cache"):
            return
        stats = self.cache.statistics()
        assert stats.blocks == len(self.model)
        assert stats.bytes == self.model_bytes() == tree_bytes(Path(self.dir.name))
        assert stats.bytes <= self.max_bytes
        for obj, index in self.model:
            assert self.cache.contains(obj, index)

    def teardown(self) -> None:
        if hasattr(self, "cache"):
            self.cache.close()
            self.dir.cleanup()


CacheModel.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
test_cache_model = CacheModel.TestCase


def test_get_range_verifies_a_block_once_then_reads_only_the_range(tmp_path: Path) -> None:
    cache = DiskBlockCache(tmp_path / "c", 1 << 16, 1 << 24)
    obj = ObjectId("ranged", "etag-1")
    data = os.urandom(1 << 16)
    cache.put(obj, 0, data)
    assert cache.get_range(obj, 0, 100, 4096) == data[100:4196]  # first read: verified whole
    assert cache.get_range(obj, 0, 5000, 10) == data[5000:5010]  # later: only the range
    # Rewriting the file (any rewrite changes its mtime) makes the next read verify again.
    (path,) = [p for p in (tmp_path / "c").rglob("*.blk")]
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    time.sleep(0.01)
    path.write_bytes(bytes(raw))
    assert cache.get_range(obj, 0, 0, 10) is None
    assert cache.statistics().corrupt == 1
    cache.close()


def test_a_block_this_process_wrote_is_read_without_a_second_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bytes were in hand when it was written; a restart checks it once, like any other."""
    cache = DiskBlockCache(tmp_path / "c", 1 << 16, 1 << 24)
    obj = ObjectId("fresh", "etag-1")
    data = os.urandom(1 << 16)
    cache.put(obj, 0, data)
    checks: list[int] = []
    real_checksum = blockfile.checksum

    def counting_checksum(prefix: bytes, payload: bytes) -> int:
        checks.append(len(payload))
        return real_checksum(prefix, payload)

    monkeypatch.setattr(blockfile, "checksum", counting_checksum)
    assert cache.get_range(obj, 0, 100, 4096) == data[100:4196]
    assert cache.get(obj, 0) == data
    assert checks == []
    cache.close()
    reopened = DiskBlockCache(tmp_path / "c", 1 << 16, 1 << 24)
    assert reopened.get_range(obj, 0, 100, 4096) == data[100:4196]
    assert len(data) in checks  # the restarted process checked the whole payload once
    reopened.close()


# -- O_DIRECT writes ---------------------------------------------------------------------------


def small_ext4(tmp_path: Path, mounts: list[Path], size: str) -> Path:
    """A fresh ext4 filesystem of `size` on a loop device: a disk that takes O_DIRECT."""
    image, disk = tmp_path / "ext4.img", tmp_path / "ext4"
    run("truncate", "-s", size, str(image))
    run("mkfs.ext4", "-q", "-F", str(image))
    disk.mkdir()
    run("mount", "-o", "loop", str(image), str(disk))
    mounts.append(disk)
    return disk


def test_disk_filesystem_gets_o_direct_block_files(
    tmp_path: Path, clock: FakeClock, mounts: list[Path]
) -> None:
    disk = small_ext4(tmp_path, mounts, "16M")
    big = 256 * 1024  # a page multiple, like the real 1 MiB blocks
    with DiskBlockCache(disk / "c", big, 1 << 30, clock=clock) as cache:
        cache.put(A, 0, payload(A, 0, big))
        cache.put(A, 1, payload(A, 1, 12345))  # a short last block: padded, then truncated
        assert cache.direct_writes  # the filesystem took O_DIRECT and kept it
        assert sorted(p.stat().st_size for p in block_files(cache.root)) == [
            HEADER_SIZE + 12345,
            HEADER_SIZE + big,
        ]
        full, short = sorted(block_files(cache.root), key=lambda p: -p.stat().st_size)
        # The full block bypassed the page cache; the short one (under half a block) did not.
        assert resident_pages(full) == 0
        assert resident_pages(short) > 0
        assert cache.get(A, 0) == payload(A, 0, big)
        assert cache.get(A, 1) == payload(A, 1, 12345)
    with DiskBlockCache(disk / "c", big, 1 << 30, clock=clock) as again:  # and across a restart
        assert again.get(A, 1) == payload(A, 1, 12345)
        assert again.statistics().corrupt == 0


@page_cache
def test_a_block_whose_file_keeps_its_page_cache_is_written_through_it(
    tmp_path: Path, clock: FakeClock, mounts: list[Path]
) -> None:
    """`put(page_cache=True)` (memory to spare for the file): buffered even where O_DIRECT
    works, so the next read of the block finds it in memory."""
    disk = small_ext4(tmp_path, mounts, "16M")
    big = 256 * 1024
    with DiskBlockCache(disk / "c", big, 1 << 30, clock=clock) as cache:
        cache.put(A, 0, payload(A, 0, big), page_cache=True)
        cache.put(B, 0, payload(B, 0, big - 4096))
        assert cache.direct_writes
        kept, direct = sorted(block_files(cache.root), key=lambda p: -p.stat().st_size)
        assert resident_pages(kept) > 0
        assert resident_pages(direct) == 0
        assert cache.get(A, 0) == payload(A, 0, big)
        assert cache.get(B, 0) == payload(B, 0, big - 4096)


def test_filesystem_refusing_o_direct_switches_the_cache_to_buffered_writes(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """tmpfs before Linux 6.6 (and some network and FUSE filesystems) fail open(O_DIRECT) with
    EINVAL; this kernel's tmpfs takes it, so the refusal is simulated at os.open."""
    real_open = os.open
    refused: list[str] = []

    def open_without_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", open_without_direct)
    with (
        caplog.at_level(logging.INFO, logger="modelfs.cache.disk"),
        DiskBlockCache(tmp_path / "c", BLOCK, 1 << 20, clock=clock) as cache,
    ):
        for index in range(3):
            cache.put(A, index, payload(A, index))
        assert not cache.direct_writes
        assert len(refused) == 1  # asked once, then buffered for good
        assert [cache.get(A, i) for i in range(3)] == [payload(A, i) for i in range(3)]
        assert cache.statistics().write_errors == 0
        assert not list((tmp_path / "c").rglob(".tmp-*"))
    assert sum("O_DIRECT refused" in r.getMessage() for r in caplog.records) == 1


def test_full_disk_with_o_direct_counts_write_errors_and_leaves_no_temp_files(
    tmp_path: Path, clock: FakeClock, mounts: list[Path]
) -> None:
    disk = small_ext4(tmp_path, mounts, "8M")
    big = 1 << 20
    with DiskBlockCache(disk / "c", big, 1 << 30, clock=clock) as cache:
        for index in range(12):  # 12 MiB cannot fit in an 8 MiB filesystem
            cache.put(A, index, payload(A, index, big))
        stats = cache.statistics()
        assert cache.direct_writes
        assert stats.write_errors > 0
        assert 0 < stats.blocks < 12
        assert not list(disk.rglob(".tmp-*"))
        stored = [i for i in range(12) if cache.contains(A, i)]
        assert [cache.get(A, i) for i in stored] == [payload(A, i, big) for i in stored]


def test_give_back_evicts_the_least_recently_used_blocks_now(tmp_path: Path) -> None:
    """What a full disk asks of the cache for write-back; the size limit stays."""
    block = 64 << 10
    with DiskBlockCache(tmp_path, block, 100 * block) as cache:
        obj = ObjectId("k", '"e"')
        for index in range(5):
            cache.put(obj, index, bytes(block))
        cache.get(obj, 0)  # block 0 becomes the most recently used
        freed = cache.give_back(2 * block)
        assert freed >= 2 * block
        assert [cache.contains(obj, index) for index in range(5)] == [
            True, False, False, True, True,
        ]  # fmt: skip
        assert cache.max_bytes == 100 * block
        assert cache.give_back(0) == 0
