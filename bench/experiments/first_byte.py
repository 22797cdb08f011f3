"""Time to first byte on a fresh mount, split into stat, open and the first 4 KiB read.

    python bench/experiments/first_byte.py [extra modelfs mount options]

Starts its own SeaweedFS (tests/support/seaweed.py) with a 64 MiB object and 20 small ones,
then three times: mount with an empty cache, stat + open + read 4 KiB, unmount. Prints the
split and, for scale, one boto3 ranged GET of 4 KiB on a warm client. Run as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.seaweed import SeaweedServer  # noqa: E402


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def one_mount(config: Path, work: Path, extra: list[str]) -> str:
    cache, mountpoint = work / "cache", work / "mnt"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    mountpoint.mkdir(exist_ok=True)
    mount = [sys.executable, "-m", "modelfs", "--config", str(config), "mount", "--daemon"]
    mount += ["--cache-dir", str(cache), *extra, "t:perf", str(mountpoint)]
    subprocess.run(mount, capture_output=True, check=True, timeout=60)
    try:
        target = mountpoint / "big.dat"
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
    finally:
        subprocess.run([sys.executable, "-m", "modelfs", "unmount", str(mountpoint)], check=False)


def main(argv: list[str]) -> int:
    server = SeaweedServer().start()
    try:
        client = server.client()
        server.create_bucket("perf")
        client.put_object(Bucket="perf", Key="big.dat", Body=os.urandom(64 << 20))
        for index in range(20):
            client.put_object(Bucket="perf", Key=f"other{index}.bin", Body=b"x" * 100)
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            work = Path(scratch)
            config = work / "remotes.conf"
            config.write_text(
                f"[t]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {server.access_key}\n"
                f"secret_access_key = {server.secret_key}\nendpoint = {server.endpoint}\n"
                "region = us-east-1\n"
            )
            for _ in range(3):
                print(one_mount(config, work, argv[1:]), flush=True)
        start = time.perf_counter()
        client.get_object(Bucket="perf", Key="big.dat", Range="bytes=0-4095")["Body"].read()
        print(f"boto3 ranged GET of 4 KiB, warm client: {ms_since(start):.1f} ms")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
