"""Cold sequential read of a large object with and without drop-behind, rate per 512 MiB.

    python bench/experiments/drop_behind.py

Each round mounts twice with an empty cache (`--drop-behind 0`, then `--drop-behind 1`, which
drops whatever the memory), drops the page cache and reads the object with 1 MiB `read` calls,
printing the overall rate, the rate of each 512 MiB and how much page cache the mount dropped
behind the reader. Env: SIZE_MB
(4096), REPS (2), KEY (big.dat; a model suffix such as big.bin also starts the whole-object
fetch). Starts its own SeaweedFS (tests/support/seaweed.py). Run as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _common import fs_statistic, mounted, serving

SIZE = int(os.environ.get("SIZE_MB", "4096")) << 20
REPS = int(os.environ.get("REPS", "2"))
KEY = os.environ.get("KEY", "big.dat")
STRETCH = 512 << 20
VARIANTS = {"--drop-behind 0": ["--drop-behind", "0"], "--drop-behind 1": ["--drop-behind", "1"]}


def drop_page_cache() -> None:
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    time.sleep(1)


def read_stretches(path: Path) -> tuple[float, list[float]]:
    """MB/s over the whole file and over each 512 MiB of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        position, rates = 0, []
        start = stretch_start = time.perf_counter()
        while chunk := os.read(fd, 1 << 20):
            position += len(chunk)
            if position % STRETCH == 0:
                now = time.perf_counter()
                rates.append(STRETCH / (now - stretch_start) / 1e6)
                stretch_start = now
        return position / (time.perf_counter() - start) / 1e6, rates
    finally:
        os.close(fd)


def dropped_behind(mountpoint: Path) -> int:
    return fs_statistic(mountpoint, "dropped_behind")


def main() -> int:
    with serving(KEY, SIZE) as (_server, work, remotes):
        for _ in range(REPS):
            for name, options in VARIANTS.items():
                with mounted(remotes, work, options) as mountpoint:
                    (mountpoint / KEY).stat()
                    drop_page_cache()
                    overall, rates = read_stretches(mountpoint / KEY)
                    dropped = dropped_behind(mountpoint) >> 20
                stretches = " ".join(f"{rate:.0f}" for rate in rates)
                print(
                    f"{name}: {overall:.0f} MB/s, per 512 MiB: {stretches}; dropped {dropped} MiB",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
