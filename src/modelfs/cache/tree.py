"""The directory tree of the block cache: where block files live, how they are written and
removed, and what is found at startup.

    <root>/
    ├── lock                          flock(LOCK_EX) while a DiskBlockCache owns root
    └── v3-b<block_size>/             format 3, this block size (index i = bytes [i*B, (i+1)*B))
        ├── 00/ … ff/                 256 fan-out dirs: first two hex digits of the key hash
        │   ├── <keyhash>-<etaghash>-<index>.blk      one block: 4 KiB header + payload
        │   └── .tmp-<pid>-<n>                        a block being written; deleted at startup
        └── …

Directories are made 0700 and block files 0600: only the owner may read or plant a block.
keyhash, etaghash: the `BlockName` digests (`cache.blockfile`) as 32 hex digits. A different
block size gets a different tree (the same index names other bytes), and stale trees are
deleted at startup. 256 fan-out dirs keep each directory small.

Invariants
- A block's path is a function of its `BlockName` alone, and a file name carries everything the
  index needs (key hash, ETag hash, index; its size gives the payload length), so `scan` stats
  files but never opens them: a restart over a full cache stays quick.
- A block file appears only complete: `write` writes it to `.tmp-*` in its fan-out dir, then
  `os.replace`s it into place; the temp file is removed in `finally`. No fsync: after a power
  loss a torn block fails its checksum and is refetched; an fsync would make every put wait for
  the disk. Temp names are unique within the owning process (pid + a per-tree counter); the
  owner alone writes the tree (it holds `root/lock`), and `scan` removes leftovers of a crash.
- Recency survives restarts as file mtimes: `set_mtime` records a use and `scan` returns blocks
  oldest mtime first.

No locks of its own: the tree is used by one `DiskBlockCache`, which runs the startup methods
before any other thread can see it; `write`, `remove` and `block_path` are safe from any thread
(concurrent writes of one block each rename a complete file into place).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from modelfs.cache.blockfile import (
    FORMAT,
    HEADER_SIZE,
    BlockName,
    BlockWriter,
    Stamp,
    encode_header,
    unlink_quietly,
)
from modelfs.errors import ConfigError
from modelfs.host import private
from modelfs.host.locks import hold_lock

# The block cache logs under one name, its public module's, as it did before the split.
logger = logging.getLogger("modelfs.cache.disk")

_FANOUT_HEX = 2  # 256 dirs keep each small (100 GB of 1 MiB blocks = ~400 files per dir)
_TMP_PREFIX = ".tmp-"
_BLOCK_FILE_NAME = re.compile(r"([0-9a-f]{32})-([0-9a-f]{32})-(\d+)\.blk")
_TREE_NAME = re.compile(r"v\d+-b\d+")


class FoundBlock(NamedTuple):
    mtime: float  # when the block was last used, as far as the file knows
    name: BlockName
    payload: int  # payload bytes: the file size less HEADER_SIZE


@dataclass(slots=True)
class Scan:
    """What `BlockTree.scan` found: the blocks, least recently used first, and how many files
    were too short to hold even a header (removed)."""

    blocks: list[FoundBlock] = field(default_factory=list)
    corrupt: int = 0


def open_root(root: Path) -> int | None:
    """Create root and take its lock: the lock's fd, or None if the root cannot be locked (it is
    then used unlocked). ConfigError if root is unusable, MountError if already owned."""
    try:
        private.make_dirs(root)
    except OSError as exc:
        raise ConfigError(f"cannot create cache directory {root}: {exc}") from exc
    if not root.is_dir():
        raise ConfigError(f"cache directory {root} is not a directory")
    try:
        return hold_lock(root, "block cache")
    except OSError as exc:  # e.g. a read-only cache: serve it without the lock
        logger.warning("block cache: cannot lock %s (%s); using it unlocked", root, exc)
        return None


def set_mtime(path: str, when: float) -> None:
    """Record recency for the next startup; best effort (the file may just have been evicted)."""
    with contextlib.suppress(OSError):
        os.utime(path, (when, when))


class BlockTree:
    """The block files of one format and block size under a cache root."""

    def __init__(self, root: Path, block_size: int) -> None:
        self.root = root
        self.path = root / f"v{FORMAT}-b{block_size}"
        self.writer = BlockWriter(block_size)
        self._temp_numbers = itertools.count()  # next() is atomic under the GIL

    def block_path(self, name: BlockName) -> str:
        key_hex = name.key.hex()
        return f"{self.path}/{key_hex[:_FANOUT_HEX]}/{key_hex}-{name.etag.hex()}-{name.number}.blk"

    def write(self, name: BlockName, payload: bytes, mtime: float) -> Stamp:
        """Write block `name`'s file, complete or not at all; its stamp (a rename keeps inode,
        size and mtime). OSError if it cannot be written."""
        path = self.block_path(name)
        tmp = self._temp_path(path)
        renamed = False
        try:
            stamp = self.writer.write(tmp, encode_header(name, payload), payload, mtime)
            os.replace(tmp, path)
            renamed = True
            return stamp
        finally:
            if not renamed and os.path.lexists(tmp):
                unlink_quietly(tmp)

    def remove(self, names: Iterable[BlockName]) -> None:
        for name in names:
            unlink_quietly(self.block_path(name))

    def _temp_path(self, block_path: str) -> str:
        # Unique within this process, which alone owns the tree (its lock); leftovers of a
        # crash are removed at startup. No random name: a syscall less per block.
        directory = os.path.dirname(block_path)
        return f"{directory}/{_TMP_PREFIX}{os.getpid()}-{next(self._temp_numbers)}"

    # -- startup ------------------------------------------------------------------------------

    def remove_stale_trees(self) -> None:
        """Delete block trees of another format or block size: their indexes mean other bytes."""
        with os.scandir(self.root) as entries:
            stale = [
                e.path for e in entries if _TREE_NAME.fullmatch(e.name) and e.name != self.path.name
            ]
        for path in stale:
            logger.info("block cache: removing %s (other block size or format)", path)
            shutil.rmtree(path, ignore_errors=True)

    def make_fanout_dirs(self) -> None:
        try:
            for fanout in _fanout_names():
                private.make_dirs(self.path / fanout)
        except OSError as exc:  # read-only or full: serve what is there, puts will count errors
            logger.warning("block cache: cannot create %s: %s", self.path, exc)

    def scan(self) -> Scan:
        """Every block file, oldest mtime first; temp, junk and too-short files are removed."""
        scan = Scan()
        interned: dict[str, bytes] = {}  # one digest object per object version, not per block

        def intern(digest_hex: str) -> bytes:
            digest = interned.get(digest_hex)
            if digest is None:
                digest = interned[digest_hex] = bytes.fromhex(digest_hex)
            return digest

        for entry in self._files():
            match = _BLOCK_FILE_NAME.fullmatch(entry.name)
            if match is None:
                if not entry.name.startswith(_TMP_PREFIX):
                    logger.info("block cache: removing unknown file %s", entry.path)
                unlink_quietly(entry.path)
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.st_size < HEADER_SIZE:
                scan.corrupt += 1
                unlink_quietly(entry.path)
                continue
            key_hex, etag_hex, index = match.groups()
            name = BlockName(intern(key_hex), intern(etag_hex), int(index))
            scan.blocks.append(FoundBlock(stat.st_mtime, name, stat.st_size - HEADER_SIZE))
        scan.blocks.sort()
        return scan

    def _files(self) -> Iterator[os.DirEntry[str]]:
        for fanout in _fanout_names():
            try:
                with os.scandir(self.path / fanout) as entries:
                    yield from (e for e in entries if e.is_file(follow_symlinks=False))
            except OSError:  # missing or unreadable fan-out dir: nothing cached there
                continue


def _fanout_names() -> Iterator[str]:
    return (f"{i:0{_FANOUT_HEX}x}" for i in range(16**_FANOUT_HEX))
