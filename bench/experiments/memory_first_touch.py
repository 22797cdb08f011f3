"""How fast this machine hands out memory nobody touched lately, against memory already mapped.

    python bench/experiments/memory_first_touch.py [GIB]   (default 12)

Maps GIB GiB of anonymous memory and writes it twice, 256 MiB at a time, printing GB/s for
every 2 GiB. The first pass pays for page faults; the second is a plain memcpy. On the 2-core
Firecracker VM the guest's virtio-balloon has free page reporting on (feature bit 5): pages the
guest frees go back to the host, and the next use of such a page costs a fault in the host as
well. That is the price a mounter pays for every page-cache page it fills during a large cold
read after `drop_caches`, and what a raw boto3 download (which reuses its buffers) does not pay.
"""

from __future__ import annotations

import mmap
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sysutil import balloon_reports_free_pages

_SLICE = 256 << 20
_REPORT_EVERY = 8  # slices: 2 GiB


def main(argv: list[str]) -> int:
    size = int(argv[1] if len(argv) > 1 else "12") << 30
    print(f"virtio-balloon free page reporting: {balloon_reports_free_pages()}")
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pattern = b"\1" * _SLICE
    for name in ("first touch", "rewrite"):
        rates = []
        start = time.perf_counter()
        for number, offset in enumerate(range(0, size, _SLICE), 1):
            memory[offset : offset + _SLICE] = pattern
            if number % _REPORT_EVERY == 0:
                now = time.perf_counter()
                rates.append(f"{_SLICE * _REPORT_EVERY / (now - start) / 1e9:.2f}")
                start = now
        print(f"{name}: GB/s per 2 GiB: {' '.join(rates)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
