"""What the kernel holds of a file in its page cache, seen with mincore(2)."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path


def libc() -> ctypes.CDLL:
    """libc with mmap, munmap and mincore typed: a mapping at an address of our own, which
    Python's `mmap` module does not give."""
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    lib.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    return lib


def resident_map(path: Path) -> bytes:
    """One byte per page of the file: 1 if the page is in the page cache, else 0.

    mincore(2) on a private mapping of the whole file; mapping it reads nothing."""
    libc = _LIBC
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return bytes(byte & 1 for byte in vector.raw)
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def resident_pages(path: Path, start: int = 0, end: int | None = None) -> int:
    """How many pages of bytes [start, end) of the file are in the page cache."""
    page = mmap.PAGESIZE
    resident = resident_map(path)
    return sum(resident[start // page : None if end is None else -(-end // page)])


_LIBC = libc()
