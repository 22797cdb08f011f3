"""`DiskBlockCache`: the persistent, size-bounded, verified on-disk `DataCache`, shared by
every modelfs process that uses its root (several mounts, one cache).

The pieces: `cache.blockfile` is one block file (name, header, checksum, the O_DIRECT writer),
`cache.tree` the directory tree (paths, temp files, the startup scan), `cache.ledger` the
usage every process shares, `cache.pins` the pinned versions, `cache.index` what this process
knows of the tree, `cache.evict` making room; this module is the cache: reads and writes of
blocks, startup, statistics, and the order of the locks.

Invariants
- `get` returns only bytes whose header names the requested (key, etag, index) and whose
  checksum matches. Anything else (truncated, bit flip in header or payload, another block's
  file moved into place, EIO) is a logged miss: the file is removed and `corrupt` counts it.
  A file that vanished (another process evicted it, or it was deleted behind our back) is a
  plain miss: nothing bad was read, and the block is fetched again.
- A block file appears only complete and never changes once in place; one (key, etag, index)
  is stored once in the root, whichever process fetched it, and served to all of them.
- Size bound, for the root as a whole: a block is renamed into place only after least recently
  used blocks were unlinked until the ledger's bytes + its size <= max_bytes. So the tree holds
  at most max_bytes plus the temp files being written (one per writer thread). A block larger
  than max_bytes is not stored. Pinned blocks are never evicted: when only pinned blocks are
  left, the new block is not stored. Each process keeps the root within its own
  `--cache-max-size` when it stores a block (give every mount of a root the same one).
- Accounting counts file bytes (header + payload), not filesystem blocks.
- `put` never raises: write errors (ENOSPC, EROFS, ENOTDIR, ...) are counted in `write_errors`
  and logged at WARNING at most once per `_WRITE_ERROR_LOG_INTERVAL`, else DEBUG.

Index: each process keeps the blocks it knows, least recently used first (`cache.index`),
built at startup from the tree's scan (by file mtime; the scan stats files, never opens them);
a block another process stored joins it when first asked for, or when this one is about to
store it too. Only then is the disk asked (a stat), and only while the ledger counts block
files unseen here: not per miss on the trio thread, nor per write. Recency is shared through
file mtimes: a hit sets a file's mtime, at most once per `touch_interval`. Eviction and its
rescans: `cache.evict`. `diskcache` (SQLite) was rejected: a second source of truth to keep in
step with the files, and a hit's transaction on the hot read path. Times: the `clock`.

Locks, in the order they are taken:
1. the root's `lock` file, flock shared, held by each process for the cache's life (the first
   process, alone, holds it exclusively while it cleans up after a crash: `host.locks`);
2. the ledger (`Ledger.held`: a threading.Lock, then flock(LOCK_EX) on `<root>/ledger`), by
   whichever thread of whichever process renames a block file into place or unlinks one, and
   for pin changes: held for renames, unlinks, stats, dictionary work and the occasional
   rescan, never for a block's data I/O;
3. the index's lock (`BlockIndex.lock`), this process's index and counters: held only for
   dictionary work.
`put` runs on fetcher worker threads; `get`, `contains` and `statistics` on the trio thread
(which takes the ledger only to remove a corrupt block); `pin` and `unpin` on a worker thread
(they wait for the ledger); `evict_object` and `clear` on either; `give_back` on the trio
thread, when write-back finds the disk full (rare, and worth a wait for the ledger).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from modelfs.cache.blockfile import (
    HEADER_SIZE,
    BlockName,
    CorruptBlock,
    block_name,
    file_stamp,
    key_digest,
    unlink_quietly,
    verify,
)
from modelfs.cache.evict import Evictor
from modelfs.cache.index import BlockIndex, Entry
from modelfs.cache.ledger import Ledger, Usage
from modelfs.cache.pins import Pin, PinTable
from modelfs.cache.protocol import CacheStatistics
from modelfs.cache.tree import BlockTree, open_root, set_mtime
from modelfs.errors import ConfigError
from modelfs.host.locks import share
from modelfs.objects import ObjectId

__all__ = ["DEFAULT_TOUCH_INTERVAL", "HEADER_SIZE", "DiskBlockCache"]

logger = logging.getLogger(__name__)

# Restart order, and what other processes learn of our uses, only need to be coarse.
DEFAULT_TOUCH_INTERVAL = 60.0
# Often enough to see a persisting disk problem in the log, rare enough not to flood it when
# every block of a fast stream fails to be written.
_WRITE_ERROR_LOG_INTERVAL = 60.0


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
        self._index = BlockIndex()
        self._hits = self._misses = self._corrupt = self._write_errors = 0
        self._last_write_error_log = -_WRITE_ERROR_LOG_INTERVAL
        self._lock_fd, alone = open_root(self.root)
        self._ledger = Ledger(self.root)
        self._pins = PinTable(self.root, block_size)
        self._evictor = Evictor(self._tree, self._index, self._pins, max_bytes)
        try:
            self._start(alone)
        except BaseException:
            self.close()
            raise
        finally:
            if alone and self._lock_fd is not None:
                share(self._lock_fd)

    @property
    def direct_writes(self) -> bool:
        """Whether block files are written with O_DIRECT (not once the filesystem refused it)."""
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
        entry = self._find(name)
        if entry is None:
            with self._index.lock:
                self._misses += 1
            return None
        touch = self._index.use(name, entry, now, self._touch_interval)
        path = self._tree.block_path(name)
        try:
            data = self._read_range(path, name, entry, start, length)
        except FileNotFoundError:  # evicted by another process: fetched again
            self._forget(name, entry, corrupt=False)
            return None
        except (CorruptBlock, OSError) as exc:
            logger.warning(
                "block cache: dropping bad block %s (%s %d): %s", path, obj.key, index, exc
            )
            if self._forget(name, entry, corrupt=True):
                with self._ledger.held() as usage:
                    self._evictor.unlink(usage, name, entry)
            return None
        with self._index.lock:
            self._hits += 1
        if touch:
            set_mtime(path, now)
        return data

    def _read_range(
        self, path: str, name: BlockName, entry: Entry, start: int, length: int
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

    def put(self, obj: ObjectId, index: int, data: bytes, *, page_cache: bool = False) -> None:
        name = block_name(obj, index)
        size = HEADER_SIZE + len(data)
        if size > self.max_bytes:
            logger.debug("block cache: %d-byte block exceeds the whole cache", size)
            return
        now = self._clock()
        entry = self._index.get(name)
        if entry is not None:  # same version + index = same bytes: a use, not a write
            if self._index.use(name, entry, now, self._touch_interval):
                set_mtime(self._tree.block_path(name), now)
            return
        usage = self._ledger.peek()
        if self._unseen(name, usage) is not None:  # another process stored it
            return
        if usage.bytes + size > self.max_bytes:
            with self._ledger.held() as usage:  # room first, for a disk the size of the cache
                if not self._evictor.make_room(usage, size):
                    return
        try:
            tmp, stamp = self._tree.write_temp(name, data, now, page_cache=page_cache)
        except OSError as exc:
            self._note_write_error(obj, index, exc)
            return
        published = False
        try:
            with self._ledger.held() as usage:
                published = self._commit(usage, name, tmp, Entry(len(data), now, now, stamp))
        except OSError as exc:
            self._note_write_error(obj, index, exc)
        finally:
            if not published:
                unlink_quietly(tmp)

    def _commit(self, usage: Usage, name: BlockName, tmp: str, entry: Entry) -> bool:
        """Rename a written block into place, after making room (the ledger is held); whether
        it did. Not if another thread or process stored it meanwhile (see "Index" above)."""
        if self._index.get(name) is not None or self._unseen(name, usage) is not None:
            return False
        if name in self._index.refused and os.path.lexists(self._tree.block_path(name)):
            return False  # a bad file this process could not remove is in the way
        if not self._evictor.make_room(usage, entry.file_size):
            return False
        self._tree.publish(tmp, name)
        usage.bytes += entry.file_size
        usage.blocks += 1
        usage.links += 1
        self._index.stored(name, entry)
        return True

    def contains(self, obj: ObjectId, index: int) -> bool:
        return self._find(block_name(obj, index)) is not None

    def advise(self, obj: ObjectId, index: int) -> None:
        """Start reading the block into the page cache without waiting for it.

        Each block is its own file, so the kernel's readahead never crosses from one block to
        the next; a sequential reader that hints the blocks ahead keeps the disk busy with many
        reads at once instead of one at a time (see docs/performance.md)."""
        name = block_name(obj, index)
        if self._index.get(name) is None:
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
        """Bytes, blocks and pins of the whole root (every process's); the rest, this one's."""
        usage = self._ledger.peek()
        self._pins.refresh()
        with self._index.lock:
            return CacheStatistics(
                blocks=usage.blocks,
                bytes=usage.bytes,
                max_bytes=self.max_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictor.evictions,
                corrupt=self._corrupt + self._evictor.corrupt,
                write_errors=self._write_errors,
                pinned_bytes=self._pins.bytes,
                pinned_files=self._pins.count,
            )

    # -- pins ---------------------------------------------------------------------------------

    def pin(self, versions: Iterable[tuple[ObjectId, int]]) -> None:
        """Never evict the blocks of these (version, size)s. `PinsTooLarge`, and nothing
        pinned, if all pins would not fit in max_bytes. Blocking (the ledger): not on trio."""
        pins = [Pin(obj.key, obj.etag, size) for obj, size in versions]
        with self._ledger.held():
            self._pins.add(pins, self.max_bytes)

    def unpin(self, keys: Iterable[str] = (), prefixes: Iterable[str] = ()) -> list[Pin]:
        """Let these keys, and every key under these prefixes, be evicted again."""
        with self._ledger.held():
            return self._pins.remove(keys, prefixes)

    def pins(self) -> list[Pin]:
        self._pins.refresh()
        return self._pins.pins()

    # -- maintenance ------------------------------------------------------------------------

    def evict_object(self, key: str) -> int:
        """Drop every version of `key` this process knows (deleted or replaced): blocks dropped,
        not counted as `evictions`. A put in flight, or a version only others know, stays."""
        digest = key_digest(key)
        return self._drop_where(lambda name: name.key == digest)

    def give_back(self, nbytes: int) -> int:
        """Evict least recently used blocks of at least `nbytes` in all, now: the disk is full
        and write-back needs the room (`max_bytes` stays). Returns the bytes freed."""
        with self._ledger.held() as usage:
            before = usage.bytes
            self._evictor.fit(usage, max(0, before - nbytes))
            return before - usage.bytes

    def clear(self) -> None:
        """Drop every block this process knows (not counted as evictions)."""
        self._drop_where(lambda name: True)

    def _drop_where(self, matches: Callable[[BlockName], bool]) -> int:
        with self._ledger.held() as usage:
            dropped = self._index.pop_where(matches)
            for name, entry in dropped:
                self._evictor.unlink(usage, name, entry)
        return len(dropped)

    def close(self) -> None:
        """Let go of the root (other processes may go on using it). Idempotent."""
        self._ledger.close()
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

    # -- helpers ------------------------------------------------------------------------------

    def _find(self, name: BlockName) -> Entry | None:
        entry = self._index.get(name)
        return entry if entry is not None else self._unseen(name, self._ledger.peek())

    def _unseen(self, name: BlockName, usage: Usage) -> Entry | None:
        """A block another process stored; a stat only if `usage` counts files unseen here."""
        return None if usage.links == self._index.links_seen else self._adopt(name)

    def _adopt(self, name: BlockName) -> Entry | None:
        try:
            st = os.stat(self._tree.block_path(name))
        except OSError:
            return None
        return self._index.adopt(name, st)

    def _forget(self, name: BlockName, entry: Entry, *, corrupt: bool) -> bool:
        """Count a failed read of `entry` and drop it from the index; True if it was dropped,
        False if it was already evicted or replaced by a newer put, whose file must then stay."""
        with self._index.lock:
            self._misses += 1
            if corrupt:
                self._corrupt += 1
        return self._index.forget(name, entry)

    def _start(self, alone: bool) -> None:
        """Index the tree and evict down to max_bytes. A process alone first cleans up after a
        crash: stale trees, temp files, and the ledger, set from the scan."""
        if alone:
            self._tree.remove_stale_trees()
        self._tree.make_fanout_dirs()
        links = self._ledger.peek().links  # counted before the scan: one linked during it is unseen
        scan = self._tree.scan(temps=alone)
        self._corrupt += scan.corrupt
        with self._ledger.held() as usage:
            entries = self._index.rebuild(scan.blocks, links)
            if alone or not self._ledger.shared:
                usage.bytes = sum(entry.file_size for entry in entries)
                usage.blocks = len(entries)
            self._evictor.make_room(usage, 0)

    def _note_write_error(self, obj: ObjectId, index: int, exc: OSError) -> None:
        now = self._clock()
        with self._index.lock:
            self._write_errors += 1
            loud = now - self._last_write_error_log >= _WRITE_ERROR_LOG_INTERVAL
            if loud:
                self._last_write_error_log = now
        level = logging.WARNING if loud else logging.DEBUG
        message = "block cache: cannot store %s block %d under %s: %s"
        logger.log(level, message, obj.key, index, self.root, exc)
