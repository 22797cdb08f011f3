"""Random reads of a cold model file while it is fetched whole: the latency of each, over time.

    python bench/experiments/random_during_fetch.py LABEL=SRC[:OPTIONS] ... [s3fs=s3fs]

The benchmark's cold fio rows give one figure for 5 seconds of random reads. This shows what is
inside it. For each variant (a `src/` directory with optional mount options, or `s3fs`), on a
fresh mount with an empty cache after `drop_caches`, one thread reads BS_K KiB (128) at random
aligned offsets of a 1 GiB object for DUR seconds (5) with `pread`, as fio's psync engine does.
It prints the rate, then when the reads turned fast (the first read under 1 ms followed by
more than 50 reads within 0.1 s: the file is all local from then on) and the median latency of
the reads before that. VERBOSE=1 adds the reads, median, 90th percentile and maximum latency per
half second. Variants run in turn, REPS (1) times over.

KEY (big.bin) keeps a model suffix so that an open starts modelfs's whole-object fetch; s3fs
(with a cache directory) downloads the whole object as well. Starts its own SeaweedFS; run as
root.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from _common import mounted, serving
from cold_ab import s3fs_mounted

SIZE = 1 << 30
KEY = os.environ.get("KEY", "big.bin")
READ = int(os.environ.get("BS_K", "128")) << 10
DURATION = float(os.environ.get("DUR", "5"))
REPS = int(os.environ.get("REPS", "1"))
FAST = 0.001  # seconds: a read this quick came from local data
BURST = 50  # reads within 0.1 s after a fast one: no fetch is holding them up any more

Latency = tuple[float, float]  # (seconds since the start, seconds the read took)


def random_reads(path: Path) -> list[Latency]:
    fd = os.open(path, os.O_RDONLY)
    rng = random.Random(1)
    reads: list[Latency] = []
    start = time.perf_counter()
    try:
        while (now := time.perf_counter()) - start < DURATION:
            os.pread(fd, READ, rng.randrange(SIZE // READ) * READ)
            reads.append((now - start, time.perf_counter() - now))
    finally:
        os.close(fd)
    return reads


def fast_from(reads: list[Latency]) -> float | None:
    for at, took in reads:
        if took < FAST and sum(1 for other, _ in reads if at <= other < at + 0.1) > BURST:
            return at
    return None


def report(reads: list[Latency]) -> None:
    rate = len(reads) * READ / DURATION / 1e6
    turned = fast_from(reads)
    before = sorted(took for at, took in reads if turned is None or at < turned)
    median = before[len(before) // 2] * 1e3 if before else 0.0
    when = "never" if turned is None else f"at {turned:.2f} s"
    print(f"  {rate:7.0f} MB/s; fast {when}; {len(before)} reads before, median {median:.1f} ms")
    if not os.environ.get("VERBOSE"):
        return
    for half in range(int(DURATION * 2)):
        took = sorted(t for at, t in reads if half / 2 <= at < (half + 1) / 2)
        if took:
            print(
                f"    {half / 2:4.1f} s: {len(took):6d} reads, median "
                f"{took[len(took) // 2] * 1e3:7.2f} ms, p90 {took[int(len(took) * 0.9)] * 1e3:7.2f}"
                f", max {took[-1] * 1e3:7.1f}"
            )


def main(argv: list[str]) -> int:
    variants = [word.partition("=") for word in argv[1:]]
    if not variants:
        print(__doc__)
        return 2
    with serving(KEY, SIZE) as (server, work, remotes):
        for _ in range(REPS):
            for label, _, spec in variants:
                src, _, options = spec.partition(":")
                subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
                print(label, flush=True)
                mount: contextlib.AbstractContextManager[Path]
                if src == "s3fs":
                    mount = s3fs_mounted(server, work)
                else:
                    env = {"PYTHONPATH": str(Path(src).resolve())}
                    mount = mounted(remotes, work, options.split(), env)
                with mount as mountpoint:
                    report(random_reads(mountpoint / KEY))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
