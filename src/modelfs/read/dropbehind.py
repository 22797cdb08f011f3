"""Drop-behind: the kernel's cached pages of a large file, dropped once its reader is past them
when memory is short.

A checkpoint read once from start to end (an app loading its model) leaves all of it in the
page cache. Where memory is plentiful that is what makes the next load (an app restart) fast:
it never reaches the mount. Where it is short, it evicts everything else, and on a VM whose
free memory goes back to its host, filling gigabytes of fresh page cache can bound a cold read
(`bench/experiments/drop_behind.py`, docs/performance.md). So the decision is made from memory
(`keeps_page_cache`): a file keeps its pages while at least `KEEP_FACTOR` times its size is
available to its reader (`host.meminfo`: MemAvailable, or the room under the reader's cgroup
limit if lower). Four times: its own pages take one share, and the rest of the machine keeps
three times as much for everything else; MemAvailable counts reclaimable page cache too, so a
smaller margin would let one model push out the rest of a busy machine's cache. The figure is
looked at again before every step of dropping, so a reader that starts on a roomy machine drops
what it read once memory runs short. Re-reads of a dropped file come from the block cache.

How: `posix_fadvise(POSIX_FADV_DONTNEED)` drops the clean, unmapped pages of a range. It leaves
pages a process has mapped alone, so an mmap reader (llama.cpp keeps its mapping for inference)
loses nothing it uses. pyfuse3 has no ranged invalidation, and its whole-file one would also
unmap. The advice needs a descriptor of the file in the mount, so a worker thread opens the file
through the mount, advises and closes it at once. The filesystem recognises these opens by the
requesting thread (`is_own`) and gives them no handle and no readahead.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)

DROP_LAG = 32 << 20  # pages this close behind the reader stay: a small step back still hits
DROP_STEP = 32 << 20  # one open + fadvise per this much read
KEEP_FACTOR = 4  # a file keeps its page cache while this many times its size is available


def keeps_page_cache(available: int | None, size: int) -> bool:
    """Whether a file of `size` bytes keeps its page cache with `available` bytes of memory
    left to its reader (None: unknown, as for any local file the kernel decides)."""
    return available is None or available >= KEEP_FACTOR * size


class PageCacheTrimmer:
    def __init__(self, mountpoint: str) -> None:
        self._mountpoint = mountpoint
        self._threads: set[int] = set()  # native ids of the threads that open through the mount
        self._limiter = trio.CapacityLimiter(1)
        self.dropped = 0  # bytes advised away, for statistics

    def is_own(self, pid: int) -> bool:
        """Whether a FUSE request came from one of our threads (the kernel gives the thread id)."""
        return pid in self._threads

    async def drop(self, path: str, start: int, end: int) -> None:
        """Drop the cached pages of bytes [start, end) of `path` (relative to the mount root)."""
        # Abandoned on cancel: when the mount shuts down, nobody answers the open any more
        # until the unmount, which then fails it.
        await trio.to_thread.run_sync(
            self._drop, path, start, end, limiter=self._limiter, abandon_on_cancel=True
        )

    def _drop(self, path: str, start: int, end: int) -> None:
        # Ours only while this thread opens: once it exits, its id may go to another process.
        thread = threading.get_native_id()
        self._threads.add(thread)
        try:
            fd = os.open(os.path.join(self._mountpoint, path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # renamed or deleted meanwhile: its pages go with it
            log.debug("drop-behind: cannot open %s: %s", path, exc)
            return
        finally:
            self._threads.discard(thread)
        try:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
            self.dropped += end - start
        except OSError as exc:
            log.debug("drop-behind: fadvise %s: %s", path, exc)
        finally:
            os.close(fd)


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
