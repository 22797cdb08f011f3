"""The ledger of a block cache root: what every process sharing the root has stored in it.

    <root>/ledger    40 bytes: magic b"MFSL", version u32, bytes u64, blocks u64, links u64

`bytes` and `blocks` are the size and count of the block files in the tree, whoever wrote
them; `links` counts every block file ever put into place, so a process can tell how much
others added since it last looked (`DiskBlockCache` rescans the tree when that is a lot).

Invariant: a block file is put into place (renamed from its temp file) or unlinked only while
its process holds the ledger (`held`), and the ledger is updated in the same hold. So, among
live processes, `bytes` is exactly the tree's size. A process killed between the rename (or
unlink) and the ledger's write leaves it off by one block; a process that uses the root alone
at startup, or one that rescans the tree under the ledger, sets it right again.

Locks: `held` takes a threading.Lock (threads of this process), then flock(LOCK_EX) on the
ledger file (other processes), in that order, and releases both when the block ends. Hold it
only for renames, unlinks, stats and dictionary work, never for a block's data I/O.

Where the ledger file cannot be opened for writing (a read-only cache), the ledger lives in
this process's memory: nobody else can write that tree either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from modelfs.host import private
from modelfs.host.locks import exclusive

logger = logging.getLogger("modelfs.cache.disk")

LEDGER_NAME = "ledger"
_MAGIC = b"MFSL"
_VERSION = 1
_LAYOUT = struct.Struct("<4sIQQQ")


@dataclass(slots=True)
class Usage:
    bytes: int = 0  # file bytes (header + payload) of every block file in the tree
    blocks: int = 0
    links: int = 0  # block files ever put into place (only grows)


class Ledger:
    def __init__(self, root: Path) -> None:
        self._mutex = threading.Lock()
        self._memory = Usage()
        self.fd: int | None = None
        try:
            self.fd = private.open_owned(root / LEDGER_NAME, os.O_RDWR)
        except OSError as exc:
            logger.info("block cache: no shared ledger in %s (%s): this process alone", root, exc)

    @property
    def shared(self) -> bool:
        return self.fd is not None

    @contextlib.contextmanager
    def held(self) -> Iterator[Usage]:
        """The usage, to read and change while holding the ledger; written back at the end."""
        with self._mutex:
            if self.fd is None:
                yield self._memory
                return
            with exclusive(self.fd):
                usage = self._read(self.fd)
                before = replace(usage)
                try:
                    yield usage
                finally:
                    if usage != before:
                        self._write(self.fd, usage)

    def peek(self) -> Usage:
        """The usage now, read without the lock (for figures and a quick 'is there room')."""
        return replace(self._memory) if self.fd is None else self._read(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def _read(fd: int) -> Usage:
        data = os.pread(fd, _LAYOUT.size, 0)
        if len(data) < _LAYOUT.size:
            return Usage()  # new: the first user alone sets it from a scan
        magic, version, nbytes, blocks, links = _LAYOUT.unpack(data)
        if magic != _MAGIC or version != _VERSION:
            return Usage()
        return Usage(nbytes, blocks, links)

    @staticmethod
    def _write(fd: int, usage: Usage) -> None:
        data = _LAYOUT.pack(
            _MAGIC, _VERSION, max(0, usage.bytes), max(0, usage.blocks), usage.links
        )
        try:
            os.pwrite(fd, data, 0)
        except OSError as exc:  # a full disk cannot grow it; it is set right by the next scan
            logger.warning("block cache: cannot update the ledger: %s", exc)
