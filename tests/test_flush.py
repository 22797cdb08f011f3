"""`host.flush.start_writeback` and the pull's partial files: the disk writes start as blocks
land, not at the sync at the end. Seen in the kernel's own page flags (/proc/kpageflags, as
root): a page the pull wrote is dirty until its writeback has started and ended."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import time
from pathlib import Path

import pytest

from modelfs.objects import ObjectId
from modelfs.pull.partfiles import PartFiles
from support.pagecache import libc

MiB = 1 << 20
_KPF_DIRTY, _KPF_WRITEBACK = 1 << 4, 1 << 8
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="page frame numbers and their flags are root's to read"
)


def unwritten_pages(path: Path) -> int:
    """Pages of the file in the page cache that are dirty or still being written back."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    address = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value)
    try:
        for offset in range(0, size, mmap.PAGESIZE):  # map each page (cached: no disk read)
            ctypes.c_char.from_address(address + offset).value  # noqa: B018
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(address // mmap.PAGESIZE * 8)
            entries = struct.unpack(f"<{pages}Q", pagemap.read(pages * 8))
    finally:
        _LIBC.munmap(address, size)
        os.close(fd)
    unwritten = 0
    with open("/proc/kpageflags", "rb") as flags:
        for entry in entries:
            assert entry & _PRESENT
            flags.seek((entry & _PFN_MASK) * 8)
            (bits,) = struct.unpack("<Q", flags.read(8))
            unwritten += bool(bits & (_KPF_DIRTY | _KPF_WRITEBACK))
    return unwritten


_LIBC = libc()


def wait_until_written(path: Path, limit: float = 10.0) -> int:
    deadline = time.monotonic() + limit
    while (left := unwritten_pages(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_pulled_block_goes_to_the_disk_as_it_lands(tmp_path: Path) -> None:
    # Without a start, the kernel keeps written pages dirty for up to half a minute (or until
    # something syncs the filesystem).
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(8 * MiB))
    assert unwritten_pages(plain) > 0
    parts = PartFiles(tmp_path / "dest", MiB)
    try:
        parts.open("model.bin", "e")
        for index in range(8):
            parts.put(ObjectId("model.bin", "e"), index, os.urandom(MiB))
        part = next((tmp_path / "dest").glob("**/*.part"))
        assert wait_until_written(part) == 0
    finally:
        parts.close()
