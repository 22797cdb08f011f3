"""The FUSE edge: decode pyfuse3 arguments, await one `Filesystem` method, encode the reply.

Holds no logic. Only `FUSEError` may escape a pyfuse3 handler (anything else kills the session
loop and the mount with it), so every handler goes through `_boundary`: domain errors become
their errno, anything unexpected is logged and becomes EIO. `forget` and `release*` never raise.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pyfuse3

from modelfs.core.attributes import Attr
from modelfs.core.filesystem import Filesystem
from modelfs.errors import ModelfsError, errno_for

log = logging.getLogger(__name__)

T = TypeVar("T")

_BLOCK_SIZE_HINT = 1 << 20  # st_blksize: tells tools like dd/cp to use 1 MiB requests


def _to_entry(attr: Attr) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attr.ino
    entry.st_mode = attr.mode
    entry.st_nlink = 2 if attr.is_dir else 1
    entry.st_uid = attr.uid
    entry.st_gid = attr.gid
    entry.st_size = attr.size
    entry.st_blksize = _BLOCK_SIZE_HINT
    entry.st_blocks = -(-attr.size // 512)
    entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = attr.mtime_ns
    entry.entry_timeout = attr.timeout
    entry.attr_timeout = attr.timeout
    return entry


async def _boundary(what: str, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except pyfuse3.FUSEError:
        raise
    except ModelfsError as exc:
        if exc.errno not in (errno.ENOENT,):
            log.info("%s: %s", what, exc)
        raise pyfuse3.FUSEError(exc.errno) from None
    except OSError as exc:
        log.warning("%s: %s", what, exc)
        raise pyfuse3.FUSEError(errno_for(exc)) from None
    except Exception:
        log.exception("%s: unexpected error", what)
        raise pyfuse3.FUSEError(errno.EIO) from None


class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem) -> None:
        super().__init__()
        self._fs = fs

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)

        async def call() -> pyfuse3.EntryAttributes:
            return _to_entry(await self._fs.lookup(parent_inode, text))

        return await _boundary(f"lookup {text!r}", call)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        async def call() -> pyfuse3.EntryAttributes:
            return _to_entry(await self._fs.getattr(inode))

        return await _boundary(f"getattr {inode}", call)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            try:
                self._fs.forget(inode, count)
            except Exception:
                log.exception("forget %d", inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await _boundary(f"opendir {inode}", lambda: self._fs.opendir(inode))

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        async def call() -> None:
            for offset, entry in enumerate(self._fs.readdir(fh, start_id), start_id + 1):
                if not pyfuse3.readdir_reply(
                    token, os.fsencode(entry.name), _to_entry(entry.attr), offset
                ):
                    return
                self._fs.note_lookup(entry.attr.ino)

        await _boundary(f"readdir {fh}", call)

    async def releasedir(self, fh: int) -> None:
        self._fs.releasedir(fh)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        async def call() -> pyfuse3.FileInfo:
            fh, keep_cache = await self._fs.open(inode, flags, ctx.pid)
            return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

        return await _boundary(f"open {inode}", call)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await _boundary(f"read fh {fh}", lambda: self._fs.read(fh, off, size))

    async def release(self, fh: int) -> None:
        try:
            self._fs.release(fh)
        except Exception:
            log.exception("release %d", fh)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = _BLOCK_SIZE_HINT
        # An object store has no fixed capacity; report a large one so tools that check free
        # space before writing (curl --continue scripts, pip) do not refuse.
        data.f_blocks = data.f_bfree = data.f_bavail = 1 << 30
        data.f_files = data.f_ffree = data.f_favail = 1 << 30
        data.f_namemax = 255
        return data

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text = os.fsdecode(name)

        async def call() -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
            fh, attr = await self._fs.create(parent_inode, text, flags)
            return pyfuse3.FileInfo(fh=fh, keep_cache=False), _to_entry(attr)

        return await _boundary(f"create {text!r}", call)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        async def call() -> int:
            return self._fs.write(fh, off, buf)

        return await _boundary(f"write fh {fh}", call)

    async def flush(self, fh: int) -> None:
        # Written data is in the staging file already; uploads follow close (see `write.engine`).
        await _boundary(f"flush fh {fh}", lambda: self._fs.flush(fh))

    async def fsync(self, fh: int, datasync: bool) -> None:
        await _boundary(f"fsync fh {fh}", lambda: self._fs.fsync(fh))

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        # Without it the kernel takes ENOSYS for success: a rename the app fsyncs must last.
        await _boundary(f"fsyncdir fh {fh}", lambda: self._fs.fsyncdir(fh))

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        async def call() -> pyfuse3.EntryAttributes:
            if fields.update_size:
                return _to_entry(await self._fs.set_size(inode, attr.st_size, fh))
            # Modes, owners and times are not stored in an object store: accepted, unchanged
            # (as rclone and mountpoint-s3 do), so `touch` and `cp -p` keep working.
            return _to_entry(await self._fs.getattr(inode))

        return await _boundary(f"setattr {inode}", call)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)

        async def call() -> pyfuse3.EntryAttributes:
            return _to_entry(await self._fs.mkdir(parent_inode, text))

        return await _boundary(f"mkdir {text!r}", call)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        await _boundary(f"unlink {text!r}", lambda: self._fs.unlink(parent_inode, text))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text = os.fsdecode(name)
        await _boundary(f"rmdir {text!r}", lambda: self._fs.rmdir(parent_inode, text))

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old, new = os.fsdecode(name_old), os.fsdecode(name_new)
        await _boundary(
            f"rename {old!r} -> {new!r}",
            lambda: self._fs.rename(parent_inode_old, old, parent_inode_new, new, flags),
        )
