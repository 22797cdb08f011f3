"""MemoryBudget: the byte budget shared by GET streams (threads) and uploads (trio)."""

from __future__ import annotations

import trio
import trio.testing

from modelfs.memory import BudgetStatistics, MemoryBudget


def test_try_acquire_takes_only_what_fits() -> None:
    budget = MemoryBudget(10)
    assert budget.try_acquire(6)
    assert not budget.try_acquire(5)
    assert budget.try_acquire(4)
    budget.release(10)
    assert budget.statistics() == BudgetStatistics(limit=10, in_use=0, peak=10, waits=0)


async def test_acquire_async_waits_for_a_release_and_asks_for_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = MemoryBudget(10)
    asked: list[float] = []
    budget.on_pressure = lambda: asked.append(trio.current_time())
    assert budget.try_acquire(8)
    got = trio.Event()

    async def take() -> None:
        await budget.acquire_async(5)
        got.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.sleep(1)
        assert not got.is_set()
        assert len(asked) >= 2  # asked again on every try
        budget.release(8)
        await got.wait()
    assert budget.statistics() == BudgetStatistics(limit=10, in_use=5, peak=8, waits=1)


async def test_acquire_async_can_be_cancelled_and_takes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = MemoryBudget(10)
    assert budget.try_acquire(10)
    with trio.move_on_after(1) as scope:
        await budget.acquire_async(1)
    assert scope.cancelled_caught
    budget.release(10)
    assert budget.statistics().in_use == 0
