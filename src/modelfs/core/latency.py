"""How long the filesystem takes to answer reads: a histogram with fixed buckets.

The core times each `read` (from the FUSE request reaching it to the bytes it returns) into a
`LatencyHistogram`; `statistics()` is a `LatencyStatistics`, which `/metrics` serves as a
Prometheus histogram and `modelfs status --watch` turns into quantiles of the last second
(`since`, `quantile`). Buckets are upper bounds in seconds, as Prometheus's `le`: a read from
the page cache never reaches us, one from RAM or the block cache takes 0.1-1 ms, a miss costs
a GET (10 ms to seconds). Trio thread only.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

READ_LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LatencyStatistics:
    bounds: tuple[float, ...]  # upper bounds of the buckets (seconds); a last one is +Inf
    counts: tuple[int, ...]  # observations per bucket, not cumulative (len(bounds) + 1)
    total: float  # seconds, summed over all observations
    count: int

    def since(self, earlier: LatencyStatistics) -> LatencyStatistics:
        """The observations made after `earlier` was taken (of the same histogram)."""
        counts = tuple(now - then for now, then in zip(self.counts, earlier.counts, strict=True))
        return LatencyStatistics(
            self.bounds, counts, self.total - earlier.total, self.count - earlier.count
        )

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (inf: beyond the last bound);
        None without observations."""
        if self.count <= 0:
            return None
        rank = q * self.count
        seen = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            seen += count
            if seen >= rank and count:
                return bound
        return math.inf


class LatencyHistogram:
    def __init__(self, bounds: tuple[float, ...] = READ_LATENCY_BOUNDS) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self._total += seconds

    def statistics(self) -> LatencyStatistics:
        return LatencyStatistics(self.bounds, tuple(self._counts), self._total, sum(self._counts))
