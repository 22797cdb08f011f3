"""Keep the memory of fetched blocks in the process between blocks (glibc malloc settings).

Every fetched block is a new 1 MiB `bytes` object. In the mount process glibc served each of
them with its own mmap and unmapped it when freed (strace of a cold 1 GiB read: 1,063 mmap and
1,029 munmap calls, 264,000 minor page faults: one per page read). So every block landed in
fresh pages, and the kernel's copy of the socket data into them paid a page fault per 4 KiB;
on a VM that hands freed memory back to its host, each such fault is dearer still. With the
mmap threshold above the block size and a trim threshold of the memory budget, freed blocks
stay in the heap and the next block reuses them: 27,600-36,000 faults for the same read, and cold
reads 294 -> 330 MB/s (`bench/experiments/cold_variants.py`, means of 3).

Peak memory does not grow: at most `retain` bytes of freed heap are kept, and the data in
flight is bounded by `--max-memory` as before. Other C libraries have no `mallopt`; there this
does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20  # above any block size modelfs uses (1-4 MiB)


def keep_block_memory(retain: int) -> bool:
    """Serve block-sized allocations from the heap and keep up to `retain` freed bytes of it.
    True if the C library took the settings."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    taken = int(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) == 1
    taken = int(mallopt(_M_TRIM_THRESHOLD, min(retain, 1 << 30))) == 1 and taken
    if not taken:
        log.debug("mallopt refused the block memory settings")
    return taken
