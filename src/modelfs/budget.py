"""A hard byte budget for data held in RAM on its way between the store and the disk.

Worker threads that stream a GET acquire one block's worth before pulling the next chunk off the
socket; the fetcher releases it when it lets go of the block (on disk, and read or evicted).
Write-back uploads take a part's worth (`acquire_async`, from the trio thread) before reading
the part from its staging file, and give it back once the part is sent. So the RAM used by data
in flight never exceeds `limit`, however many readers, prefetch parts or uploads run. The budget
is a threading primitive (not trio) because most acquirers are worker threads.
`on_pressure`, if set, is called (from the waiting thread, or the trio thread for
`acquire_async`) each time an acquire has to wait, so the holder of evictable blocks can let
some go: a waiting upload, like a waiting GET stream, costs a reader the blocks kept for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import trio

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
