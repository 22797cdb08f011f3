"""`WholeObjectFetch`: every missing block of one object version, fetched in the background.

Used on open for large model files, which loaders read through mmap in scattered 4 KiB faults:
with the whole file in the cache, those faults hit local blocks. Up to `parallel` parts are in
flight at once. It pauses while a reader streams through the object sequentially (that reader's
readahead then fetches, at the pace it reads), and fills in the rest when the reader stops or
seeks. Block 0 goes first: an app's first read is almost always there (a safetensors header).
`fetched` counts the bytes of blocks found present and of parts completed (`modelfs warm`'s
progress).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from modelfs.objects import ObjectInfo
from modelfs.read.fetcher import BlockFetcher, FetchTicket

log = logging.getLogger(__name__)

STREAMING_POLL = 0.05  # seconds between two looks at whether a reader still streams


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
    ) -> None:
        self._fetcher = fetcher
        self._info = info
        self._reader_streaming = reader_streaming
        self._part_blocks = max(1, part_size // fetcher.block_size)
        self._parallel = max(1, parallel)
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.fetched = 0  # bytes of blocks present or fetched so far

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
                if fetcher.is_present(info.id, index):
                    self.fetched += self._bytes_of(index, 1)
                    index += 1
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
                index += ticket.count

    def _bytes_of(self, first: int, count: int) -> int:
        size = self._fetcher.block_size
        return max(0, min(self._info.size, (first + count) * size) - first * size)

    async def _yield_to_streaming_reader(self) -> None:
        """Start no part while a reader streams through the object: its readahead fetches as
        many parts at once, at the pace it reads. Run ahead of it, the parts outgrow the RAM
        kept for the reader, and it reads them back from the disk (docs/performance.md, read
        engine item 4)."""
        # Polled: "streaming" ends by the passing of time (no read for a while), not by an
        # event anything could set.
        while self._reader_streaming():  # noqa: ASYNC110
            await trio.sleep(STREAMING_POLL)

    async def _await_part(self, ticket: FetchTicket, slots: trio.Semaphore) -> None:
        try:
            # The last block of a part is published last: once it is done, the part is.
            error = await self._fetcher.wait_for(ticket.obj, ticket.first + ticket.count - 1)
            if error is None:
                self.fetched += self._bytes_of(ticket.first, ticket.count)
            elif self.error is None:
                self.error = error
        finally:
            slots.release()
