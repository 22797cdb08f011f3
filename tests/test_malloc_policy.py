"""The malloc policy (`memory.tune_malloc`): after it, a block-sized allocation comes from the
heap (it can be reused after a free) instead of its own mmap (fresh pages every time). Checked in
a fresh interpreter with glibc's own accounting (`mallinfo2().hblkhd`: bytes in mmapped chunks).
And it is the only policy: no other module of the package calls `mallopt`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import modelfs
from modelfs.memory import MMAP_THRESHOLD, malloc_settings

_PROBE = """
import ctypes, sys
from modelfs.memory import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert tune_malloc(256 << 20)
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


def test_the_policy_keeps_blocks_in_the_heap_within_the_budget() -> None:
    settings = malloc_settings(256 << 20)
    assert settings.mmap_threshold == MMAP_THRESHOLD > 4 << 20  # above every block size
    assert settings.trim_threshold == 256 << 20  # freed heap kept: at most the budget
    assert settings.arena_max == 2
    assert malloc_settings(8 << 30).trim_threshold == 1 << 30  # mallopt takes an int


def test_only_the_memory_module_sets_malloc_parameters() -> None:
    """Two policies once contradicted each other (one gave buffers back, one kept them)."""
    package = Path(modelfs.__file__).parent
    callers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "mallopt" in path.read_text()
    )
    assert callers == ["memory.py"]
