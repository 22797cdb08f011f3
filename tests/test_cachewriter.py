"""CacheWriter: the bounded queue between GET streams and the disk (pure logic, no mount)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from fakes.memcache import MemoryDataCache
from modelfs.cache.writer import CacheWriter
from modelfs.objects import ObjectId

OBJ = ObjectId("model.bin", "etag-1")
BLOCK = 16


class GatedCache(MemoryDataCache):
    """A cache whose writes wait until the test opens the gate."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__(BLOCK, 1 << 20)
        self.gate = threading.Event()
        self.fail = fail

    def put(self, obj: ObjectId, index: int, data: bytes, *, page_cache: bool = False) -> None:
        self.gate.wait()
        if self.fail:
            raise OSError(28, "No space left on device")
        super().put(obj, index, data, page_cache=page_cache)


def _submitter(writer: CacheWriter, first: int, count: int, done: list[int]) -> threading.Thread:
    def reporter(index: int) -> Callable[[], None]:
        return lambda: done.append(index)

    def run() -> None:
        for index in range(first, first + count):
            writer.submit(OBJ, index, bytes([index]) * BLOCK, reporter(index))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_submit_waits_while_the_backlog_is_full_then_every_block_lands() -> None:
    cache = GatedCache()
    writer = CacheWriter(cache, threads=2, backlog=3)
    done: list[int] = []
    # 2 blocks held by the (blocked) writer threads + 3 queued = 5 accepted; the 6th waits.
    submitter = _submitter(writer, 0, 6, done)
    submitter.join(0.3)
    assert submitter.is_alive(), "submit returned although the backlog was full"
    cache.gate.set()
    submitter.join(10)
    assert not submitter.is_alive()
    writer.close()  # finishes what is queued
    assert sorted(done) == list(range(6))
    for index in range(6):
        assert cache.get(OBJ, index) == bytes([index]) * BLOCK


def test_a_failed_write_is_logged_and_still_reported_done(caplog: pytest.LogCaptureFixture) -> None:
    cache = GatedCache(fail=True)
    cache.gate.set()
    writer = CacheWriter(cache, threads=1, backlog=1)
    done: list[int] = []
    _submitter(writer, 0, 2, done).join(10)
    writer.close()
    assert sorted(done) == [0, 1]  # the budget they hold is released either way
    assert not cache.contains(OBJ, 0)
    assert "cache write of model.bin block 0 failed" in caplog.text
