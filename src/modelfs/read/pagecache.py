"""The kernel's page cache of the mount's files: when to keep it, and advice through the mount.

When (`keeps_page_cache`): a file keeps its pages, and is brought into the page cache ahead of
its readers, while at least `KEEP_FACTOR` times its size is available to its reader
(`host.meminfo`: MemAvailable, or the room under the reader's cgroup limit if lower). Four
times: its own pages take one share, and the rest of the machine keeps three times as much for
everything else; MemAvailable counts reclaimable page cache too, so a smaller margin would let
one model push out the rest of a busy machine's cache. Where memory is plentiful the page cache
is what makes a re-read (an app restart) or a random read fast: it never reaches the mount.
Where it is short, filling it evicts everything else (see `dropbehind`). The same rule, for
two copies (`BLOCK_COPIES`), decides how the file's fetched blocks are written to the block
cache (`BlockFetcher.page_cache_writes`, set by the policy). Written through the page cache,
they are a second copy of the file in RAM beside its own pages: the disk takes the writes later
and merged instead of competing with the reads of a cold fetch (a local S3 server's among
them), and a random reader's next hit is in memory. So they are, while memory holds both copies
with the same margin; else they are written with O_DIRECT (see `cache.blockfile`), and a large
model is not cached twice in RAM; every fresh page of a second copy costs CPU, too
(docs/performance.md, read engine item 6).

How (`PageCacheAdvisor`): `posix_fadvise` on a descriptor of the file in the mount.
- `drop`: POSIX_FADV_DONTNEED drops the clean, unmapped pages of a range. It leaves pages a
  process has mapped alone, so an mmap reader loses nothing it uses. pyfuse3 has no ranged
  invalidation, and its whole-file one would also unmap.
- `fill`: POSIX_FADV_WILLNEED starts the kernel's readahead of a range: it sends the mount
  ordinary reads (1 MiB each with the raised readahead) for the pages it lacks and returns.
  Some kernels cap one call at the readahead window, so it is advised `FILL_STEP` at a time.
  Being ordinary reads, they keep every rule of the page cache (locked pages, invalidation on
  an open of a new version); pushing data in (FUSE notify_store) would race with those.
A worker thread opens the file through the mount, advises and closes it at once. The filesystem
recognises these opens by the requesting thread (`is_own`): they get a reader of the version
the file shows, with no readahead and no fetch of their own, and count as no user read.
"""

from __future__ import annotations

import logging
import os
import threading

import trio

log = logging.getLogger(__name__)

KEEP_FACTOR = 4  # a file keeps its page cache while this many times its size is available
BLOCK_COPIES = 2  # a file's own pages and its block files' pages: blocks written buffered
FILL_STEP = 1 << 20  # bytes per WILLNEED call: the mount's readahead window


def keeps_page_cache(available: int | None, size: int, *, copies: int = 1) -> bool:
    """Whether `copies` copies of a file of `size` bytes keep their page cache with `available`
    bytes of memory left to its reader (None: unknown, as for any local file the kernel
    decides)."""
    return available is None or available >= KEEP_FACTOR * copies * size


class PageCacheAdvisor:
    def __init__(self, mountpoint: str) -> None:
        self._mountpoint = mountpoint
        self._threads: set[int] = set()  # native ids of the threads that open through the mount
        self._limiter = trio.CapacityLimiter(1)
        self.dropped = 0  # bytes advised away, for statistics
        self.filled = 0  # bytes advised in

    def is_own(self, pid: int) -> bool:
        """Whether a FUSE request came from one of our threads (the kernel gives the thread id)."""
        return pid in self._threads

    async def drop(self, path: str, start: int, end: int) -> None:
        """Drop the cached pages of bytes [start, end) of `path` (relative to the mount root)."""
        if await self._advise(path, start, end, os.POSIX_FADV_DONTNEED):
            self.dropped += end - start

    async def fill(self, path: str, start: int, end: int) -> None:
        """Start reading bytes [start, end) of `path` into the page cache."""
        if await self._advise(path, start, end, os.POSIX_FADV_WILLNEED):
            self.filled += end - start

    async def _advise(self, path: str, start: int, end: int, advice: int) -> bool:
        # Abandoned on cancel: when the mount shuts down, nobody answers the open any more
        # until the unmount, which then fails it.
        return await trio.to_thread.run_sync(
            self._advise_now, path, start, end, advice, limiter=self._limiter,
            abandon_on_cancel=True,
        )  # fmt: skip

    def _advise_now(self, path: str, start: int, end: int, advice: int) -> bool:
        # Ours only while this thread opens: once it exits, its id may go to another process.
        thread = threading.get_native_id()
        self._threads.add(thread)
        try:
            fd = os.open(os.path.join(self._mountpoint, path), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # renamed or deleted meanwhile: its pages go with it
            log.debug("page cache advice: cannot open %s: %s", path, exc)
            return False
        finally:
            self._threads.discard(thread)
        try:
            step = FILL_STEP if advice == os.POSIX_FADV_WILLNEED else end - start
            for offset in range(start, end, step):
                os.posix_fadvise(fd, offset, min(step, end - offset), advice)
            return True
        except OSError as exc:
            log.debug("page cache advice on %s: %s", path, exc)
            return False
        finally:
            os.close(fd)
