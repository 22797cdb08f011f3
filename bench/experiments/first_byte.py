"""Time to first byte on a fresh mount, split into stat, open and the first 4 KiB read.

    [KEY=weights/medium.bin SIZE_MB=1024 WARM=1] python bench/experiments/first_byte.py [options]

Starts its own SeaweedFS (tests/support/seaweed.py) with one object of SIZE_MB (default 64 MiB)
at KEY (default big.dat) and 20 small ones,
then three times: mount with an empty cache, stat + open + read 4 KiB, unmount. With WARM=1
the object is read whole first and the page cache dropped before the stat, as in the
benchmark's warm first-byte row. Prints the split and, for scale, one boto3 ranged GET of
4 KiB on a warm client. Run as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SeaweedServer, mounted, write_remotes


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


KEY = os.environ.get("KEY", "big.dat")
SIZE = int(os.environ.get("SIZE_MB", "64")) << 20
WARM = os.environ.get("WARM") == "1"


def one_mount(remotes: Path, work: Path, extra: list[str]) -> str:
    with mounted(remotes, work, extra) as mountpoint:
        os.listdir(mountpoint)  # what the benchmark's readiness check does
        target = mountpoint / KEY
        if WARM:
            subprocess.run(["dd", f"if={target}", "of=/dev/null", "bs=1M"], capture_output=True)
            subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
            time.sleep(0.5)
        start = time.perf_counter()
        target.stat()
        stat_ms = ms_since(start)
        start = time.perf_counter()
        fd = os.open(target, os.O_RDONLY)
        open_ms = ms_since(start)
        start = time.perf_counter()
        os.read(fd, 4096)
        read_ms = ms_since(start)
        os.close(fd)
    total = stat_ms + open_ms + read_ms
    return f"stat {stat_ms:.1f} open {open_ms:.1f} read {read_ms:.1f} total {total:.1f} ms"


def _random_file(size: int, directory: Path) -> str:
    path = directory / "object.bin"
    with path.open("wb") as handle:
        for _ in range(0, size, 16 << 20):
            handle.write(os.urandom(16 << 20))
        handle.truncate(size)
    return str(path)


def main(argv: list[str]) -> int:
    server = SeaweedServer().start()
    try:
        client = server.client()
        server.create_bucket("perf")
        for index in range(20):
            client.put_object(Bucket="perf", Key=f"other{index}.bin", Body=b"x" * 100)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            work = Path(scratch)
            client.upload_file(_random_file(SIZE, work), "perf", KEY)
            remotes = write_remotes(work / "remotes.conf", server)
            for _ in range(3):
                print(one_mount(remotes, work, argv[1:]), flush=True)
        start = time.perf_counter()
        client.get_object(Bucket="perf", Key=KEY, Range="bytes=0-4095")["Body"].read()
        print(f"boto3 ranged GET of 4 KiB, warm client: {ms_since(start):.1f} ms")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
