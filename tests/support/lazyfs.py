"""A power-loss simulator: a FUSE passthrough that holds every write until it is fsynced.

The approach of the research tool LazyFS (github.com/dsrhaslab/lazyfs), in pyfuse3. Run as
`python lazyfs.py BACKING MOUNTPOINT`; tests drive it through `lazydisk.LazyDisk`. Whatever a
program writes there (write, truncate, O_TRUNC) stays in that process's memory, applied on top
of the backing file for every read and getattr, so programs see their writes as usual. An
`fsync` of a file (through any handle) applies its held writes to the backing file, in order,
and fsyncs it: the backing directory is "the disk", and holds exactly what was made durable.

A power-off ends the process abruptly, after it has put on the disk what the mode (its signal,
`POWER_OFF_SIGNALS`) says survives of the writes not synced yet:
- "drop":  nothing (SIGKILL; LazyFS's clear-cache fault);
- "zeros": their sizes but none of their bytes: files are extended with zeros where unsynced
           writes went past the end, as a file system journaling metadata but not data leaves
           them (ext4 data=writeback, the NUL bytes at the end of a log after a crash);
- "torn":  a prefix of each file's unsynced writes, in order, cut in the middle of one write:
           the first half of its unsynced bytes (LazyFS's torn-op fault).
SIGTERM is a clean shutdown: every held write reaches the disk. Mounting the backing directory
again shows it as a restarted machine would.

What it does not simulate, so cannot catch:
- metadata: create, unlink, rename, mkdir, chmod and times go to the backing directory at once,
  so they are always durable: a missing fsync of a directory (after creating a file, or after
  a rename) goes unnoticed, and `fsyncdir` does nothing;
- reordering: the disk gets a file's synced writes in the order they were made, and nothing of
  an unsynced write unless the mode says so; a device that reorders within a flush, or writes
  part of a sector, is not modelled beyond the modes above;
- `sync_file_range`, `O_SYNC`/`O_DSYNC` opens and `msync` are not treated as syncs (a program
  relying on them would see its data dropped: a false alarm, never a missed loss), and `sync`
  and `syncfs` sync nothing here either (this FUSE file system gets no request for them);
- SQLite's own guarantees beyond fsync (its WAL checksums and salts after a torn WAL write):
  SQLite handles those itself; this only decides which of its writes reach the disk;
- the kernel's page cache above this file system: reads after a remount come from here.

Hard links, symlinks and special files are refused (ENOSYS/ENOTSUP): nothing under test uses
them. Everything runs on one trio thread, so every request is atomic with respect to the others
and to a power-off.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyfuse3
import trio

T = TypeVar("T")

POWER_OFF_SIGNALS = {"zeros": signal.SIGUSR1, "torn": signal.SIGUSR2}
_TIMEOUT = 10.0  # kernel caching of entries and attributes: every change comes through it


@dataclass(frozen=True, slots=True)
class Write:
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Truncate:
    size: int


@dataclass(eq=False)
class Node:
    """An open or dirty regular file: its backing fd and the writes not on the disk yet."""

    fd: int
    opens: int = 0
    held: list[Write | Truncate] = field(default_factory=list)
    content: bytearray | None = None  # what programs see, while writes are held

    def view(self) -> bytearray:
        if self.content is None:
            self.content = bytearray(_read_all(self.fd))
        return self.content

    def hold(self, change: Write | Truncate) -> None:
        content = self.view()
        if isinstance(change, Truncate):
            del content[change.size :]
            content.extend(bytes(change.size - len(content)))
        else:
            end = change.offset + len(change.data)
            content.extend(bytes(max(0, end - len(content))))
            content[change.offset : end] = change.data
        self.held.append(change)

    def persist(self, changes: list[Write | Truncate]) -> None:
        """Put `changes` on the disk (no fsync: the backing file system never loses power)."""
        for change in changes:
            if isinstance(change, Truncate):
                os.ftruncate(self.fd, change.size)
            else:
                os.pwrite(self.fd, change.data, change.offset)

    def sync(self) -> None:
        self.persist(self.held)
        os.fsync(self.fd)
        self.held.clear()
        self.content = None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    pieces, offset = [], 0
    while offset < size:
        piece = os.pread(fd, size - offset, offset)
        if not piece:
            break
        pieces.append(piece)
        offset += len(piece)
    return b"".join(pieces)


def _inode_at(path: str) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def zeros_of(held: list[Write | Truncate], size: int) -> list[Write | Truncate]:
    """Mode "zeros": the size each held change leaves, none of their bytes."""
    sizes: list[Write | Truncate] = []
    for change in held:
        if isinstance(change, Truncate):
            size = change.size
        else:
            size = max(size, change.offset + len(change.data))
        sizes.append(Truncate(size))
    return sizes


def torn_prefix(held: list[Write | Truncate]) -> list[Write | Truncate]:
    """Mode "torn": the held changes in order, up to half of their bytes (one write cut)."""
    budget = sum(len(change.data) for change in held if isinstance(change, Write)) // 2
    kept: list[Write | Truncate] = []
    for change in held:
        if isinstance(change, Write):
            if budget <= 0:
                break
            change = Write(change.offset, change.data[:budget])
            budget -= len(change.data)
        kept.append(change)
    return kept


def _guard(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """OSError becomes its errno (the only exception a pyfuse3 handler may raise)."""

    async def guarded(*args: object) -> T:
        try:
            return await handler(*args)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    guarded.__name__ = handler.__name__
    return guarded


class LazyFS(pyfuse3.Operations):
    """The passthrough. Inode numbers are the backing file's (the root's is ROOT_INODE)."""

    def __init__(self, backing: Path) -> None:
        super().__init__()
        self._root_ino = os.lstat(backing).st_ino
        self._paths: dict[int, str] = {pyfuse3.ROOT_INODE: str(backing)}
        self._nodes: dict[int, Node] = {}
        self._handles: dict[int, tuple[int, bool]] = {}  # fh -> (inode, O_APPEND)
        self._next_fh = 1

    # -- power ---------------------------------------------------------------------------------

    def power_off(self, mode: str) -> None:
        """Put on the disk what `mode` says survives of the held writes; then die."""
        for node in self._nodes.values():
            if not node.held:
                continue
            if mode == "zeros":
                node.persist(zeros_of(node.held, os.fstat(node.fd).st_size))
            elif mode == "torn":
                node.persist(torn_prefix(node.held))
        os._exit(0)

    def sync_all(self) -> None:
        """A clean shutdown: everything held reaches the disk."""
        for node in self._nodes.values():
            node.sync()

    # -- inodes and attributes -----------------------------------------------------------------

    def _ino(self, stat: os.stat_result) -> int:
        if stat.st_ino == self._root_ino:
            return pyfuse3.ROOT_INODE
        if stat.st_ino == pyfuse3.ROOT_INODE:
            raise OSError(errno.EIO, "backing inode 1 is not the root")
        return stat.st_ino

    def _path(self, inode: int, name: bytes | None = None) -> str:
        try:
            path = self._paths[inode]
        except KeyError:
            raise OSError(errno.ENOENT, "inode unknown or unlinked") from None
        return path if name is None else os.path.join(path, os.fsdecode(name))

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        node = self._nodes.get(inode)
        stat = os.fstat(node.fd) if node is not None else os.lstat(self._path(inode))
        entry = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size"):
            setattr(entry, name, getattr(stat, name))
        entry.st_atime_ns, entry.st_mtime_ns = stat.st_atime_ns, stat.st_mtime_ns
        entry.st_ctime_ns = stat.st_ctime_ns
        if node is not None and node.content is not None:
            entry.st_size = len(node.content)
        entry.st_ino = inode
        entry.st_blksize = 4096
        entry.st_blocks = -(-entry.st_size // 512)
        entry.entry_timeout = entry.attr_timeout = _TIMEOUT
        return entry

    def _known(self, path: str) -> pyfuse3.EntryAttributes:
        inode = self._ino(os.lstat(path))
        self._paths[inode] = path
        return self._entry(inode)

    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            fd = os.open(self._path(inode), os.O_RDWR | os.O_CLOEXEC)
            node = self._nodes[inode] = Node(fd)
        return node

    def _drop_if_idle(self, inode: int) -> None:
        node = self._nodes.get(inode)
        if node is not None and not node.opens and not node.held:
            os.close(node.fd)
            del self._nodes[inode]

    @_guard
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._known(self._path(parent_inode, name))

    @_guard
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    @_guard
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            self._node(inode).hold(Truncate(attr.st_size))
            self._drop_if_idle(inode)
        path = self._path(inode)
        if fields.update_mode:
            os.chmod(path, attr.st_mode)
        if fields.update_atime or fields.update_mtime:
            stat = os.lstat(path)
            atime = attr.st_atime_ns if fields.update_atime else stat.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else stat.st_mtime_ns
            os.utime(path, ns=(atime, mtime))
        return self._entry(inode)

    @_guard
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stat = os.statvfs(self._paths[pyfuse3.ROOT_INODE])
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files"):
            setattr(data, name, getattr(stat, name))
        data.f_ffree, data.f_favail, data.f_namemax = stat.f_ffree, stat.f_favail, stat.f_namemax
        return data

    # -- the namespace: passed through at once -------------------------------------------------

    @_guard
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._path(parent_inode, name)
        os.mkdir(path, mode)
        return self._known(path)

    @_guard
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._path(parent_inode, name)
        inode = self._ino(os.lstat(path))
        os.rmdir(path)
        self._paths.pop(inode, None)

    @_guard
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._path(parent_inode, name)
        inode = self._ino(os.lstat(path))
        os.unlink(path)
        if self._paths.get(inode) == path:
            del self._paths[inode]
        node = self._nodes.get(inode)
        if node is not None:
            node.held.clear()  # nothing of an unlinked file can reach the disk any more
            self._drop_if_idle(inode)

    @_guard
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old = self._path(parent_inode_old, name_old)
        new = self._path(parent_inode_new, name_new)
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise OSError(errno.ENOTSUP, "only RENAME_NOREPLACE is supported")
        replaced = _inode_at(new)
        if flags and replaced is not None:
            raise OSError(errno.EEXIST, "target exists")
        os.rename(old, new)
        if replaced is not None:
            self._paths.pop(replaced, None)
        for inode, path in list(self._paths.items()):  # the moved entry and all below it
            if path == old or path.startswith(old + os.sep):
                self._paths[inode] = new + path[len(old) :]

    # -- directories ---------------------------------------------------------------------------

    @_guard
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._path(inode)
        return inode

    @_guard
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self._path(fh)
        names = sorted(os.listdir(directory))
        for index in range(start_id, len(names)):
            path = os.path.join(directory, names[index])
            try:
                entry = self._known(path)
            except FileNotFoundError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), entry, index + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # the namespace is always on the disk here (see the module docstring)

    # -- files ---------------------------------------------------------------------------------

    def _open_handle(self, inode: int, flags: int) -> pyfuse3.FileInfo:
        node = self._node(inode)
        node.opens += 1
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (inode, bool(flags & os.O_APPEND))
        if flags & os.O_TRUNC:
            node.hold(Truncate(0))
        return pyfuse3.FileInfo(fh=fh)

    @_guard
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._open_handle(inode, flags)

    @_guard
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._path(parent_inode, name)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | (flags & os.O_EXCL), mode))
        inode = self._known(path).st_ino
        info = self._open_handle(inode, flags)
        return info, self._entry(inode)

    @_guard
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._nodes[self._handles[fh][0]]
        if node.content is not None:
            return bytes(node.content[off : off + size])
        return os.pread(node.fd, size, off)

    @_guard
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        inode, append = self._handles[fh]
        node = self._nodes[inode]
        if append:
            off = len(node.view())
        node.hold(Write(off, bytes(buf)))
        return len(buf)

    @_guard
    async def fsync(self, fh: int, datasync: bool) -> None:
        self._nodes[self._handles[fh][0]].sync()

    async def flush(self, fh: int) -> None:
        return None  # close() is no sync

    async def release(self, fh: int) -> None:
        inode, _ = self._handles.pop(fh)
        self._nodes[inode].opens -= 1
        self._drop_if_idle(inode)


# -- the process ---------------------------------------------------------------------------------


async def _serve(fs: LazyFS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_power_switch, fs)
        await pyfuse3.main()


async def _power_switch(fs: LazyFS) -> None:
    modes = {number: mode for mode, number in POWER_OFF_SIGNALS.items()}
    with trio.open_signal_receiver(signal.SIGTERM, *modes) as signals:
        async for number in signals:
            if number in modes:
                fs.power_off(modes[number])
            fs.sync_all()
            pyfuse3.terminate()
            return


def main(argv: list[str]) -> None:
    backing, mountpoint = argv
    fs = LazyFS(Path(backing))
    pyfuse3.init(fs, mountpoint, {"fsname=lazyfs", "subtype=lazyfs"})
    try:
        trio.run(_serve, fs)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(sys.argv[1:])
