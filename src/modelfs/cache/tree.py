"""The directory tree of the block cache: where block files live, how they are written and
removed, and what is found at startup.

    <root>/
    ├── lock                          flock: shared by every process using root (`host.locks`)
    ├── ledger                        bytes and blocks of the tree, for all (`cache.ledger`)
    ├── pins.json                     pinned object versions (`cache.pins`)
    └── v3-b<block_size>/             format 3, this block size (index i = bytes [i*B, (i+1)*B))
        ├── 00/ … ff/                 256 fan-out dirs: first two hex digits of the key hash
        │   ├── <keyhash>-<etaghash>-<index>.blk      one block: 4 KiB header + payload
        │   └── .tmp-<pid>-<tag>-<n>                  a block being written
        └── …

Directories are made 0700 and block files 0600: only the owner may read or plant a block; a
block file another user owns (planted while the directory was open to others) is removed at
startup, never served.
keyhash, etaghash: the `BlockName` digests (`cache.blockfile`) as 32 hex digits. A different
block size gets a different tree (the same index names other bytes), and stale trees are
deleted by a process that uses the root alone. 256 fan-out dirs keep each directory small.

Invariants
- A block's path is a function of its `BlockName` alone, and a file name carries everything the
  index needs (key hash, ETag hash, index; its size gives the payload length), so `scan` stats
  files but never opens them: a restart over a full cache stays quick.
- A block file appears only complete, and is never changed once in place: `write_temp` writes
  it to a temp file in its fan-out dir, `publish` renames it into place (the caller holds the
  ledger). A reader that opened a block keeps reading it after another process unlinked it.
  No fsync: after a power loss a torn block fails its checksum and is refetched; an fsync
  would make every put wait for the disk. Temp names are unique per process (pid, a random
  tag, a counter); a temp file is removed by its writer, or, after a crash, by the next
  process that uses the root alone (`scan(temps=True)`): another process's temp file may be
  in use.
- Recency survives restarts, and is seen by other processes, as file mtimes: `set_mtime`
  records a use and `scan` returns blocks oldest mtime first.

No locks of its own: startup methods run before any other thread sees the tree; `write_temp`,
`publish`, `unlink` and `block_path` are safe from any thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
from collections.abc import Iterator
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
from modelfs.host.locks import join_lock

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


def open_root(root: Path) -> tuple[int | None, bool]:
    """Create root and join its lock: (the lock's fd, alone). The fd is None if the root cannot
    be locked (it is then used unlocked, and not cleaned up); `alone`: no other process uses
    root, and this one holds the lock exclusively until it `share`s it. ConfigError if root is
    unusable, MountError if a process keeps it to itself."""
    try:
        private.make_dirs(root)
    except OSError as exc:
        raise ConfigError(f"cannot create cache directory {root}: {exc}") from exc
    if not root.is_dir():
        raise ConfigError(f"cache directory {root} is not a directory")
    try:
        return join_lock(root, "block cache")
    except OSError as exc:  # e.g. a read-only cache: serve it without the lock
        logger.warning("block cache: cannot lock %s (%s); using it unlocked", root, exc)
        return None, False


def set_mtime(path: str, when: float) -> None:
    """Record recency for the next startup; best effort (the file may just have been evicted)."""
    with contextlib.suppress(OSError):
        os.utime(path, (when, when))


class BlockTree:
    """The block files of one format and block size under a cache root."""

    def __init__(self, root: Path, block_size: int) -> None:
        self.root = root
        self.block_size = block_size
        self.path = root / f"v{FORMAT}-b{block_size}"
        self.writer = BlockWriter(block_size)
        self._temp_numbers = itertools.count()  # next() is atomic under the GIL
        # Processes in other pid namespaces (containers sharing a cache dir) may share a pid.
        self._temp_tag = f"{os.getpid()}-{os.urandom(4).hex()}"

    def block_path(self, name: BlockName) -> str:
        key_hex = name.key.hex()
        return f"{self.path}/{key_hex[:_FANOUT_HEX]}/{key_hex}-{name.etag.hex()}-{name.number}.blk"

    def write_temp(
        self, name: BlockName, payload: bytes, mtime: float, *, page_cache: bool = False
    ) -> tuple[str, Stamp]:
        """Write block `name` to a new temp file beside its place: (its path, its stamp; a
        rename keeps inode, size and mtime). OSError, and no temp file left, if it cannot.
        `page_cache`: see `BlockWriter.write`."""
        tmp = self._temp_path(self.block_path(name))
        header = encode_header(name, payload)
        try:
            return tmp, self.writer.write(tmp, header, payload, mtime, page_cache=page_cache)
        except BaseException:
            if os.path.lexists(tmp):
                unlink_quietly(tmp)
            raise

    def publish(self, tmp: str, name: BlockName) -> None:
        """Rename a temp file from `write_temp` into block `name`'s place (OSError if not)."""
        os.replace(tmp, self.block_path(name))

    def unlink(self, name: BlockName) -> bool:
        """Remove block `name`'s file: True if removed, False if it was not there (OSError if
        it cannot be removed)."""
        try:
            os.unlink(self.block_path(name))
        except FileNotFoundError:
            return False
        return True

    def _temp_path(self, block_path: str) -> str:
        # Unique among live processes (pid, a random tag per process, a counter); leftovers of
        # a crash are removed by the next process alone. No random name per block: a syscall.
        directory = os.path.dirname(block_path)
        return f"{directory}/{_TMP_PREFIX}{self._temp_tag}-{next(self._temp_numbers)}"

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

    def scan(self, *, temps: bool) -> Scan:
        """Every block file, oldest mtime first; junk and too-short files and files of another
        owner (a block planted while the dir was not ours alone) are removed, and temp files too
        if `temps` (no other process is using the tree)."""
        scan = Scan()
        euid = os.geteuid()
        interned: dict[str, bytes] = {}  # one digest object per object version, not per block

        def intern(digest_hex: str) -> bytes:
            digest = interned.get(digest_hex)
            if digest is None:
                digest = interned[digest_hex] = bytes.fromhex(digest_hex)
            return digest

        for entry in self._files():
            match = _BLOCK_FILE_NAME.fullmatch(entry.name)
            if match is None:
                if entry.name.startswith(_TMP_PREFIX):
                    if temps:
                        unlink_quietly(entry.path)
                    continue
                logger.info("block cache: removing unknown file %s", entry.path)
                unlink_quietly(entry.path)
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.st_uid != euid:  # not written by us: planted before the dir was ours alone
                logger.warning("block cache: removing %s, owned by uid %d", entry.path, stat.st_uid)
                scan.corrupt += 1
                unlink_quietly(entry.path)
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
