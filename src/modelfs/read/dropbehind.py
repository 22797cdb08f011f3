"""Drop-behind: the kernel's cached pages of a large file, dropped once its reader is past them
while memory is short.

A checkpoint read once from start to end (an app loading its model) leaves all of it in the
page cache. Where memory is short that evicts everything else, and on a VM whose free memory
goes back to its host, filling gigabytes of fresh page cache can bound a cold read
(`bench/experiments/drop_behind.py`, docs/performance.md). Whether memory is short is
`pagecache.keeps_page_cache`'s rule, asked again before every step of dropping, so a reader
that starts on a roomy machine drops what it read once memory runs short; the drop itself is
`pagecache.PageCacheAdvisor.drop`. Re-reads of a dropped file come from the block cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

DROP_LAG = 32 << 20  # pages this close behind the reader stay: a small step back still hits
DROP_STEP = 32 << 20  # one open + fadvise per this much read


@dataclass
class DropBehind:
    """One handle's drop-behind. A run is a stretch of reads each within DROP_LAG of the end of
    the one before (the kernel's parallel requests arrive a little out of order); only what the
    current run has read, up to DROP_LAG behind it, is dropped."""

    pid: int = 0  # the process that opened the file (its cgroup's limit counts)
    by_memory: bool = False  # drop only while memory is short (`keeps_page_cache`)
    dropped_to: int = 0  # the run's pages before this are dropped (or were never read)
    last_end: int = 0
    pending: trio.Event | None = None

    def on_read(self, offset: int, end: int) -> tuple[int, int] | None:
        """Note a read of [offset, end); the range to drop now, if one is due and none is
        under way. The caller sets `pending` while it drops."""
        if abs(offset - self.last_end) > DROP_LAG:
            self.dropped_to = offset  # a new run: nothing before it is this run's to drop
        self.last_end = end
        if self.pending is not None:
            return None
        start, stop = self.dropped_to, (offset - DROP_LAG) // DROP_STEP * DROP_STEP
        return (start, stop) if stop - start >= DROP_STEP else None

    def finished(self, start: int, stop: int) -> None:
        if self.dropped_to == start:  # else a new run began meanwhile, and stays
            self.dropped_to = stop
        done, self.pending = self.pending, None
        if done is not None:
            done.set()

    async def settled(self) -> None:
        """Wait for the drop under way, so no descriptor of ours outlives the reader's close."""
        if self.pending is not None:
            await self.pending.wait()
