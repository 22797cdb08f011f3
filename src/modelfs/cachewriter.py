"""Writes fetched blocks to the data cache in the background.

A GET stream hands each block over and goes straight back to the socket, so the network and the
disk work at the same time instead of taking turns. A small fixed pool of writer threads (4:
more only contend on the filesystem journal, measured 16 writers at about half the throughput
of 4 here) drains a FIFO queue. The queue holds at most `backlog` blocks: when the disk is
slower than the network, `submit` waits, so GET streams slow to the disk's pace instead of
filling RAM (measured: with an unbounded queue, a 4 GiB cold read on this machine's slow disk
held the whole 256 MiB budget and peaked at ~410 MiB RSS). Every queued block also holds
memory from the `MemoryBudget`, released by `done` once the block is on disk (or failed to get
there, which the cache logs: it is an optimisation, never a failure).

Why 4 threads and 64 blocks (2 and 32 before): each O_DIRECT write waits for the disk, and
with the CPU busy with the GETs and FUSE, a writer thread is also slow to be scheduled again.
With 2 writers the GET streams of a cold 1 GiB read spent 9-30 thread-seconds in total
blocked in `submit` (16 streams, ~3 s of wall time; timed inside `_stream_run`), and the
server's sockets sat full meanwhile; with 4 and 64, 0.02-0.13 s. Cold `dd` of 1 GiB in one
interleaved A/B run (`cold_variants.py`, 4 rounds): 332-405 MB/s before, 412-435 after.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from .datacache import DataCache
from .values import ObjectId

log = logging.getLogger(__name__)

WRITER_THREADS = 4
BACKLOG_BLOCKS = 64  # 64 MiB of 1 MiB blocks: smooths bursts, bounds RAM on a slow disk

_Job = tuple[ObjectId, int, bytes, Callable[[], None]]


class CacheWriter:
    def __init__(
        self, cache: DataCache, threads: int = WRITER_THREADS, backlog: int = BACKLOG_BLOCKS
    ) -> None:
        self._cache = cache
        self._jobs: queue.Queue[_Job | None] = queue.Queue(backlog)
        self._threads = [
            threading.Thread(target=self._work, name=f"modelfs-cache-writer-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, obj: ObjectId, index: int, data: bytes, done: Callable[[], None]) -> None:
        """Queue a block, waiting while the backlog is full; `done` runs in a writer thread
        once it is handled."""
        self._jobs.put((obj, index, data, done))

    def close(self) -> None:
        """Finish the queued writes, then stop the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            obj, index, data, done = job
            try:
                self._cache.put(obj, index, data)
            except Exception:
                log.exception("cache write of %s block %d failed", obj.key, index)
            finally:
                done()
