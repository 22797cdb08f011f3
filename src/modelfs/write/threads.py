"""How write-back's blocking calls (boto3, large file I/O) leave the trio thread.

`to_thread` is the production runner, `trio.to_thread.run_sync` under a limiter. Unit tests pass
a runner that calls inline, so trio's mock clock sees no idle time while "threads" work and
every due time can be asserted exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar, TypeVarTuple

import trio

T = TypeVar("T")
Args = TypeVarTuple("Args")


class ThreadRunner(Protocol):
    """How blocking calls leave the trio thread: `trio.to_thread.run_sync`, or in unit tests
    a runner that calls inline, so trio's mock clock sees no idle time while "threads" work."""

    async def __call__(
        self, fn: Callable[[*Args], T], *args: *Args, limiter: trio.CapacityLimiter | None = None
    ) -> T: ...


async def to_thread(
    fn: Callable[[*Args], T], *args: *Args, limiter: trio.CapacityLimiter | None = None
) -> T:
    """The production `ThreadRunner`."""
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
