"""What the kernel holds of a file in its page cache, seen with mincore(2), and a pause of the
machine's own proactive reclaim while a test counts it."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from collections.abc import Iterator
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


DAMON_KDAMONDS = Path("/sys/kernel/mm/damon/admin/kdamonds")


@contextlib.contextmanager
def proactive_reclaim_paused() -> Iterator[None]:
    """Stop the machine's running DAMON workers (kdamonds) for the duration, then start them
    again with the settings they had (the sysfs files keep them; nothing else is changed).

    This machine kind runs DAMON `pageout` on unmapped page cache in physical regions it finds
    idle. A file read into memory that sat free for long lands in such a region and counts as
    idle at once: a suite run found none of a freshly filled model file left a moment after its
    fill. Tests that count what the page cache holds pause it, as they drop the page cache
    machine-wide; they run one at a time (`support.marks.page_cache`). No DAMON: nothing to do."""
    paused = [state for state in sorted(DAMON_KDAMONDS.glob("[0-9]*/state")) if _turn_off(state)]
    try:
        yield
    finally:
        for state in paused:
            with contextlib.suppress(OSError):  # left off: only this machine's reclaim waits
                state.write_text("on\n")


def _turn_off(state: Path) -> bool:
    """Stop one running kdamond; whether it was running and now is not (a sysfs that refuses,
    where a test has no root, leaves it running: the test then runs as it would without)."""
    try:
        if state.read_text().strip() != "on":
            return False
        state.write_text("off\n")
    except OSError:
        return False
    return True
