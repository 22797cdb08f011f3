"""CPU and time of writing 1 GiB into the block cache as a cold read does: 1,024 puts of 1 MiB.

    python bench/experiments/cache_put_cost.py [THREADS ...]

For each thread count (default 4 and 1: the cache writer's pool has 4 threads), 3 rounds: a
fresh cache under /var/tmp, the page cache dropped, 1,024 `DiskBlockCache.put` calls of 1 MiB
(random bytes, 64 distinct blocks so the payload is not in the CPU's cache) split across the
threads. Prints the rate and the process's user and system CPU seconds. Run as root (it drops
the page cache).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from modelfs.cache.disk import DiskBlockCache
from modelfs.objects import ObjectId

BLOCK = 1 << 20
PUTS = 1024


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def one_round(threads: int, payloads: list[bytes], tag: str) -> str:
    root = Path(tempfile.mkdtemp(dir="/var/tmp"))
    cache = DiskBlockCache(root, BLOCK, 8 << 30)
    obj = ObjectId("cache-put-cost", f'"{tag}"')
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)

    def put_every(nth: int) -> None:
        for index in range(nth, PUTS, threads):
            cache.put(obj, index, payloads[index % len(payloads)])

    user0, sys0 = cpu()
    start = time.perf_counter()
    workers = [threading.Thread(target=put_every, args=(nth,)) for nth in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    user, system = cpu()
    cache.close()
    shutil.rmtree(root)
    return (
        f"{threads} threads: {PUTS * BLOCK / wall / 2**20:.0f} MiB/s, "
        f"user {user - user0:.2f} s, system {system - sys0:.2f} s"
    )


def main(argv: list[str]) -> int:
    counts = [int(word) for word in argv[1:]] or [4, 1]
    payloads = [os.urandom(BLOCK) for _ in range(64)]
    for round_number in range(3):
        for threads in counts:
            print(one_round(threads, payloads, f"{round_number}-{threads}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
