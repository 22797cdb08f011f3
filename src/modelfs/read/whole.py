"""`WholeObjectFetch`: every missing block of one object version, fetched in the background.

Used on open for large model files, which loaders read through mmap in scattered 4 KiB faults:
with the whole file in the cache, those faults hit local blocks. It is a `RangeFetch` (the
engine, `ranges`) of one range, the whole object, with up to `parallel` parts in flight at
once; the first failed part stops it. It pauses while a reader streams through the object
sequentially (that reader's readahead then fetches, at the pace it reads), and fills in the
rest when the reader stops or seeks. Block 0 goes first: an app's first read is almost always
there (a safetensors header). `fetched` counts the bytes of blocks found present and of parts
completed (`modelfs warm`'s progress).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from modelfs.objects import ObjectInfo
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.ranges import RangeFetch

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
        self._ranges = RangeFetch(
            fetcher,
            [(info, 0, info.size)],
            part_size=part_size,
            parallel=parallel,
            stop_on_error=True,
            pace=self._pace,
        )
        self.done = self._ranges.done

    @property
    def fetched(self) -> int:
        """Bytes of blocks present or fetched so far."""
        return self._ranges.present + self._ranges.fetched

    @property
    def error(self) -> BaseException | None:
        return self._ranges.error

    async def run(self) -> None:
        await self._ranges.run()
        if self.error is not None:
            log.warning("background fetch of %s stopped: %s", self._info.key, self.error)

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
