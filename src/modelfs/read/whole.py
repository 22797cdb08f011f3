"""`WholeObjectFetch`: every missing block of one object version, fetched in the background.

Used on open for large model files, which loaders read through mmap in scattered 4 KiB faults:
with the whole file in the cache, those faults hit local blocks. Up to `parallel` parts are in
flight at once. It pauses while a reader streams through the object sequentially (that reader's
readahead then fetches, at the pace it reads), and fills in the rest when the reader stops or
seeks. Block 0 goes first: an app's first read is almost always there (a safetensors header).

With `fill` (memory to spare, see `pagecache`), each part is then brought into the kernel's page
cache, in order, once all its blocks are there (fetched now, or cached before: an open of a
cached file fills it too), so a random or mmap reader finds it in memory instead of asking the
mount page by page. Fills wait, like parts, while a reader streams (it fills the page cache
itself), and a part that failed is not filled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from modelfs.objects import ObjectInfo
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.tickets import FetchTicket

log = logging.getLogger(__name__)

STREAMING_POLL = 0.05  # seconds between two looks at whether a reader still streams
FILL_MAX = 64 << 20  # bytes of cached blocks filled with one open: fewer opens, short gates

Fill = Callable[[int, int], Awaitable[None]]
"""Brings bytes [start, end) of the object into the page cache (see `pagecache`)."""


class WholeObjectFetch:
    """Fetch every missing block of one object version with `parallel` concurrent parts."""

    def __init__(
        self,
        fetcher: BlockFetcher,
        info: ObjectInfo,
        *,
        part_size: int,
        parallel: int,
        reader_streaming: Callable[[], bool] = lambda: False,
        fill: Fill | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._info = info
        self._reader_streaming = reader_streaming
        self._part_blocks = max(1, part_size // fetcher.block_size)
        self._parallel = max(1, parallel)
        self._fill = fill
        self._last_fill: trio.Event | None = None  # the fill of the part before the next one
        self.done = trio.Event()
        self.error: BaseException | None = None

    async def run(self) -> None:
        try:
            await self._run()
            if self.error is not None:
                log.warning("background fetch of %s stopped: %s", self._info.key, self.error)
        finally:
            self.done.set()

    async def _run(self) -> None:
        fetcher, info = self._fetcher, self._info
        total = fetcher.block_count(info)
        slots = trio.Semaphore(self._parallel)
        index = 0
        async with trio.open_nursery() as nursery:
            while index < total and self.error is None:
                present, most = 0, max(self._part_blocks, FILL_MAX // fetcher.block_size)
                while index + present < total and present < most:
                    if not fetcher.is_present(info.id, index + present):
                        break
                    present += 1
                if present:  # cached, or being fetched by someone else
                    self._then_fill(nursery, index, present)
                    index += present
                    continue
                if index > 0:
                    # The app's first read is almost always at 0 (a safetensors header): let
                    # block 0 arrive, whoever asked for it, before the other parts compete
                    # with it for the server and the CPU (started all at once, they made the
                    # first byte of a large file wait for many of them).
                    await fetcher.wait_for(info.id, 0)
                    await self._yield_to_streaming_reader()
                await slots.acquire()
                ticket = fetcher.start_fetch(info, index, self._part_blocks, prefetch=True)
                if ticket is None:
                    slots.release()
                    continue
                nursery.start_soon(self._await_part, ticket, slots)
                self._then_fill(nursery, index, ticket.count)
                index += ticket.count

    async def _yield_to_streaming_reader(self) -> None:
        """Start no part while a reader streams through the object: its readahead fetches as
        many parts at once, at the pace it reads. Run ahead of it, the parts outgrow the RAM
        kept for the reader, and it reads them back from the disk (docs/performance.md, read
        engine item 4)."""
        # Polled: "streaming" ends by the passing of time (no read for a while), not by an
        # event anything could set.
        while self._reader_streaming():  # noqa: ASYNC110
            await trio.sleep(STREAMING_POLL)

    def _then_fill(self, nursery: trio.Nursery, first: int, count: int) -> None:
        """Fill blocks [first, first + count) into the page cache once they are all there,
        after the part before them."""
        if self._fill is None:
            return
        before, self._last_fill = self._last_fill, trio.Event()
        nursery.start_soon(self._fill_part, before, self._last_fill, first, count)

    async def _fill_part(
        self, before: trio.Event | None, filled: trio.Event, first: int, count: int
    ) -> None:
        try:
            for index in range(first, first + count):
                if await self._fetcher.wait_for(self._info.id, index) is not None:
                    return  # failed: `_await_part` reports it
            if before is not None:
                await before.wait()
            await self._yield_to_streaming_reader()
            size, block = self._info.size, self._fetcher.block_size
            assert self._fill is not None
            await self._fill(first * block, min(size, (first + count) * block))
        finally:
            filled.set()

    async def _await_part(self, ticket: FetchTicket, slots: trio.Semaphore) -> None:
        try:
            # The last block of a part is published last: once it is done, the part is.
            error = await self._fetcher.wait_for(ticket.obj, ticket.first + ticket.count - 1)
            if error is not None and self.error is None:
                self.error = error
        finally:
            slots.release()
