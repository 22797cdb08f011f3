"""Getting written bytes to the disk: the libc calls Python's `os` module lacks.

- `sync_filesystem(path)`: syncfs(2) of the filesystem holding `path` (`os.sync()` of all of
  them where libc has no syncfs): what makes a pull's finished files durable at a checkpoint.
- `start_writeback(fd, offset, length)`: sync_file_range(2) with SYNC_FILE_RANGE_WRITE only,
  which starts the disk writes of a range's dirty pages and returns without waiting for them
  (it blocks only while the device's queue is full). A pull calls it as each block lands, so
  the disk writes while the network still delivers and the sync at the end finds little left,
  instead of a whole file's worth of dirty pages the kernel would otherwise keep in memory
  until that sync. It makes nothing durable by itself; where the call is missing or fails it
  does nothing.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def sync_filesystem(path: Path) -> None:
    """syncfs(2) of the filesystem holding `path` (all of them where there is no syncfs)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC is not None and _LIBC.syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing bytes [offset, offset + length) of `fd` to the disk, without waiting."""
    if _LIBC is not None:
        _LIBC.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = (ctypes.c_int,)
        libc.sync_file_range.argtypes = (
            ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint,
        )  # fmt: skip
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
