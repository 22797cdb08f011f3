"""memtune: after `keep_block_memory`, a block-sized allocation comes from the heap (it can be
reused after a free) instead of its own mmap (fresh pages every time). Checked in a fresh
interpreter with glibc's own accounting (`mallinfo2().hblkhd`: bytes in mmapped chunks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import ctypes, sys
from modelfs.memtune import keep_block_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert keep_block_memory(256 << 20)
before = libc.mallinfo2().hblkhd
block = bytes(2 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def mmapped_bytes_for_a_block(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout)


def test_block_sized_allocations_come_from_the_heap_once_tuned() -> None:
    if not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"):
        pytest.skip("not glibc >= 2.33: no mallinfo2 to observe the allocator with")
    assert mmapped_bytes_for_a_block("default") >= 2 << 20  # glibc's default: its own mmap
    assert mmapped_bytes_for_a_block("tuned") == 0
