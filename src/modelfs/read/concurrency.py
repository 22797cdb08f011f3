"""How many background GETs run at once: found by probing the throughput they reach.

On loopback or a LAN a few long GETs fill the link, and more only add contention: for the GIL
with the event loop, for the server, and for a reader's own GETs, which then wait behind them
(a random reader of a file being fetched whole waited hundreds of milliseconds per read). On a
WAN with a per-connection limit every GET adds its share until the link is full. One policy
serves both (as aria2's and the CRT's throughput targets do): probe.

`Probe` is the rule, pure (no I/O, no time of its own), tested on its own. Each window:
- no background GET waited for a slot: the slots are not what limits; nothing is learnt, the
  number stays, and a raise still to be judged is judged at the next window with GETs waiting
  (a sequential reader on a WAN link leaves slots idle in some windows: dropping a raise then
  kept it from ever being judged, and the number swung between two values);
- after a raise, throughput rose by GAIN or more: the raise paid, keep it and double again
  (up to `maximum`);
- after a raise, it did not: go back to the last number that paid and hold it for HOLD
  windows, then probe again (the link, the server and the readers change);
- the first window with GETs waiting: remember its throughput and double.
It starts at `minimum`, enough for a WAN link's first second not to crawl.

`AdaptiveLimit` applies it to the fetcher's prefetch `CapacityLimiter` (readahead, whole-object
fetches, small-file bursts); a reader's own GETs have a limiter of their own and are not shaped.
`adapt_background_gets` builds it for a `BlockFetcher`: a mount's read policy and a pull use
the same one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from modelfs.read.fetcher import BlockFetcher

log = logging.getLogger(__name__)

WINDOW = 0.25  # least seconds of throughput per decision: a WAN link's ramp is a few of them
WINDOW_BYTES = 8 << 20  # least bytes per decision: a rate needs several blocks (one GET's part)
WINDOW_MAX = 2.0  # most seconds per decision, on a link too slow for WINDOW_BYTES
GAIN = 0.15  # a raise must add this much throughput to pay for its contention
HOLD = 20  # windows a number that could not be raised is kept before probing again
MINIMUM = 4  # background GETs a probe starts from: a WAN link must not crawl at first


class Probe:
    def __init__(self, minimum: int, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = min(max(1, minimum), self.maximum)
        self._paid = self.limit  # the last number whose throughput was measured and paid
        self._rate: float | None = None  # throughput at `_paid`, if measured
        self._hold = 0

    def window(self, rate: float, waiting: bool) -> int:
        """The number of slots after a window of `rate` bytes/s; `waiting`: a background GET
        waited for a slot during it."""
        if not waiting:  # the slots did not limit: nothing learnt, a raise still to be judged
            return self.limit
        if self._hold > 0:
            self._hold -= 1
            return self.limit
        judging_a_raise = self._rate is not None and self.limit > self._paid
        if judging_a_raise and rate < (self._rate or 0.0) * (1 + GAIN):
            self.limit, self._hold = self._paid, HOLD
            return self.limit
        self._paid, self._rate = self.limit, rate
        self.limit = min(self.maximum, self.limit * 2)
        return self.limit


class AdaptiveLimit:
    """Runs a `Probe` over `limiter` from the bytes the background GETs fetch."""

    def __init__(
        self,
        limiter: trio.CapacityLimiter,
        fetched: Callable[[], int],
        *,
        minimum: int,
        maximum: int,
    ) -> None:
        self.probe = Probe(minimum, maximum)
        self._limiter = limiter
        self._fetched = fetched  # bytes the background GETs fetched so far
        limiter.total_tokens = self.probe.limit

    async def run(self) -> None:
        while True:
            rate, waited = await self._window()
            limit = self.probe.window(rate, waited)
            if limit != self._limiter.total_tokens:
                log.debug(
                    "background GETs: %d -> %d (%.1f MB/s)",
                    self._limiter.total_tokens,
                    limit,
                    rate / 1e6,
                )
            self._limiter.total_tokens = limit

    async def _window(self) -> tuple[float, bool]:
        """One window: the rate of the background GETs over it, and whether any waited for a
        slot. It lasts WINDOW seconds, longer until WINDOW_BYTES arrived (a slow link's rate
        from a block or two is noise), WINDOW_MAX at most."""
        before, start = self._fetched(), trio.current_time()
        waited = False
        while True:
            waited = waited or self._limiter.statistics().tasks_waiting > 0  # no event says so
            await trio.sleep(WINDOW / 10)
            elapsed, fetched = trio.current_time() - start, self._fetched() - before
            if elapsed >= WINDOW_MAX or (elapsed >= WINDOW and fetched >= WINDOW_BYTES):
                return fetched / elapsed, waited


def adapt_background_gets(fetcher: BlockFetcher, maximum: int) -> AdaptiveLimit:
    """The probe over `fetcher`'s background GETs, from `MINIMUM` (or `maximum`, if fewer) up to
    `maximum` at once; run its `run` beside the fetcher."""
    return AdaptiveLimit(
        fetcher.prefetch_limiter,
        lambda: fetcher.statistics().bytes_fetched,
        minimum=min(MINIMUM, maximum),
        maximum=maximum,
    )
