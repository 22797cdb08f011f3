"""`DiskBlockCache`: the persistent, size-bounded, verified on-disk `DataCache`.

It owns one directory (`root`, one per remote) entirely; each block is one file. The pieces:
`cache.blockfile` is one block file (name, header, checksum, the O_DIRECT writer),
`cache.tree` is the directory tree (paths, atomic writes, removal, the startup scan), and this
module is the cache: the in-memory index, LRU eviction, the size bound, statistics and the lock.

Invariants
- `get` returns only bytes whose header names the requested (key, etag, index) and whose
  checksum matches. Anything else (truncated, bit flip in header or payload, another block's
  file moved into place, EIO) is a logged miss: the file is removed and `corrupt` counts it.
  A file that vanished (deleted behind our back, or a put raced an eviction of the same block)
  is a plain miss: nothing bad was read, so it does not count as corrupt. Bytes past the
  header's length are never read; a file grown behind our back is caught at the next startup,
  whose size-derived length then disagrees with the header.
- One owner per root: the constructor takes flock on `root/lock` (MountError if another process
  or instance holds it); `close()` releases it.
- A block file appears only complete (`BlockTree.write`: a temp file renamed into place).
- Size bound, enforced at insert time: `put` reserves its block's file size and evicts
  least-recently-used blocks until committed + reserved <= max_bytes, before writing. So the tree
  holds at most max_bytes plus, per concurrent writer, one block (the victims it has not yet
  unlinked). A block larger than max_bytes is not stored. Startup evicts down too.
- Accounting counts file bytes (header + payload), not filesystem blocks.
- `put` never raises: write errors (ENOSPC, EROFS, ENOTDIR, ...) are counted in `write_errors`
  and logged at WARNING at most once per `_WRITE_ERROR_LOG_INTERVAL`, else DEBUG.

Index: an in-memory OrderedDict (LRU first) rebuilt at startup from the tree's scan, ordered by
file mtime; the scan stats files but never opens them. `diskcache` (SQLite) was rejected: it
would be a second source of truth to keep consistent with the files, and costs a SQL
transaction per hit on the hot read path. Recency survives restarts because a hit sets the
file's mtime with `os.utime`, at most once per block per `touch_interval` seconds (a hot block is
hit over and over; restart order only needs to be coarse). All times come from the injected
`clock`.

Lock discipline: one lock, `_lock`, guards the index, byte counts and counters. It is held only
for dictionary work; file I/O (open/read/write/rename/unlink/utime) happens outside it. Helpers
that need it held are named `*_locked`. `put` runs on fetcher worker threads; `get`, `contains`
and `statistics` on the trio thread; `evict_object` and `clear` on either.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from modelfs.cache.blockfile import (
    HEADER_SIZE,
    BlockName,
    CorruptBlock,
    Stamp,
    block_name,
    file_stamp,
    key_digest,
    unlink_quietly,
    verify,
)
from modelfs.cache.protocol import CacheStatistics
from modelfs.cache.tree import BlockTree, open_root, set_mtime
from modelfs.errors import ConfigError
from modelfs.objects import ObjectId

__all__ = ["DEFAULT_TOUCH_INTERVAL", "HEADER_SIZE", "DiskBlockCache"]

logger = logging.getLogger(__name__)

# Restart order only needs to be coarse; one utime per block per minute is free.
DEFAULT_TOUCH_INTERVAL = 60.0
# Often enough to see a persisting disk problem in the log, rare enough not to flood it when
# every block of a fast stream fails to be written.
_WRITE_ERROR_LOG_INTERVAL = 60.0


@dataclass(slots=True)
class _Entry:
    payload: int  # payload bytes; the file is HEADER_SIZE longer
    touched: float  # when recency was last written to the file's mtime
    # the file's stamp when this process last verified its whole payload, or wrote it
    verified: Stamp | None = None

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.payload


class DiskBlockCache:
    """A `DataCache` of block files under `root`, LRU-bounded to `max_bytes`."""

    def __init__(
        self,
        root: Path,
        block_size: int,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.time,
        touch_interval: float = DEFAULT_TOUCH_INTERVAL,
    ) -> None:
        if block_size <= 0 or max_bytes < 0:
            raise ConfigError(f"invalid block cache sizes: block {block_size}, max {max_bytes}")
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.root = Path(root)
        self._clock = clock
        self._touch_interval = touch_interval
        self._tree = BlockTree(self.root, block_size)
        self._lock = threading.Lock()
        self._index: OrderedDict[BlockName, _Entry] = OrderedDict()
        self._bytes = 0  # committed: sum of file sizes in _index
        self._reserved = 0  # file sizes of blocks being written
        self._hits = self._misses = self._evictions = self._corrupt = self._write_errors = 0
        self._last_write_error_log = -_WRITE_ERROR_LOG_INTERVAL
        self._lock_fd = open_root(self.root)
        self._tree.remove_stale_trees()
        self._tree.make_fanout_dirs()
        self._load_index()
        with self._lock:
            victims = self._evict_locked()
        self._tree.remove(victims)

    @property
    def direct_writes(self) -> bool:
        """Whether block files are written with O_DIRECT (False once the filesystem refused it,
        or for good where the platform has no O_DIRECT)."""
        return self._tree.writer.direct

    # -- DataCache ---------------------------------------------------------------------------

    def get(self, obj: ObjectId, index: int) -> bytes | None:
        """The whole verified block, or None (a miss)."""
        return self.get_range(obj, index, 0, self.block_size)

    def get_range(self, obj: ObjectId, index: int, start: int, length: int) -> bytes | None:
        """Bytes [start, start + length) of a block, or None (a miss).

        The first read of a block in this process reads and verifies all of it, unless this
        process wrote it; later reads of the same unchanged file (same inode, size and mtime:
        any rewrite changes them) read only the range. A small random read then costs a pread
        of its own size, not the whole block and a checksum. Damage done to a verified file in
        place, without changing its mtime, is found at the next start of modelfs, when every
        block is verified again."""
        name = block_name(obj, index)
        now = self._clock()
        with self._lock:
            entry = self._index.get(name)
            if entry is None:
                self._misses += 1
                return None
            touch = self._use_locked(name, entry, now)
        path = self._tree.block_path(name)
        try:
            data = self._read_range(path, name, entry, start, length)
        except FileNotFoundError:
            self._forget(name, entry, corrupt=False)
            return None
        except (CorruptBlock, OSError) as exc:
            logger.warning(
                "block cache: dropping bad block %s (%s %d): %s", path, obj.key, index, exc
            )
            if self._forget(name, entry, corrupt=True):
                unlink_quietly(path)
            return None
        with self._lock:
            self._hits += 1
        if touch:
            set_mtime(path, now)
        return data

    def _read_range(
        self, path: str, name: BlockName, entry: _Entry, start: int, length: int
    ) -> bytes:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            stamp = file_stamp(os.fstat(fd))
            if entry.verified == stamp:
                return os.pread(fd, length, HEADER_SIZE + start)
            # Two reads, so the payload arrives as its own bytes object: one read of header +
            # payload and a slice was much slower (the slice copies the whole payload again).
            header = os.read(fd, HEADER_SIZE)
            payload = os.read(fd, entry.payload)
        finally:
            os.close(fd)
        verify(name, header, payload, entry.payload)
        entry.verified = stamp
        return payload if start == 0 and length >= len(payload) else payload[start : start + length]

    def put(self, obj: ObjectId, index: int, data: bytes) -> None:
        name = block_name(obj, index)
        size = HEADER_SIZE + len(data)
        if size > self.max_bytes:
            logger.debug("block cache: %d-byte block exceeds the whole cache", size)
            return
        now = self._clock()
        touch, victims = False, []
        with self._lock:
            entry = self._index.get(name)
            if entry is None:
                self._reserved += size
                victims = self._evict_locked()
            else:
                touch = self._use_locked(name, entry, now)
        if entry is None:
            self._store_reserved(obj, name, data, victims, now)
        elif touch:  # same version + index = same bytes: a use, not a write
            set_mtime(self._tree.block_path(name), now)

    def _store_reserved(
        self, obj: ObjectId, name: BlockName, data: bytes, victims: list[BlockName], now: float
    ) -> None:
        """Unlink `victims`, write the block, commit it and release its reservation."""
        stamp: Stamp | None = None
        try:
            self._tree.remove(victims)
            stamp = self._tree.write(name, data, now)
        except OSError as exc:
            self._note_write_error(obj, name.number, exc)
        finally:
            with self._lock:
                self._reserved -= HEADER_SIZE + len(data)
                if stamp is not None:
                    # Written from bytes in hand by this process: as good as verified.
                    self._insert_locked(name, _Entry(len(data), now, verified=stamp))
                victims = self._evict_locked()
            self._tree.remove(victims)

    def contains(self, obj: ObjectId, index: int) -> bool:
        name = block_name(obj, index)
        with self._lock:
            return name in self._index

    def advise(self, obj: ObjectId, index: int) -> None:
        """Start reading the block into the page cache without waiting for it.

        Each block is its own file, so the kernel's readahead never crosses from one block to
        the next; a sequential reader that hints the blocks ahead keeps the disk busy with many
        reads at once instead of one at a time (see docs/performance.md)."""
        name = block_name(obj, index)
        with self._lock:
            if name not in self._index:
                return
        try:
            fd = os.open(self._tree.block_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(
                blocks=len(self._index),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                corrupt=self._corrupt,
                write_errors=self._write_errors,
            )

    # -- maintenance ------------------------------------------------------------------------

    def evict_object(self, key: str) -> int:
        """Drop every cached version of `key` (it was deleted or replaced); returns blocks dropped.

        A scan of the index: this runs once per deleted/replaced object, not per read, so a
        second per-key index is not worth keeping in step. These drops are not `evictions`.
        A put of the key still in flight may land afterwards; its version is no longer asked
        for, so LRU evicts it in time.
        """
        digest = key_digest(key)
        with self._lock:
            names = [name for name in self._index if name.key == digest]
            for name in names:
                self._remove_locked(name)
        self._tree.remove(names)
        return len(names)

    def give_back(self, nbytes: int) -> int:
        """Evict least recently used blocks of at least `nbytes` in all, now: the disk is full
        and write-back needs the room (`max_bytes` stays). Returns the bytes freed."""
        with self._lock:
            before = self._bytes
            victims = self._evict_locked(max(0, self._bytes + self._reserved - nbytes))
            freed = before - self._bytes
        self._tree.remove(victims)
        return freed

    def clear(self) -> None:
        """Drop every block (not counted as evictions)."""
        with self._lock:
            names = list(self._index)
            for name in names:
                self._remove_locked(name)
        self._tree.remove(names)

    def close(self) -> None:
        """Release the root (another DiskBlockCache may then open it). Idempotent."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DiskBlockCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- index (callers hold _lock) ---------------------------------------------------------

    def _insert_locked(self, name: BlockName, entry: _Entry) -> None:
        old = self._index.pop(name, None)  # a concurrent put of the same block won the race
        if old is not None:
            self._bytes -= old.file_size
        self._index[name] = entry
        self._bytes += entry.file_size

    def _use_locked(self, name: BlockName, entry: _Entry, now: float) -> bool:
        """Mark `name` most recently used; True if its file's mtime is due for an update."""
        self._index.move_to_end(name)
        if now - entry.touched < self._touch_interval:
            return False
        entry.touched = now
        return True

    def _remove_locked(self, name: BlockName) -> None:
        self._bytes -= self._index.pop(name).file_size

    def _evict_locked(self, limit: int | None = None) -> list[BlockName]:
        """Pop LRU blocks until committed + reserved bytes fit `limit` (default: max_bytes);
        the caller unlinks them."""
        victims: list[BlockName] = []
        limit = self.max_bytes if limit is None else limit
        while self._index and self._bytes + self._reserved > limit:
            name, entry = self._index.popitem(last=False)
            self._bytes -= entry.file_size
            self._evictions += 1
            victims.append(name)
        return victims

    def _forget(self, name: BlockName, entry: _Entry, *, corrupt: bool) -> bool:
        """Count a failed read of `entry` and drop it from the index; True if it was dropped.

        False if it was already evicted or replaced by a newer put, whose file must then stay.
        """
        with self._lock:
            self._misses += 1
            if corrupt:
                self._corrupt += 1
            if self._index.get(name) is not entry:
                return False
            self._remove_locked(name)
            return True

    # -- files (no lock held) -----------------------------------------------------------------

    def _note_write_error(self, obj: ObjectId, index: int, exc: OSError) -> None:
        now = self._clock()
        with self._lock:
            self._write_errors += 1
            loud = now - self._last_write_error_log >= _WRITE_ERROR_LOG_INTERVAL
            if loud:
                self._last_write_error_log = now
        level = logging.WARNING if loud else logging.DEBUG
        logger.log(
            level,
            "block cache: cannot store %s block %d under %s: %s",
            obj.key,
            index,
            self.root,
            exc,
        )

    def _load_index(self) -> None:
        """Rebuild the LRU index from the tree, oldest mtime first (before any other thread can
        see this cache, so without the lock)."""
        scan = self._tree.scan()
        self._corrupt += scan.corrupt
        for found in scan.blocks:
            self._index[found.name] = _Entry(found.payload, found.mtime)
            self._bytes += HEADER_SIZE + found.payload
