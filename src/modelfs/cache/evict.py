"""Eviction from a shared cache root: room for a new block, for whichever process needs it.

Every method runs while its caller holds the ledger (`cache.ledger`), which serializes it with
every rename and unlink of a block file by any process, and updates the ledger's `Usage` as it
unlinks. The victim is the least recently used block of this process's index that is not
pinned (`cache.pins`). Before unlinking it, a stat: a file whose mtime is newer than this
process's last use of it was used by another process since, and gets a second chance (it moves
to the recent end). A file already gone was evicted by another process: it leaves the index,
and the ledger already counted it.

The index only knows what this process has seen. When the ledger says that other processes
stored more than an eighth of the cache since this one last looked, or the index has nothing
left to evict, the tree is scanned again (`rescan`): the index then holds every block, ordered
by the later of its use here and its mtime, and the ledger is set to what is on disk. A cache
that is all pinned is remembered as such until the ledger or the pins change, so a stream of
blocks that cannot be stored costs no scan each.
"""

from __future__ import annotations

import logging
import os

from modelfs.cache.blockfile import BlockName
from modelfs.cache.index import BlockIndex, Entry
from modelfs.cache.ledger import Usage
from modelfs.cache.pins import PinTable
from modelfs.cache.tree import BlockTree

logger = logging.getLogger("modelfs.cache.disk")

_RESCAN_FRACTION = 8  # rescan once others stored more than this share of the cache since
_MTIME_SLACK = 1e-3  # float round trips of mtimes: not a use by another process


class Evictor:
    def __init__(self, tree: BlockTree, index: BlockIndex, pins: PinTable, max_bytes: int) -> None:
        self._tree = tree
        self._index = index
        self._pins = pins
        self.max_bytes = max_bytes
        self.evictions = 0  # under the index's lock
        self.corrupt = 0  # too-short files rescans found (under the index's lock)
        self._no_room: tuple[int, int, int] | None = None  # (bytes, links, pinned) then

    def make_room(self, usage: Usage, size: int) -> bool:
        """Evict until the root's bytes + `size` fit max_bytes; False if what is left is pinned.
        Others' blocks count as well: they came from processes this one may know nothing of."""
        return self.fit(usage, self.max_bytes - size)

    def fit(self, usage: Usage, limit: int) -> bool:
        """Evict until the root's bytes are at most `limit`; False if what is left is pinned."""
        if usage.bytes <= limit:
            return True
        self._pins.refresh()
        if (usage.bytes, usage.links, self._pins.bytes) == self._no_room:
            return False
        unseen = (usage.links - self._index.links_seen) * self._tree.block_size
        if unseen > self.max_bytes // _RESCAN_FRACTION:
            self.rescan(usage)
        rescanned = False
        while usage.bytes > limit:
            if self._evict_one(usage):
                continue
            if rescanned:
                self._no_room = (usage.bytes, usage.links, self._pins.bytes)
                return False
            self.rescan(usage)
            rescanned = True
        return True

    def _evict_one(self, usage: Usage) -> bool:
        """Unlink the least recently used block that is not pinned; False if none is left."""
        for _ in range(len(self._index)):
            oldest = self._index.oldest(self._pins.is_pinned)
            if oldest is None:
                return False
            name, entry = oldest
            try:
                mtime = os.stat(self._tree.block_path(name)).st_mtime
            except OSError:
                mtime = entry.used  # gone: the unlink below tells
            if mtime > entry.used + _MTIME_SLACK:
                self._index.used_elsewhere(name, entry, mtime)
                continue
            if not self._index.forget(name, entry):
                continue
            if self.unlink(usage, name, entry):
                with self._index.lock:
                    self.evictions += 1
                return True
        return False

    def unlink(self, usage: Usage, name: BlockName, entry: Entry) -> bool:
        """Remove a block's file and take it off the ledger; False if it was not there."""
        try:
            removed = self._tree.unlink(name)
        except OSError as exc:
            logger.warning("block cache: cannot remove %s: %s", self._tree.block_path(name), exc)
            with self._index.lock:
                self._index.refused.add(name)
            return False
        if removed:
            usage.bytes -= entry.file_size
            usage.blocks -= 1
        return removed

    def rescan(self, usage: Usage) -> None:
        """Index every block in the tree and set the ledger to what is there."""
        scan = self._tree.scan(temps=False)
        entries = self._index.rebuild(scan.blocks, usage.links)
        with self._index.lock:
            self.corrupt += scan.corrupt
        usage.bytes = sum(entry.file_size for entry in entries)
        usage.blocks = len(entries)
