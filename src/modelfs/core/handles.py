"""The filesystem core's open handles: files, directories, and the advice gate.

A file handle reads one object version (`reader`), or staged content (`staged`). The page cache
advisor's own opens (`read.pagecache`) get handles marked `internal`: the kernel's readahead
of a fill reads through them.

The advice gate. A fill brings the version the kernel's page cache holds into it through an
internal handle, in ordinary reads; those are safe against the invalidation a later open makes
only if they started before it. So an open that changes what the page cache of a file must hold
(a new version, a write, a truncate) first waits (`settled`) until no internal handle of that
file is open; internal handles stay open only while their readahead is in flight, and no new
one reads a file whose version changed (`Filesystem._open_internal`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import trio

from modelfs.core.attributes import DirEntry
from modelfs.core.inodes import Node
from modelfs.read.reader import ObjectReader
from modelfs.write.files import WriteHandle

INTERNAL_FH = 0  # the page cache advisor's open of a file it cannot read; real ones start at 1


@dataclass
class FileHandle:
    """An open file: a reader of one object version, or a handle on staged content."""

    fh: int
    node: Node
    reader: ObjectReader | None = None
    staged: WriteHandle | None = None
    internal: bool = False  # the page cache advisor's (counted as no user read)


@dataclass
class DirHandle:
    fh: int
    entries: list[DirEntry] = field(default_factory=list)


class Handles:
    def __init__(self) -> None:
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_fh = INTERNAL_FH + 1
        self._internal: collections.Counter[int] = collections.Counter()  # by inode
        self._closed: dict[int, trio.Event] = {}  # set when an inode's last internal one closes

    def new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def add(self, handle: FileHandle) -> int:
        self.files[handle.fh] = handle
        if handle.internal:
            self._internal[handle.node.ino] += 1
        return handle.fh

    def pop(self, fh: int) -> FileHandle | None:
        handle = self.files.pop(fh, None)
        if handle is not None and handle.internal:
            ino = handle.node.ino
            self._internal[ino] -= 1
            if self._internal[ino] <= 0:
                del self._internal[ino]
                closed = self._closed.pop(ino, None)
                if closed is not None:
                    closed.set()
        return handle

    async def settled(self, node: Node) -> None:
        """Wait until no internal handle of `node` is open (see the module docstring)."""
        while self._internal[node.ino] > 0:
            closed = self._closed.setdefault(node.ino, trio.Event())
            await closed.wait()
