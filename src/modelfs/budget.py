"""A hard byte budget for data held in RAM while it travels from the store to the cache.

Worker threads that stream a GET acquire one block's worth before pulling the next chunk off the
socket; the fetcher releases it when it lets go of the block (on disk, and read or evicted). So
the RAM used by fetched data never exceeds `limit`, however many readers or prefetch parts run.
The budget is a threading primitive (not trio) because the acquirers are worker threads.
`on_pressure`, if set, is called (from the waiting thread) each time an acquire has to wait, so
the holder of evictable blocks can let some go.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


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
            self._in_use += size
            self._peak = max(self._peak, self._in_use)
            return True

    def release(self, size: int) -> None:
        size = min(size, self.limit)
        with self._cond:
            self._in_use -= size
            assert self._in_use >= 0, "released more than acquired"
            self._cond.notify_all()

    def statistics(self) -> BudgetStatistics:
        with self._cond:
            return BudgetStatistics(self.limit, self._in_use, self._peak, self._waits)
