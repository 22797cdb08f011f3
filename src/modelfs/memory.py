"""Memory: the byte budget for data in flight, and the one malloc policy of the process.

The budget. A hard limit on data held in RAM on its way between the store and the disk.

Worker threads that stream a GET acquire one block's worth before pulling the next chunk off the
socket; the fetcher releases it when it lets go of the block (on disk, and read or evicted).
Write-back uploads take a part's worth (`acquire_async`, from the trio thread) before reading
the part from its staging file, and give it back once the part is sent. So the RAM used by data
in flight never exceeds `limit`, however many readers, prefetch parts or uploads run. The budget
is a threading primitive (not trio) because most acquirers are worker threads.
`on_pressure`, if set, is called (from the waiting thread, or the trio thread for
`acquire_async`) each time an acquire has to wait, so the holder of evictable blocks can let
some go: a waiting upload, like a waiting GET stream, costs a reader the blocks kept for it.

The malloc policy (`tune_malloc`, glibc only; other C libraries have no `mallopt`). Every
fetched block is a new block-sized `bytes` object. By default glibc serves such sizes with their
own mmap and unmaps them when freed, so every block lands in fresh pages and the kernel's copy of
socket data into them pays a page fault per 4 KiB (an strace of a cold read showed one fault per
page read; on a VM that hands freed memory back to its host each fault costs more). So:
- the mmap threshold is set above any block size, which keeps block allocations in the heap
  and also turns off glibc's dynamic threshold;
- the trim threshold is the memory budget, so up to that much freed heap is kept for the next
  blocks instead of being handed back and faulted in again;
- at most two arenas: with one arena per thread, the GET and writer threads would each keep a
  heap of freed blocks, and RSS would grow far beyond the budget.
Peak memory stays bounded: data in flight is bounded by the budget, freed heap kept by the trim
threshold. This is the only place in modelfs that calls `mallopt`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)

_ASYNC_POLL = 0.05  # seconds between tries of `acquire_async`: uploads are not latency-bound


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    limit: int
    in_use: int
    peak: int
    waits: int


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("memory budget must be positive")
        self.limit = limit
        self._in_use = 0
        self._peak = 0
        self._waits = 0
        self._cond = threading.Condition()
        self.on_pressure: Callable[[], None] | None = None

    def acquire(self, size: int, cancelled: threading.Event | None = None) -> bool:
        """Block until `size` bytes fit; False if `cancelled` was set while waiting."""
        size = min(size, self.limit)  # one oversized request may use the whole budget, alone
        with self._cond:
            if self._in_use + size > self.limit:
                self._waits += 1
            while self._in_use + size > self.limit:
                if cancelled is not None and cancelled.is_set():
                    return False
                if self.on_pressure is not None:
                    self.on_pressure()
                self._cond.wait(timeout=0.1)
            self._take_locked(size)
            return True

    def try_acquire(self, size: int) -> bool:
        """Take `size` bytes if they fit now (never waits)."""
        size = min(size, self.limit)
        with self._cond:
            if self._in_use + size > self.limit:
                return False
            self._take_locked(size)
            return True

    async def acquire_async(self, size: int) -> None:
        """For the trio thread: wait (cancellably, polling) until `size` bytes fit, and take
        them. Each failed try asks the holder of evictable blocks (`on_pressure`) for room."""
        if self.try_acquire(size):
            return
        with self._cond:
            self._waits += 1
        while True:
            if self.on_pressure is not None:
                self.on_pressure()
            await trio.sleep(_ASYNC_POLL)
            if self.try_acquire(size):
                return

    def _take_locked(self, size: int) -> None:
        self._in_use += size
        self._peak = max(self._peak, self._in_use)

    def release(self, size: int) -> None:
        size = min(size, self.limit)
        with self._cond:
            self._in_use -= size
            assert self._in_use >= 0, "released more than acquired"
            self._cond.notify_all()

    def statistics(self) -> BudgetStatistics:
        with self._cond:
            return BudgetStatistics(self.limit, self._in_use, self._peak, self._waits)


# <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 8 << 20  # above any block size modelfs uses (1-4 MiB)
ARENA_MAX = 2
_TRIM_THRESHOLD_MAX = 1 << 30  # mallopt takes an int


@dataclass(frozen=True, slots=True)
class MallocSettings:
    """What `tune_malloc` asks glibc for (see the module docstring)."""

    mmap_threshold: int
    trim_threshold: int
    arena_max: int


def malloc_settings(retain: int) -> MallocSettings:
    return MallocSettings(MMAP_THRESHOLD, min(retain, _TRIM_THRESHOLD_MAX), ARENA_MAX)


def tune_malloc(retain: int) -> bool:
    """Apply the malloc policy, keeping up to `retain` bytes of freed heap (the memory budget).
    True if the C library took every setting."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = malloc_settings(retain)
    taken = [
        int(mallopt(_M_MMAP_THRESHOLD, settings.mmap_threshold)) == 1,
        int(mallopt(_M_TRIM_THRESHOLD, settings.trim_threshold)) == 1,
        int(mallopt(_M_ARENA_MAX, settings.arena_max)) == 1,
    ]
    if not all(taken):
        log.debug("mallopt refused some of %s", settings)
    return all(taken)
