#!/usr/bin/env python3
"""A bare read-only pyfuse3 passthrough of a local directory tree: the Python FUSE ceiling.

    python bench/passthrough.py SRC MOUNTPOINT      # unmount with fusermount3 -u; it then exits

The benchmark mounts the local copy of its data with this, as one more column: every read goes
kernel -> pyfuse3 -> os.pread of the local file -> back, on trio like modelfs, with nothing else
(no network, no cache, no checksum), so its cold row is the most any Python FUSE filesystem can
serve on the machine, and its CPU per GiB the least it costs. It gets what modelfs gets from the
kernel: 1 MiB readahead (raised through the mount's bdi when it may) and keep_cache.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Any

import pyfuse3
import trio

_READAHEAD_KB = 1024  # as modelfs raises it: requests arrive as 1 MiB reads
_TIMEOUT = 300.0  # attributes and entries never change under the benchmark


class Passthrough(pyfuse3.Operations):  # type: ignore[misc]
    def __init__(self, root: str) -> None:
        super().__init__()
        self._paths = {pyfuse3.ROOT_INODE: root}  # inode -> local path
        self._inodes = {root: pyfuse3.ROOT_INODE}

    def _inode(self, path: str) -> int:
        if path not in self._inodes:
            self._inodes[path] = len(self._paths) + pyfuse3.ROOT_INODE
            self._paths[self._inodes[path]] = path
        return self._inodes[path]

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(self._paths[inode])
        except (KeyError, OSError):
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        entry = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks"):
            setattr(entry, name, getattr(st, name))
        entry.st_atime_ns, entry.st_mtime_ns, entry.st_ctime_ns = (st.st_mtime_ns,) * 3
        entry.st_ino, entry.st_blksize = inode, 1 << 20
        entry.attr_timeout = entry.entry_timeout = _TIMEOUT
        return entry

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        path = f"{self._paths[parent]}/{os.fsdecode(name)}"
        try:
            os.lstat(path)
        except OSError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        return await self.getattr(self._inode(path))

    async def opendir(self, inode: int, ctx: Any) -> int:
        if not stat.S_ISDIR(os.lstat(self._paths[inode]).st_mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        names = sorted(os.listdir(self._paths[fh]))
        for index in range(start_id, len(names)):
            inode = self._inode(f"{self._paths[fh]}/{names[index]}")
            attr = await self.getattr(inode)
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attr, index + 1):
                return

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        fd = os.open(self._paths[inode], os.O_RDONLY | os.O_CLOEXEC)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return os.pread(fh, size, offset)

    async def release(self, fh: int) -> None:
        os.close(fh)


def raise_readahead(mountpoint: str) -> None:
    device = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(path, "w") as bdi:
            bdi.write(str(_READAHEAD_KB))
    except OSError as exc:
        print(f"passthrough: readahead stays the kernel's ({exc})", file=sys.stderr)


def main(argv: list[str]) -> int:
    root, mountpoint = os.path.abspath(argv[1]), argv[2]
    options = set(pyfuse3.default_options) | {"fsname=passthrough", "ro", "noatime"}
    pyfuse3.init(Passthrough(root), mountpoint, options)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            await trio.to_thread.run_sync(raise_readahead, mountpoint)

    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
