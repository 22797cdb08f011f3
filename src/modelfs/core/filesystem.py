"""The filesystem core: FUSE-shaped async methods over the bucket, with no pyfuse3 in sight.

Owns the inode table, the open handles and the directory operations; everything else it
delegates, and holds no policy:
- names and attributes come from `Namespace` listings (TTL-cached, negative too), overridden
  by what the writer has staged;
- a file opened for reading gets an `ObjectReader` from the `ReadPolicy` (which decides what is
  fetched ahead), and `read` is one call into it; the handle is pinned to the object version
  seen at open, so every byte read through it is of that version, never a mix;
- a file opened for writing, and every change (create, truncate, unlink, rename, mkdir, rmdir),
  goes to the `Writer`; a read-only mount's writer refuses them with EROFS.
Returns plain values (`Attr`, bytes) and raises `ModelfsError`s; the FUSE adapter
(`daemon.fuse_ops`) only translates. Each `read` is timed into `read_latency`.

The kernel keeps its page cache across opens while the ETag is unchanged (keep_cache).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from modelfs.core import paths
from modelfs.core.attributes import Attr, DirEntry, FsOptions, attributes
from modelfs.core.inodes import ROOT_INODE, InodeTable, Node
from modelfs.core.latency import LatencyHistogram
from modelfs.core.namespace import Namespace
from modelfs.core.overlay import Overlay
from modelfs.errors import (
    AlreadyExists,
    CrossDevice,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    ReadOnly,
)
from modelfs.objects import ObjectInfo
from modelfs.read.policy import ReadPolicy
from modelfs.read.reader import ObjectReader
from modelfs.write.files import StagedInfo, WriteHandle
from modelfs.write.protocol import Writer

INTERNAL_FH = 0  # the handle of drop-behind's own opens; `_new_fh` starts at 1
_RENAME_NOREPLACE = 1  # renameat2 flags, as the kernel passes them
_RENAME_EXCHANGE = 2
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC


@dataclass
class FileHandle:
    """An open file: a reader of one object version, or a handle on staged content."""

    fh: int
    node: Node
    reader: ObjectReader | None = None
    staged: WriteHandle | None = None


@dataclass
class DirHandle:
    fh: int
    entries: list[DirEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FsStatistics:
    inodes: int
    open_files: int
    reads: int
    bytes_read: int


class Filesystem:
    def __init__(
        self, namespace: Namespace, reads: ReadPolicy, writer: Writer, options: FsOptions
    ) -> None:
        self.namespace = namespace
        self.reads = reads
        self.writer = writer
        self.options = options
        self.view = Overlay(namespace, writer)
        self.inodes = InodeTable()
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._reads = 0
        self._bytes_read = 0
        self.read_latency = LatencyHistogram()
        self._mount_time_ns = time.time_ns()

    # -- attributes ----------------------------------------------------------------------------

    def attr_of(self, node: Node) -> Attr:
        return attributes(node, self.options, self.writer.read_only, self._mount_time_ns)

    async def lookup(self, parent_ino: int, name: str) -> Attr:
        parent = self.inodes.get(parent_ino)
        if name == ".":
            node = parent
        elif name == "..":
            node = self.inodes.by_path(paths.parent_of(parent.path)) or self.inodes.get(ROOT_INODE)
        else:
            node = await self._resolve(parent, name)
        node.lookups += 1
        return self.attr_of(node)

    async def _resolve(self, parent: Node, name: str) -> Node:
        if not parent.is_dir:
            raise NotADirectory(parent.path)
        path = paths.join(parent.path, name)
        staged = self.view.staged(path)
        if staged is not None:
            return self.inodes.upsert(path, False, staged)
        listing = await self.namespace.listing(parent.path)
        if name in listing.dirs or self.view.staged_dir(path):
            return self.inodes.upsert(path, True, None)
        info = listing.files.get(name)
        if info is None:
            raise NotFound(path)
        return self.inodes.upsert(path, False, info)

    async def getattr(self, ino: int) -> Attr:
        node = self.inodes.get(ino)
        if node.ino != ROOT_INODE:  # the root from memory: health probes stat it, store or not
            await self._refresh(node)
        return self.attr_of(node)

    async def _refresh(self, node: Node) -> None:
        """Bring `node.info` up to date with the writer, or the (TTL-cached) listing of its
        directory."""
        staged = None if node.is_dir else self.view.staged(node.path)
        if staged is not None:
            node.info = staged
            return
        listing = await self.namespace.listing(paths.parent_of(node.path))
        name = paths.name_of(node.path)
        if node.is_dir:
            if name not in listing.dirs and not self.view.staged_dir(node.path):
                raise NotFound(node.path)
            return
        info = listing.files.get(name)
        if info is None:
            raise NotFound(node.path)
        node.info = info

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    def note_lookup(self, ino: int) -> None:
        """The kernel accepted an entry from readdir (readdirplus counts as a lookup)."""
        node = self.inodes.get(ino)
        node.lookups += 1

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        node = self.inodes.get(ino)
        if not node.is_dir:
            raise NotADirectory(node.path)
        listing = await self.namespace.listing(node.path, subtree=True)
        files: dict[str, ObjectInfo | StagedInfo | None] = dict(listing.files)
        files.update(dict.fromkeys(listing.dirs))
        files.update(self.view.staged_children(node.path))
        handle = DirHandle(self._new_fh())
        for name in sorted(files):
            info = files[name]
            child = self.inodes.upsert(paths.join(node.path, name), info is None, info)
            handle.entries.append(DirEntry(name, self.attr_of(child)))
        self._dirs[handle.fh] = handle
        return handle.fh

    def readdir(self, fh: int, start: int) -> list[DirEntry]:
        """Entries from index `start` on (the adapter passes index+1 as the next offset)."""
        return self._dirs[fh].entries[start:]

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # -- files ---------------------------------------------------------------------------------

    async def open(self, ino: int, flags: int, pid: int = 0) -> tuple[int, bool]:
        """Open a file for the thread `pid`; returns (fh, keep_cache)."""
        if self.reads.is_internal(pid):
            return INTERNAL_FH, True  # drop-behind's descriptor: never read, keeps the cache
        node = self.inodes.get(ino)
        if node.is_dir:
            raise IsADirectory(node.path)
        if flags & _WRITE_FLAGS:
            return await self._open_for_write(node, flags), False
        await self._refresh(node)
        info = node.info
        if isinstance(info, StagedInfo):  # read what the writer holds, pinned while open
            # No checkpoint between `_refresh` finding it staged and this call, so the writer
            # still holds it: open() must never stage a new empty file in its place.
            staged = await self.writer.open(info.key, None)
            return self._add_handle(FileHandle(self._new_fh(), node, staged=staged)), False
        assert info is not None
        keep_cache = node.last_open_etag == info.etag
        node.last_open_etag = info.etag
        handle = FileHandle(self._new_fh(), node)
        node.opens += 1  # before the policy looks at it: this reader counts
        try:
            handle.reader = await self.reads.open(info, node, paths.parent_of(node.path), pid)
        except BaseException:
            self.inodes.release(node)
            raise
        self._files[handle.fh] = handle
        return handle.fh, keep_cache

    def _add_handle(self, handle: FileHandle) -> int:
        handle.node.opens += 1
        self._files[handle.fh] = handle
        return handle.fh

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._files[fh]
        self._reads += 1
        started = time.perf_counter()
        try:
            if handle.staged is not None:
                data = self.writer.read(handle.staged, offset, size)
            else:
                assert handle.reader is not None
                data = await handle.reader.read(offset, size)
        finally:
            self.read_latency.observe(time.perf_counter() - started)
        self._bytes_read += len(data)
        return data

    async def flush(self, fh: int) -> None:
        """close(2) waits for this: no descriptor of ours on the file outlives it."""
        handle = self._files.get(fh)
        if handle is not None and handle.reader is not None:
            await handle.reader.flush()

    def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            self.reads.closed(handle.reader)
        if handle.staged is not None:
            self.writer.release(handle.staged)
        self.inodes.release(handle.node)

    # -- changes (each goes to the writer, which refuses them on a read-only mount) ----------

    def _staged_now(self, node: Node) -> StagedInfo:
        info = self.view.staged(node.path)
        assert info is not None, f"{node.path} should be staged now"
        node.info = info
        return info

    async def _open_for_write(self, node: Node, flags: int) -> int:
        key = self.namespace.key_of(node.path)
        truncate, append = bool(flags & os.O_TRUNC), bool(flags & os.O_APPEND)
        staged = await self.writer.open(
            key, await self.view.base(node.path), truncate=truncate, append=append
        )
        self._staged_now(node)
        return self._add_handle(FileHandle(self._new_fh(), node, staged=staged))

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[int, Attr]:
        parent = self.inodes.get(parent_ino)
        path = paths.join(parent.path, name)
        if not parent.is_dir:
            raise NotADirectory(parent.path)
        _check_name(name, self.namespace.key_of(path))
        staged = await self.writer.open(
            self.namespace.key_of(path),
            await self.view.base(path),
            truncate=True,
            append=bool(flags & os.O_APPEND),
        )
        node = self.inodes.upsert(path, False, None)
        self._staged_now(node)
        node.lookups += 1
        fh = self._add_handle(FileHandle(self._new_fh(), node, staged=staged))
        return fh, self.attr_of(node)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._files[fh]
        if handle.staged is None:
            raise ReadOnly(f"{handle.node.path}: not open for writing")
        written = self.writer.write(handle.staged, offset, data)
        self._staged_now(handle.node)
        return written

    async def set_size(self, ino: int, size: int, fh: int | None) -> Attr:
        node = self.inodes.get(ino)
        if node.is_dir:
            raise IsADirectory(node.path)
        handle = self._files.get(fh) if fh is not None else None
        if handle is not None and handle.staged is not None:
            await self.writer.truncate(handle.staged, size)
        else:
            key = self.namespace.key_of(node.path)
            await self.writer.truncate(key, size, await self.view.base(node.path))
        self._staged_now(node)
        return self.attr_of(node)

    async def fsync(self, fh: int) -> None:
        handle = self._files.get(fh)
        if handle is not None and handle.staged is not None:
            await self.writer.fsync(handle.staged)

    async def fsyncdir(self, fh: int) -> None:
        """fsync of a directory: the names changed so far (a rename the app made) are durable."""
        await self.writer.fsync_names()

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self.inodes.get(parent_ino)
        path = paths.join(parent.path, name)
        node = await self._resolve(parent, name)
        if node.is_dir:
            raise IsADirectory(path)
        await self.writer.unlink(self.namespace.key_of(path))
        self.inodes.remove_path(path)
        self.namespace.invalidate(parent.path)

    async def rename(
        self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str, flags: int
    ) -> None:
        old_parent = self.inodes.get(old_parent_ino)
        new_parent = self.inodes.get(new_parent_ino)
        old_path = paths.join(old_parent.path, old_name)
        new_path = paths.join(new_parent.path, new_name)
        if flags & _RENAME_EXCHANGE:
            raise NotSupported("rename with RENAME_EXCHANGE is not supported on an object store")
        node = await self._resolve(old_parent, old_name)
        if node.is_dir:
            # Renaming a prefix means copying every object below it; `mv` does that itself
            # (file by file, through the mount) when told the rename crosses devices.
            raise CrossDevice(f"{old_path}: directories are moved by copying (EXDEV)")
        _check_name(new_name, self.namespace.key_of(new_path))
        replaced = await self.view.base(new_path)
        target_exists = replaced is not None or self.view.staged(new_path) is not None
        if flags & _RENAME_NOREPLACE and target_exists:
            raise AlreadyExists(new_path)
        await self.writer.rename(
            self.namespace.key_of(old_path), self.namespace.key_of(new_path), replaced=replaced
        )
        self.inodes.move(old_path, new_path)
        self.namespace.invalidate(old_parent.path)
        self.namespace.invalidate(new_parent.path)
        staged = self.view.staged(new_path)
        if staged is not None:
            node.info = staged

    async def mkdir(self, parent_ino: int, name: str) -> Attr:
        """A directory is a marker object `name/`, so it exists for every client at once."""
        parent = self.inodes.get(parent_ino)
        path = paths.join(parent.path, name)
        _check_name(name, self.namespace.dir_prefix(path))
        listing = await self.namespace.listing(parent.path)
        if name in listing.dirs or name in listing.files or self.view.staged(path):
            raise AlreadyExists(path)
        await self.writer.make_directory(self.namespace.dir_prefix(path))
        self.namespace.invalidate(parent.path)
        node = self.inodes.upsert(path, True, None)
        node.lookups += 1
        return self.attr_of(node)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self.inodes.get(parent_ino)
        path = paths.join(parent.path, name)
        node = await self._resolve(parent, name)
        if not node.is_dir:
            raise NotADirectory(path)
        self.namespace.invalidate(path)
        listing = await self.namespace.listing(path)
        if listing.files or listing.dirs or self.view.staged_dir(path):
            raise NotEmpty(path)
        await self.writer.remove_directory(self.namespace.dir_prefix(path))
        self.inodes.remove_path(path)
        self.namespace.invalidate(parent.path)

    # -- misc ----------------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def statistics(self) -> FsStatistics:
        return FsStatistics(len(self.inodes), len(self._files), self._reads, self._bytes_read)


def _check_name(name: str, key: str) -> None:
    """A name a change may give a file or directory, and the key it would have."""
    if not paths.valid_segment(name):
        raise InvalidArgument(f"{name!r} cannot be an object name")
    paths.check_key_length(key)
