"""The staging area: one local file per file being written, holding its full content.

On-disk layout under the write-back root (one root per mount, chosen by the caller; an
earlier version kept one per remote, which `take_over` moves to a mount's), every directory
0700 and every file 0600 (`host.private`):

    ROOT/
    ├── lock                      flock()ed by the live WriteBack; freed by the kernel on kill -9
    ├── journal.sqlite3 (-wal, -shm)   dirty keys (see `journal`)
    ├── journal.reserve           preallocated room for the journal on a full disk
    └── staging/
        └── 3f2a...c9             32 hex chars, random: the whole content of one file as the
                                  mount shows it (sparse where nothing was written or fetched)

A staging file is named at random rather than after its key because renames and conflicts move
content between keys, and an unlinked-but-open file keeps its bytes after a new file of the same
name appears. The journal maps keys to staging names; a staging file no row names is garbage at
startup (an unlinked or clean file of a previous run) and is removed.

Also here: the part size of an upload (`part_size_for`) and the ETag S3 will give our upload
of a staging file (`content_etag`, with the ETag rules of `store.etag`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import NoReturn

import trio

from modelfs.errors import MountError, NoSpace, StaleObject
from modelfs.host import private
from modelfs.host.locks import hold_lock
from modelfs.objects import ObjectInfo
from modelfs.store.etag import md5_etag, multipart_etag
from modelfs.store.protocol import ObjectStore
from modelfs.write.threads import ThreadRunner

STAGING_DIR = "staging"

S3_MAX_PARTS = 10_000  # S3 refuses part numbers above this
STORE_CHUNK = 1 << 20  # bytes per chunk while copying an object from the store
_MIB = 1 << 20


class StagingArea:
    """Creates, opens and removes staging files; holds the root's lock while alive."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / STAGING_DIR
        private.make_dirs(self.dir)
        self._lock_fd = hold_lock(root, "write-back root")

    def create(self) -> tuple[str, int]:
        """A new empty staging file: (name, read-write fd)."""
        name = uuid.uuid4().hex
        try:
            fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            _reraise(exc)
        return name, fd

    def open(self, name: str) -> int | None:
        """The fd of an existing staging file, or None if it is gone."""
        try:
            return os.open(self.path(name), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    def path(self, name: str) -> Path:
        return self.dir / name

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def sweep(self, keep: set[str]) -> list[str]:
        """Remove staging files not in `keep` (left by a previous run); returns their names."""
        removed = [entry.name for entry in os.scandir(self.dir) if entry.name not in keep]
        for name in removed:
            self.remove(name)
        return removed

    def fsync_dir(self) -> None:
        """Make the creation of staging files survive a power loss (blocking)."""
        fsync_directory(self.dir)

    def fsync_tree(self) -> None:
        """Make the entries of the staging directory, of the root and of the root's parent
        survive a power loss: a first mount creates them (blocking; at startup)."""
        for directory in (self.dir, self.root, self.root.parent):
            fsync_directory(directory)

    def close(self) -> None:
        os.close(self._lock_fd)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def take_over(old: Path, root: Path) -> bool:
    """Move the write-back root `old` (where an earlier version kept one per cache root) to
    `root`, whole, with one rename, if `root` does not exist yet and no process holds `old`'s
    lock: its pending files then are this root's to upload. True if it was moved."""
    if root.exists() or not old.is_dir():
        return False
    try:
        fd = hold_lock(old, "write-back root")
    except (MountError, OSError):  # in use by an older modelfs, or taken over just now
        return False
    try:
        os.rename(old, root)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def write_at(fd: int, offset: int, data: bytes) -> int:
    """pwrite all of `data`; on ENOSPC after some bytes, return how many made it (a short
    write, as POSIX allows); on ENOSPC before any, raise NoSpace. Written bytes stay intact."""
    done = 0
    view = memoryview(data)
    while done < len(data):
        try:
            done += os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            if done and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return done
            _reraise(exc)
    return done


def read_at(fd: int, offset: int, size: int) -> bytes:
    """Up to `size` bytes from `offset` (fewer only at end of file)."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    pieces = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        pieces.append(more)
        got += len(more)
    return b"".join(pieces)


def resize(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        _reraise(exc)


async def copy_object(
    chunks: AsyncGenerator[bytes, None], info: ObjectInfo, fd: int, run_sync: ThreadRunner
) -> None:
    """Write `info`'s bytes, arriving as `chunks`, into staging file `fd` from offset 0
    (pwrites in worker threads); NoSpace on a full disk, StaleObject if the bytes fall short."""
    offset = 0
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            written = await run_sync(write_at, fd, offset, chunk)
            if written < len(chunk):
                raise NoSpace(f"no space on the cache disk to stage {info.key}")
            offset += len(chunk)
    if offset != info.size:
        raise StaleObject(f"{info.key}: got {offset} of {info.size} bytes")


async def store_chunks(
    store: ObjectStore, info: ObjectInfo, run_sync: ThreadRunner, limiter: trio.CapacityLimiter
) -> AsyncGenerator[bytes, None]:
    """`info`'s bytes straight from the store (one GET), each chunk pulled in a worker thread:
    for an engine that is given no block cache to read through."""
    chunks = iter(store.iter_range(info.id, 0, info.size, STORE_CHUNK))
    try:
        while chunk := await run_sync(next, chunks, b"", limiter=limiter):
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def part_size_for(size: int, part_size: int) -> int:
    """The part size a multipart upload of `size` bytes uses: `part_size`, grown in whole MiB
    when the file would need more than S3's 10,000 parts."""
    needed = -(-size // S3_MAX_PARTS)
    if needed <= part_size:
        return part_size
    return -(-needed // _MIB) * _MIB


def is_multipart(size: int, part_size: int) -> bool:
    return size > part_size


def content_etag(fd: int, size: int, part_size: int) -> str:
    """The ETag S3 gives our upload of bytes [0, size) of `fd` (blocking; run in a thread)."""
    if not is_multipart(size, part_size):
        return md5_etag(read_at(fd, 0, size))
    step = part_size_for(size, part_size)
    return multipart_etag(
        [
            hashlib.md5(read_at(fd, start, min(step, size - start)), usedforsecurity=False).digest()
            for start in range(0, size, step)
        ]
    )


def _reraise(exc: OSError) -> NoReturn:
    """Re-raise `exc`, as NoSpace (ENOSPC) if the cache disk is full."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpace("no space left on the cache disk for write-back") from exc
    raise exc
