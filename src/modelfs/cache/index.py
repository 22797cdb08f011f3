"""`BlockIndex`: what one process knows of the block files under a shared cache root.

An OrderedDict of `BlockName -> Entry`, least recently used first: the blocks found by the
startup scan, the ones this process stored, and the ones other processes stored that this one
found on disk when it asked for them (`adopt`). It may also hold blocks another process has
evicted since: a read of one finds its file gone, and the entry is dropped (`forget`).

Recency: `used` is when this process last used a block (or the file's mtime when found); the
file's mtime is what other processes see, written at most once per touch interval (`use`).

Lock: `lock` guards the dictionary, `links_seen`, `refused` and the cache's counters. It is held
only for dictionary work, never across I/O or while waiting for another lock; the cache's
ledger, when needed, is taken before it (see `cache.disk`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from modelfs.cache.blockfile import HEADER_SIZE, BlockName, Stamp
from modelfs.cache.tree import FoundBlock


@dataclass(slots=True)
class Entry:
    payload: int  # payload bytes; the file is HEADER_SIZE longer
    touched: float  # when recency was last written to the file's mtime (or the mtime found)
    used: float  # when this process last used it, as far as it knows
    # the file's stamp when this process last verified its whole payload, or wrote it
    verified: Stamp | None = None

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.payload

    @classmethod
    def found(cls, block: FoundBlock) -> Entry:
        return cls(block.payload, block.mtime, block.mtime)


class BlockIndex:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._entries: OrderedDict[BlockName, Entry] = OrderedDict()
        self.links_seen = 0  # the ledger's `links` as far as this index knows them
        self.refused: set[BlockName] = set()  # bad files that could not be removed

    def __len__(self) -> int:
        with self.lock:
            return len(self._entries)

    def get(self, name: BlockName) -> Entry | None:
        with self.lock:
            return self._entries.get(name)

    def adopt(self, name: BlockName, st: os.stat_result) -> Entry | None:
        """A block file found on disk (another process stored it): its entry, now indexed."""
        if name in self.refused or st.st_size < HEADER_SIZE:
            return None  # a file that is not a block: the next scan alone removes it
        found = Entry(st.st_size - HEADER_SIZE, st.st_mtime, st.st_mtime)
        with self.lock:
            entry = self._entries.setdefault(name, found)
            if entry is found:
                self.links_seen += 1
        return entry

    def stored(self, name: BlockName, entry: Entry) -> None:
        """This process put `name`'s file into place (a reader may have adopted it already)."""
        with self.lock:
            self.links_seen += 1
            old = self._entries.pop(name, None)
            self._entries[name] = entry if old is None else old

    def use(self, name: BlockName, entry: Entry, now: float, touch_interval: float) -> bool:
        """Mark `name` most recently used; True if its file's mtime is due for an update."""
        with self.lock:
            entry.used = now
            if self._entries.get(name) is entry:
                self._entries.move_to_end(name)
            if now - entry.touched < touch_interval:
                return False
            entry.touched = now
            return True

    def forget(self, name: BlockName, entry: Entry) -> bool:
        """Drop `entry`; False if `name` was already dropped or now names another entry."""
        with self.lock:
            if self._entries.get(name) is not entry:
                return False
            del self._entries[name]
            return True

    def pop_where(self, matches: Callable[[BlockName], bool]) -> list[tuple[BlockName, Entry]]:
        with self.lock:
            popped = [(name, entry) for name, entry in self._entries.items() if matches(name)]
            for name, _ in popped:
                del self._entries[name]
        return popped

    def oldest(self, pinned: Callable[[BlockName], bool]) -> tuple[BlockName, Entry] | None:
        """The least recently used entry that is not pinned (pinned ones move to the end:
        they are never victims, so their order does not matter); None if every one is."""
        with self.lock:
            for _ in range(len(self._entries)):
                name, entry = next(iter(self._entries.items()))
                if not pinned(name):
                    return name, entry
                self._entries.move_to_end(name)
        return None

    def used_elsewhere(self, name: BlockName, entry: Entry, mtime: float) -> None:
        """Another process used `name` at `mtime`, after this one: it is recent again."""
        with self.lock:
            entry.used = mtime
            if self._entries.get(name) is entry:
                self._entries.move_to_end(name)

    def rebuild(self, blocks: Iterable[FoundBlock], links: int) -> list[Entry]:
        """Replace the index with the blocks a scan found, keeping what this process knew of
        each; ordered by the later of our last use and the file's mtime. The entries."""
        merged: list[tuple[float, BlockName, Entry]] = []
        with self.lock:
            for found in blocks:
                entry = self._entries.get(found.name)
                if entry is None or entry.payload != found.payload:
                    entry = Entry.found(found)
                entry.used = max(entry.used, found.mtime)
                merged.append((entry.used, found.name, entry))
            merged.sort(key=lambda item: item[0])
            self._entries = OrderedDict((name, entry) for _, name, entry in merged)
            self.links_seen = links
        return [entry for _, _, entry in merged]
