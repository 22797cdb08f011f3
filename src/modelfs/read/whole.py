"""`WholeObjectFetch`: every missing block of one object version, fetched in the background.

Used on open for large model files, which loaders read through mmap in scattered 4 KiB faults:
with the whole file in the cache, those faults hit local blocks. It is a `RangeFetch` (the
engine, `ranges`) of one range, the whole object, with up to `parallel` parts in flight at
once; the first failed part stops it. It pauses while a reader streams through the object
sequentially (that reader's readahead then fetches, at the pace it reads), and fills in the
rest when the reader stops or seeks. Block 0 goes first: an app's first read is almost always
there (a safetensors header). `fetched` counts the bytes of blocks found present and of parts
completed (`modelfs warm`'s progress).

With `fill` (memory to spare, see `pagecache`), each run of blocks the engine covers (a part it
started, or at most FILL_MAX of blocks cached before: an open of a cached file fills it too) is
then brought into the kernel's page cache, in order, once all its blocks are there, so a random
or mmap reader finds it in memory instead of asking the mount page by page. Fills wait, like
parts, while a reader streams (it fills the page cache itself), and a part that failed is not
filled. `done` is set once the fetch and its fills have ended.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from modelfs.objects import ObjectInfo
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.ranges import RangeFetch

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
        self._fill = fill
        self._fills: trio.Nursery | None = None
        self._last_fill: trio.Event | None = None  # the fill of the run before the next one
        self._ranges = RangeFetch(
            fetcher,
            [(info, 0, info.size)],
            part_size=part_size,
            parallel=parallel,
            stop_on_error=True,
            pace=self._pace,
            then=self._then_fill if fill is not None else None,
        )
        self.done = trio.Event()

    @property
    def fetched(self) -> int:
        """Bytes of blocks present or fetched so far."""
        return self._ranges.present + self._ranges.fetched

    @property
    def error(self) -> BaseException | None:
        return self._ranges.error

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as fills:
                self._fills = fills
                await self._ranges.run()
            if self.error is not None:
                log.warning("background fetch of %s stopped: %s", self._info.key, self.error)
        finally:
            self.done.set()

    async def _pace(self, index: int) -> None:
        # The app's first read is almost always at 0 (a safetensors header): let block 0
        # arrive, whoever asked for it, before the other parts compete with it for the server
        # and the CPU (started all at once, they made the first byte of a large file wait for
        # many of them).
        await self._fetcher.wait_for(self._info.id, 0)
        await self._yield_to_streaming_reader()

    async def _yield_to_streaming_reader(self) -> None:
        """Start no part while a reader streams through the object: its readahead fetches as
        many parts at once, at the pace it reads. Run ahead of it, the parts outgrow the RAM
        kept for the reader, and it reads them back from the disk (docs/performance.md, read
        engine item 4)."""
        # Polled: "streaming" ends by the passing of time (no read for a while), not by an
        # event anything could set.
        while self._reader_streaming():  # noqa: ASYNC110
            await trio.sleep(STREAMING_POLL)

    def _then_fill(self, info: ObjectInfo, first: int, count: int) -> None:
        """Fill blocks [first, first + count) into the page cache once they are all there,
        after the run before them, FILL_MAX at a time."""
        assert self._fills is not None
        most = max(1, FILL_MAX // self._fetcher.block_size)
        for start in range(first, first + count, most):
            before, self._last_fill = self._last_fill, trio.Event()
            run = min(most, first + count - start)
            self._fills.start_soon(self._fill_run, before, self._last_fill, start, run)

    async def _fill_run(
        self, before: trio.Event | None, filled: trio.Event, first: int, count: int
    ) -> None:
        try:
            for index in range(first, first + count):
                if await self._fetcher.wait_for(self._info.id, index) is not None:
                    return  # failed: the engine reports it
            if before is not None:
                await before.wait()
            await self._yield_to_streaming_reader()
            size, block = self._info.size, self._fetcher.block_size
            assert self._fill is not None
            await self._fill(first * block, min(size, (first + count) * block))
        finally:
            filled.set()
