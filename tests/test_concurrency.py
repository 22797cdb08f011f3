"""Which background GETs run when: `read.concurrency.Probe` (how many pay, on a saturated link
and a WAN one) and `read.tickets.DemandFirst` (a reader's own GETs go first)."""

from __future__ import annotations

import time

from modelfs.objects import ObjectId
from modelfs.read.concurrency import HOLD, Probe
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
