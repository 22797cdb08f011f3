"""Running a write-back engine inside a test's trio run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from modelfs.write.engine import WriteBack


@asynccontextmanager
async def running(engine: WriteBack) -> AsyncIterator[WriteBack]:
    """The engine with its uploader running; closed (not drained) on exit, like a crash."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run)
            yield engine
            nursery.cancel_scope.cancel()
    finally:
        engine.close()
