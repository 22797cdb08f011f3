"""`ObjectReader`: the reads of one open file handle, pinned to one object version.

The filesystem core's `read` is one call into this. A read of [offset, offset + size):
1. tells the handle's readahead (`HandlePrefetcher`) where the reader is, so it tops up the
   GETs ahead of it;
2. assembles the answer from whole blocks (`BlockFetcher.block`); a read covering only part of
   a block that is already cached reads just that range from the cache, which is what random
   reads need (a 4 KiB read costs a 4 KiB pread, not a 1 MiB block);
3. remembers the last block it used: the kernel's requests are often smaller than a block and
   hit the same one several times in a row;
4. tells the fetcher which blocks it has read to their end, so they need not stay in RAM;
5. notes the read for drop-behind (see `dropbehind`), which the policy schedules;
6. for a file the manifest lists, obeys its verification (see `verify`): EIO once it failed,
   and a read of the last block waits for the verdict;
7. tells `observe` (the policy: a start being recorded, `read.profile`) what it read.

Invariant: every byte returned is of the version in `info` (the fetcher's GETs carry If-Match);
a replaced object surfaces as `StaleObject`, never as a mix.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from modelfs.objects import ObjectInfo
from modelfs.read.dropbehind import DropBehind
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.readahead import HandlePrefetcher
from modelfs.read.verify import Verification

# A sequential reader that read within this many seconds is streaming: a whole-object fetch
# waits for it (see `whole`). Long enough to span the kernel's gaps between requests.
STREAMING_IDLE = 0.2

DropRequest = Callable[["ObjectReader", int, int], None]
"""Asks the policy to drop the page cache of [start, stop) behind this reader."""
Observe = Callable[[ObjectInfo, int, int], None]
"""Told of every read: the version, and [offset, end) read of it."""


class ObjectReader:
    def __init__(
        self,
        fetcher: BlockFetcher,
        info: ObjectInfo,
        prefetcher: HandlePrefetcher,
        *,
        part_size: int,
        drop: DropBehind | None = None,
        request_drop: DropRequest | None = None,
        verification: Verification | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.info = info
        self._observe = observe
        self.verification = verification
        self.prefetcher = prefetcher
        self.drop = drop
        self._fetcher = fetcher
        self._part_blocks = max(1, part_size // fetcher.block_size)
        self._request_drop = request_drop
        self._memo_index = -1
        self._memo_data = b""
        self.last_read = -math.inf  # trio.current_time() of the last read

    def streaming(self, now: float) -> bool:
        """Reading sequentially, and recently: its readahead is fetching for it."""
        return self.prefetcher.sequential and now - self.last_read < STREAMING_IDLE

    async def read(self, offset: int, size: int) -> bytes:
        self.last_read = trio.current_time()
        info = self.info
        end = min(offset + size, info.size)
        if offset >= end:
            return b""
        self.prefetcher.on_read(offset, end - offset)
        if self._observe is not None:
            self._observe(info, offset, end)
        block_size = self._fetcher.block_size
        first, last = offset // block_size, (end - 1) // block_size
        if self.verification is not None:
            await self.verification.check(first, last)
        # On a miss, one GET covers the rest of this read and, for a sequential reader, a
        # whole part: the readahead's parts start further ahead.
        run = max(last - first + 1, self._part_blocks if self.prefetcher.sequential else 1)
        pieces: list[bytes] = []
        for index in range(first, last + 1):
            base = index * block_size
            lo, hi = max(offset, base) - base, min(end, base + block_size) - base
            if hi - lo < block_size and self._memo_index != index:
                part = self._fetcher.cached_range(info, index, lo, hi - lo)
                if part is not None:
                    pieces.append(part)
                    continue
            data = await self._block(index, run - (index - first))
            hi = min(hi, len(data))
            if hi == len(data):
                self._fetcher.done_with(info.id, index)
            pieces.append(data if lo == 0 and hi == len(data) else data[lo:hi])
        self._note_for_drop_behind(offset, end)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _block(self, index: int, run: int) -> bytes:
        if self._memo_index == index:
            return self._memo_data
        data = await self._fetcher.block(self.info, index, run_blocks=run)
        self._memo_index, self._memo_data = index, data
        return data

    def _note_for_drop_behind(self, offset: int, end: int) -> None:
        drop = self.drop
        if drop is None or self._request_drop is None:
            return
        due = drop.on_read(offset, end)
        if due is not None:
            self._request_drop(self, *due)

    async def flush(self) -> None:
        """close(2) waits for this: no descriptor of ours on the file outlives it."""
        if self.drop is not None:
            await self.drop.settled()

    def close(self) -> None:
        self.prefetcher.close()
