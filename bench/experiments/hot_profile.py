"""Where a hot re-read spends its time: `perf record` of `dd` re-reading a file from the page
cache, through modelfs and from a local copy.

    python bench/experiments/hot_profile.py

The benchmark's hot row, profiled: for each of a modelfs file and a local copy of the same
bytes, drop the page cache, read the file once (modelfs from its full block cache), then
re-read it with `dd bs=1M` under `perf record -g`. Prints the rate of each re-read, how many
FUSE read requests reached modelfs during it (a page-cache hit sends none; measured 0-24 per
GiB), the page-cache pages and folios of each file (`page_cache_folios.py`) and the top
kernel symbols of each profile. Env: SIZE_MB (1024), REPS (3). Starts its own SeaweedFS.
Run as root, with perf.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import SeaweedServer, fs_statistic, mounted, sample_object, write_remotes
from page_cache_folios import count_folios

SIZE = int(os.environ.get("SIZE_MB", "1024")) << 20
REPS = int(os.environ.get("REPS", "3"))
KEY = "hot.dat"
TOP = 12


def drop_page_cache() -> None:
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)


def dd(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)
    return SIZE / (time.perf_counter() - start) / 1e6


def profiled_reread(path: Path, data: Path, counter: Callable[[], int]) -> tuple[float, int, str]:
    """Re-read `path` (read once already); the rate, the requests `counter` saw during that
    re-read, and the top symbols of the same re-read repeated under perf."""
    before = counter()
    rate = dd(path)
    requests = counter() - before
    drop_page_cache()
    dd(path)  # the first read again, so the profiled re-read is a first re-read too
    subprocess.run(
        [
            "perf",
            "record",
            "-q",
            "-g",
            "-o",
            str(data),
            "--",
            "dd",
            f"if={path}",
            "of=/dev/null",
            "bs=1M",
        ],
        capture_output=True,
        check=True,
    )
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--no-children",
            "--sort",
            "sym",
            "--stdio",
            "--percent-limit",
            "1",
            "-g",
            "none",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    symbols = [line for line in report.stdout.splitlines() if line.strip() and line[0] != "#"]
    return rate, requests, "\n".join(symbols[:TOP])


def one_round(mountpoint: Path, local: Path, work: Path) -> None:
    mounted_file = mountpoint / KEY
    for name, path in (("modelfs", mounted_file), ("local", local)):
        drop_page_cache()
        dd(path)
        counter = functools.partial(fs_statistic, mountpoint, "reads")
        rate, requests, top = profiled_reread(path, work / f"perf-{name}.data", counter)
        heads, tails, single = count_folios(str(path))
        print(
            f"== {name}: first re-read {rate:.0f} MB/s; folios in the first 64 MiB: "
            f"{heads} large ({heads + tails} pages), {single} single pages"
        )
        print(f"   FUSE read requests reaching modelfs during the re-read: {requests}")
        print(top, flush=True)


def main() -> int:
    server = SeaweedServer().start()
    try:
        body = sample_object(server, KEY, SIZE)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            work = Path(scratch)
            local = work / "local.dat"
            local.write_bytes(body)
            del body
            remotes = write_remotes(work / "remotes.conf", server)
            with mounted(remotes, work, []) as mountpoint:
                dd(mountpoint / KEY)  # fills the block cache
                for _ in range(REPS):
                    one_round(mountpoint, local, work)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
