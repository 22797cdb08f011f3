"""Cold sequential `dd` of one object through fresh modelfs mounts, for A/B runs of code changes.

    python bench/experiments/cold_variants.py "VARIANT;VARIANT;..."

Each VARIANT is a comma-separated list of NAME=VALUE environment settings for the mount process
(empty: as is). `PYTHONPATH=/path/to/other/checkout/src` runs another version of modelfs;
`WARM=1` also reads the object again with the page cache dropped; `ARGS=--transfers 4` adds
mount options (space-separated). Every round mounts each variant with an empty cache, drops
the page cache and reads the object once with `dd bs=1M`; rounds interleave the variants so
drift on the machine hits them alike. Env: SIZE_MB (1024), REPS (3), KEY (big.dat; a model
suffix such as big.bin also starts the whole-object fetch). Starts its own SeaweedFS
(tests/support/seaweed.py). Run as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _common import mounted, serving

SIZE = int(os.environ.get("SIZE_MB", "1024")) << 20
REPS = int(os.environ.get("REPS", "3"))
KEY = os.environ.get("KEY", "big.dat")


def drop_page_cache() -> None:
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    time.sleep(1)


def dd_mb_per_s(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)
    return SIZE / (time.perf_counter() - start) / 1e6


def one_round(remotes: Path, work: Path, env: dict[str, str]) -> list[str]:
    with mounted(remotes, work, env.get("ARGS", "").split(), env) as mountpoint:
        target = mountpoint / KEY
        target.stat()
        drop_page_cache()
        figures = [f"{dd_mb_per_s(target):.0f}"]
        if env.get("WARM"):
            drop_page_cache()
            figures.append(f"warm {dd_mb_per_s(target):.0f}")
        return figures


def main(argv: list[str]) -> int:
    variants = [
        dict(item.split("=", 1) for item in text.split(",") if item) for text in argv[1].split(";")
    ]
    with serving(KEY, SIZE) as (_server, work, remotes):
        results: list[list[str]] = [[] for _ in variants]
        for _ in range(REPS):
            for index, env in enumerate(variants):
                results[index] += one_round(remotes, work, env)
                print(index, env, results[index], flush=True)
    for env, figures in zip(variants, results, strict=True):
        print(env or "as is", "MB/s:", ", ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
