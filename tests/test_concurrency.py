"""Which background GETs run when: `read.concurrency.Probe` (how many pay, on a saturated link
and a WAN one), `AdaptiveLimit` (the probe applied to a limiter) and `read.tickets.DemandFirst`
(a reader's own GETs go first)."""

from __future__ import annotations

import time

import trio
import trio.testing

from modelfs.objects import ObjectId
from modelfs.read.concurrency import HOLD, WINDOW, AdaptiveLimit, Probe
from modelfs.read.tickets import DEMAND_FIRST, DemandFirst, FetchTicket


def run(probe: Probe, rate_of: dict[int, float] | None, windows: int) -> list[int]:
    """The limits after `windows` windows in which GETs waited; `rate_of(limit)` the link."""
    limits = []
    for _ in range(windows):
        rate = rate_of[probe.limit] if rate_of else 0.0
        limits.append(probe.window(rate, waiting=True))
    return limits


def test_on_a_link_a_few_gets_fill_more_are_tried_and_given_back() -> None:
    probe = Probe(4, 16)
    saturated = {4: 300e6, 8: 310e6, 16: 315e6}
    assert run(probe, saturated, 2) == [8, 4]  # 8 did not pay: back to 4
    assert run(probe, saturated, HOLD) == [4] * HOLD  # held
    assert run(probe, saturated, 2) == [8, 4]  # and probed again


def test_on_a_wan_link_each_get_adds_its_share_up_to_the_maximum() -> None:
    probe = Probe(4, 16)
    per_connection = {n: n * 10e6 for n in (4, 8, 16)}
    assert run(probe, per_connection, 4) == [8, 16, 16, 16]


def test_windows_without_waiting_gets_learn_nothing() -> None:
    probe = Probe(4, 16)
    assert probe.window(100e6, waiting=True) == 8  # raised: to be judged
    assert probe.window(0.0, waiting=False) == 4  # nothing waited: the raise is dropped
    assert probe.window(100e6, waiting=True) == 8  # a fresh probe, no stale comparison
    assert probe.window(200e6, waiting=True) == 16


def test_background_gets_hold_back_while_a_readers_own_get_runs() -> None:
    first = DemandFirst()
    demand = FetchTicket(ObjectId("k", "e"), 0, 1, prefetch=False)
    background = FetchTicket(ObjectId("k", "e"), 1, 8, prefetch=True)
    first.started(demand)
    started = time.monotonic()
    first.hold_back(background)
    assert time.monotonic() - started >= DEMAND_FIRST * 0.9  # held back, for a while only
    first.hold_back(demand)  # a reader's own GET never waits
    first.demote(demand)
    started = time.monotonic()
    first.hold_back(background)
    assert time.monotonic() - started < DEMAND_FIRST / 2


async def test_the_limiter_settles_where_the_link_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Background GETs always waiting, on a link that 3 GETs fill: the limiter's slots go
    1, 2, 4, then 8 is tried, does not pay, and 4 is kept."""
    limiter = trio.CapacityLimiter(16)
    fetched, last = [0.0], [trio.current_time()]

    def link() -> int:  # bytes fetched so far: 1 MB/s per slot in use, 3 at most
        now = trio.current_time()
        fetched[0] += (now - last[0]) * min(limiter.total_tokens, 3) * 1e6
        last[0] = now
        return int(fetched[0])

    adaptive = AdaptiveLimit(limiter, link, minimum=1, maximum=16)
    seen = [limiter.total_tokens]
    async with trio.open_nursery() as nursery:
        for _ in range(20):  # GETs queueing for a slot, all the time
            nursery.start_soon(limiter.acquire_on_behalf_of, object())
        nursery.start_soon(adaptive.run)
        await trio.sleep(WINDOW / 2)  # look in the middle of each window
        for _ in range(6):
            await trio.sleep(WINDOW)
            seen.append(limiter.total_tokens)
        nursery.cancel_scope.cancel()
    assert seen[:5] == [1, 2, 4, 8, 4]
    assert seen[-1] == 4
