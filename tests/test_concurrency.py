"""Which background GETs run when: `read.concurrency.Probe` (how many pay, on a saturated link
and a WAN one), `AdaptiveLimit` (the probe applied to a limiter) and `read.tickets.DemandFirst`
(a reader's own GETs go first)."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio
import trio.testing

from modelfs.objects import ObjectId
from modelfs.read.concurrency import HOLD, WINDOW, WINDOW_MAX, AdaptiveLimit, Probe
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
    """A window in which no GET waited for a slot says nothing of the slots: the limit stays,
    and a raise is judged at the next window with GETs waiting, against the rate before it."""
    probe = Probe(4, 16)
    assert probe.window(100e6, waiting=True) == 8  # raised: to be judged
    assert probe.window(0.0, waiting=False) == 8  # nothing waited: kept, not judged
    assert probe.window(200e6, waiting=True) == 16  # judged against 100e6: it paid
    assert probe.window(0.0, waiting=False) == 16
    assert probe.window(210e6, waiting=True) == 8  # judged against 200e6: it did not


def test_a_reader_that_leaves_slots_idle_now_and_then_keeps_what_paid() -> None:
    """A sequential reader on a WAN link does not keep every slot busy in every window (its
    readahead tops up as it reads): those windows must not undo a raise that paid."""
    probe = Probe(4, 16)
    limits = [
        probe.window(probe.limit * 10e6, waiting)
        for waiting in (True, True, False, True, False, True, False)
    ]
    assert limits == [8, 16, 16, 16, 16, 16, 16]


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


def waiting_gets(limiter: trio.CapacityLimiter, nursery: trio.Nursery) -> None:
    """Background GETs queueing for a slot of `limiter`, all the time."""
    for _ in range(20):
        nursery.start_soon(limiter.acquire_on_behalf_of, object())


def link_of(limiter: trio.CapacityLimiter, per_slot: float, full_at: int) -> Callable[[], int]:
    """Bytes fetched so far over a link of `per_slot` bytes/s per slot in use, full at
    `full_at` slots."""
    fetched, last = [0.0], [trio.current_time()]

    def link() -> int:
        now = trio.current_time()
        fetched[0] += (now - last[0]) * min(limiter.total_tokens, full_at) * per_slot
        last[0] = now
        return int(fetched[0])

    return link


async def test_the_limiter_settles_where_the_link_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a link that 3 GETs fill, the limiter's slots go 1, 2, 4, then 8 is tried, does not
    pay, and 4 is kept."""
    limiter = trio.CapacityLimiter(16)
    adaptive = AdaptiveLimit(limiter, link_of(limiter, 40e6, 3), minimum=1, maximum=16)
    seen = [limiter.total_tokens]
    async with trio.open_nursery() as nursery:
        waiting_gets(limiter, nursery)
        nursery.start_soon(adaptive.run)
        for _ in range(200):  # 10 windows, looked at 20 times each
            await trio.sleep(WINDOW / 20)
            if limiter.total_tokens != seen[-1]:
                seen.append(limiter.total_tokens)
        nursery.cancel_scope.cancel()
    assert seen == [1, 2, 4, 8, 4]


async def test_on_a_slow_link_a_window_waits_for_enough_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At 1 MB/s a window of WINDOW seconds holds a fraction of one block: the first decision
    waits for WINDOW_BYTES, and at most WINDOW_MAX."""
    limiter = trio.CapacityLimiter(16)
    adaptive = AdaptiveLimit(limiter, link_of(limiter, 1e6, 16), minimum=1, maximum=16)
    async with trio.open_nursery() as nursery:
        waiting_gets(limiter, nursery)
        nursery.start_soon(adaptive.run)
        await trio.sleep(WINDOW_MAX - WINDOW)
        assert limiter.total_tokens == 1  # not judged on a few hundred KB
        await trio.sleep(WINDOW * 2)
        assert limiter.total_tokens == 2
        nursery.cancel_scope.cancel()
