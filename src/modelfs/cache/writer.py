"""Writes fetched blocks to the data cache in the background.

A GET stream hands each block over and goes straight back to the socket, so the network and the
disk work at the same time instead of taking turns. A small fixed pool of writer threads drains
a FIFO queue (`WRITER_THREADS`: more only contend on the filesystem journal and write less, not
more). The queue holds at most `backlog` blocks: when the disk is slower than the network,
`submit` waits, so GET streams slow to the disk's pace instead of filling RAM (with an unbounded
queue, a cold read on a slow disk held the whole memory budget and pushed the process's RSS
well past it). Every queued block also holds memory from the `MemoryBudget`, released by
`done` once the block is on disk (or failed to get there, which the cache logs: it is an
optimisation, never a failure).

Why 4 threads and 64 blocks (2 and 32 before): each O_DIRECT write waits for the disk, and
with the CPU busy with the GETs and FUSE, a writer thread is also slow to be scheduled again.
With 2 writers and 32 blocks the queue was full much of a cold read, its GET streams spent a
large share of their time blocked in `submit`, and the server's sockets sat full meanwhile;
with 4 and 64 that wait all but vanished and cold reads got faster (see docs/performance.md).

Invariants: `done` runs exactly once per submitted block, whatever `put` did; `close` returns
only after every block queued before it was handled. No locks of its own: the bounded
`queue.Queue` is the only shared state.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from modelfs.cache.protocol import DataCache
from modelfs.objects import ObjectId

log = logging.getLogger(__name__)

WRITER_THREADS = 4
BACKLOG_BLOCKS = 64  # 64 MiB of 1 MiB blocks: smooths bursts, bounds RAM on a slow disk

_Job = tuple[ObjectId, int, bytes, bool, Callable[[], None]]


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

    def submit(
        self,
        obj: ObjectId,
        index: int,
        data: bytes,
        done: Callable[[], None],
        *,
        page_cache: bool = False,
    ) -> None:
        """Queue a block, waiting while the backlog is full; `done` runs in a writer thread
        once it is handled. `page_cache`: see `DataCache.put`."""
        self._jobs.put((obj, index, data, page_cache, done))

    def close(self) -> None:
        """Finish the queued writes, then stop the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            obj, index, data, page_cache, done = job
            try:
                self._cache.put(obj, index, data, page_cache=page_cache)
            except Exception:
                log.exception("cache write of %s block %d failed", obj.key, index)
            finally:
                done()
