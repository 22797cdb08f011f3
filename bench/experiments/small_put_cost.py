"""CPU of each block cache write of a small file, as a cold read of a tree of small files does.

    python bench/experiments/small_put_cost.py SRC [SRC ...]

For each source tree (a `src/` directory; older layouts with `modelfs.blockcache` work too, to
compare commits), ROUNDS (5) rounds: a fresh cache under /var/tmp, then 2,000 `put`s of one
16 KiB block each (2,000 files of one block, like the benchmark's tree), from 4 threads as the
cache writer's pool does, through the page cache. Prints wall time and process CPU per put.

Each round deletes its cache at the end, as the benchmark deletes a mounter's cache between cold
runs. KEEP=1 keeps them until the end instead. The difference is the machine's file system:
ext4 without a journal (this VM's root file system; no jbd2 thread) does not reuse an inode
freed within the last 60 s, or 360 s while its inode table block is dirty. Each new inode
then skips every such inode of its group, looking each one up in the buffer cache
(`recently_deleted`, `find_get_block_common` at the top of `perf record`). A file created
right after thousands were deleted costs much more CPU than the same file created later.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PUTS = 2000
PAYLOAD = 16 << 10
THREADS = 4
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load(src: str) -> tuple[Any, Any]:
    """The DiskBlockCache and ObjectId classes of the source tree `src`."""
    sys.path.insert(0, src)
    for name in [module for module in sys.modules if module.split(".")[0] == "modelfs"]:
        del sys.modules[name]
    try:
        from modelfs.cache.disk import DiskBlockCache
        from modelfs.objects import ObjectId
    except ImportError:  # before the package was split by responsibility
        from modelfs.blockcache import DiskBlockCache  # type: ignore[no-redef]
        from modelfs.values import ObjectId  # type: ignore[no-redef]
    finally:
        sys.path.remove(src)
    return DiskBlockCache, ObjectId


def one_round(cache_class: Any, object_id: Any, tag: str, kept: list[Path]) -> str:
    root = Path(tempfile.mkdtemp(dir="/var/tmp"))
    cache = cache_class(root, 1 << 20, 8 << 30)
    objects = [object_id(f"tree/{i}", f'"{tag}-{i}"') for i in range(PUTS)]
    payload = os.urandom(PAYLOAD)
    buffered = "page_cache" in cache_class.put.__code__.co_varnames

    def put_every(nth: int) -> None:
        for obj in objects[nth::THREADS]:
            if buffered:
                cache.put(obj, 0, payload, page_cache=True)
            else:
                cache.put(obj, 0, payload)

    cpu, start = cpu_seconds(), time.perf_counter()
    workers = [threading.Thread(target=put_every, args=(nth,)) for nth in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    cache.close()
    if os.environ.get("KEEP"):
        kept.append(root)
    else:
        shutil.rmtree(root)
    return f"{wall / PUTS * 1e6:5.0f} us wall, {cpu / PUTS * 1e6:5.0f} us CPU per put"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    kept: list[Path] = []
    try:
        for src in argv[1:]:
            cache_class, object_id = load(src)
            for number in range(ROUNDS):
                print(f"{src}: {one_round(cache_class, object_id, f'{src}{number}', kept)}")
    finally:
        for root in kept:
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
