"""`RangeFetch`: byte ranges of object versions fetched into the cache, in a given order, in
the background: the engine of a whole-object fetch (`whole`: one range, the whole object) and
of the replay of a start profile (`read.profile`: the ranges an app read at its last start).

The blocks come from the one engine every read uses: `BlockFetcher.start_fetch` claims a run
of missing blocks and GETs it on the prefetch limiter (so an app's demand reads never wait for
these slots); a block already cached or in flight costs nothing, and an app that reads a block
being fetched here waits for that GET instead of sending its own. Ranges go in order, each
split into parts of at most `part_size`, with `parallel` parts in flight at once, so the first
ranges arrive first. `pace(index)`, if given, is awaited before each part after the first
(a whole-object fetch lets block 0 arrive first, and yields to a streaming reader).

A part that fails is counted, and its first error kept (`error`); with `stop_on_error` (a
whole-object fetch) no part starts after it, else the fetch goes on with the next ranges (a
replay: the app's own read of those bytes will fetch them, or report the error itself).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from modelfs.objects import ObjectInfo
from modelfs.read.fetcher import BlockFetcher, FetchTicket

log = logging.getLogger(__name__)

Range = tuple[ObjectInfo, int, int]  # (version, offset, length)


class RangeFetch:
    def __init__(
        self,
        fetcher: BlockFetcher,
        ranges: Sequence[Range],
        *,
        part_size: int,
        parallel: int,
        stop_on_error: bool = False,
        pace: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._ranges = ranges
        self._part_blocks = max(1, part_size // fetcher.block_size)
        self._parallel = max(1, parallel)
        self._stop_on_error = stop_on_error
        self._pace = pace
        self.fetched = 0  # bytes of parts this fetch completed
        self.present = 0  # bytes found cached or in flight already
        self.failed = 0  # parts that failed
        self.error: BaseException | None = None  # the first failure
        self.done = trio.Event()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.done.set()

    async def _run(self) -> None:
        fetcher, size = self._fetcher, self._fetcher.block_size
        slots = trio.Semaphore(self._parallel)
        async with trio.open_nursery() as nursery:
            for info, offset, length in self._ranges:
                index = offset // size
                stop = min(-(-(offset + length) // size), fetcher.block_count(info))
                while index < stop:
                    if self._stop_on_error and self.error is not None:
                        return
                    if fetcher.is_present(info.id, index):
                        self.present += self._bytes_of(info, index, 1)
                        index += 1
                        continue
                    if self._pace is not None and index > 0:
                        await self._pace(index)
                    await slots.acquire()
                    count = min(self._part_blocks, stop - index)
                    ticket = fetcher.start_fetch(info, index, count, prefetch=True)
                    if ticket is None:  # became present while we waited
                        slots.release()
                        continue
                    nursery.start_soon(self._await_part, info, ticket, slots)
                    index += ticket.count
                    # One GET task per scheduling batch: trio may start the tasks of one batch
                    # in any order, and they must queue for the limiter in this order.
                    await trio.lowlevel.checkpoint()

    def _bytes_of(self, info: ObjectInfo, first: int, count: int) -> int:
        size = self._fetcher.block_size
        return max(0, min(info.size, (first + count) * size) - first * size)

    async def _await_part(
        self, info: ObjectInfo, ticket: FetchTicket, slots: trio.Semaphore
    ) -> None:
        try:
            # The last block of a part is published last: once it is done, the part is.
            error = await self._fetcher.wait_for(ticket.obj, ticket.first + ticket.count - 1)
            if error is None:
                self.fetched += self._bytes_of(info, ticket.first, ticket.count)
            else:
                self.failed += 1
                self.error = self.error or error
                log.debug("part of %s at block %d failed: %s", info.key, ticket.first, error)
        finally:
            slots.release()
