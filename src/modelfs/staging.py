"""The staging area: one local file per file being written, holding its full content.

On-disk layout under the write-back root (one root per remote, chosen by the caller):

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

Also here: the ETag S3 computes for content we upload (MD5, or MD5 of part MD5s plus "-N" for
multipart), so a retry or a recovery can tell "the bucket already has exactly our bytes" from a
change by someone else without a journal write per part.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import uuid
from pathlib import Path
from typing import NoReturn

from .errors import MountError, NoSpace

STAGING_DIR = "staging"
LOCK_NAME = "lock"

S3_MAX_PARTS = 10_000  # S3 refuses part numbers above this
_MIB = 1 << 20


class StagingArea:
    """Creates, opens and removes staging files; holds the root's lock while alive."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / STAGING_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise MountError(
                f"write-back root {root} is in use by another modelfs process"
            ) from None

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
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self._lock_fd)


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
        return hashlib.md5(read_at(fd, 0, size), usedforsecurity=False).hexdigest()
    step = part_size_for(size, part_size)
    digests = b"".join(
        hashlib.md5(read_at(fd, start, min(step, size - start)), usedforsecurity=False).digest()
        for start in range(0, size, step)
    )
    count = -(-size // step)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{count}"


def same_etag(a: str | None, b: str | None) -> bool:
    """ETags compare without the quotes some servers and clients keep."""
    return a is not None and b is not None and a.strip('"') == b.strip('"')


def _reraise(exc: OSError) -> NoReturn:
    """Re-raise `exc`, as NoSpace (ENOSPC) if the cache disk is full."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise NoSpace("no space left on the cache disk for write-back") from exc
    raise exc
