"""The pull of one object on loopback, interleaved: boto3's `download_file` against `modelfs
pull` from one or more source trees, each a process of its own.

    python bench/experiments/pull_ab.py SRC [SRC ...]

Each SRC is a `src/` directory (the PYTHONPATH of its `python -m modelfs pull`), optionally
followed by `|OPTIONS` (pull options, space-separated). Every repeat runs boto3 (16 threads,
8 MiB parts, as bench/pulls.py) and then every SRC once, each into an empty directory with the
page cache dropped first, so a slow patch of a shared machine hits every variant alike.
Prints each run (MB/s, the process's CPU seconds, user and system), then per variant the
ranges. Env: SIZE_MB (1024), REPS (3). Starts its own SeaweedFS; run as root (drop_caches).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import serving

KEY = "big.bin"
BOTO3 = """
import sys
import boto3
from boto3.s3.transfer import TransferConfig
endpoint, access, secret, key, target = sys.argv[1:]
client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                      aws_secret_access_key=secret, region_name="us-east-1")
config = TransferConfig(max_concurrency=16, multipart_chunksize=8 << 20,
                        multipart_threshold=8 << 20)
client.download_file("perf", key, target, Config=config)
"""


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Wall seconds, user and system CPU seconds of `command` (a child process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main() -> None:
    variants = sys.argv[1:]
    size = int(os.environ.get("SIZE_MB", "1024")) << 20
    results: dict[str, list[tuple[float, float]]] = {}
    with serving(KEY, size) as (server, work, remotes):
        dest = work / "dest"
        for _ in range(int(os.environ.get("REPS", "3"))):
            for name in ["boto3", *variants]:
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir()
                subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
                if name == "boto3":
                    arguments = [server.endpoint, server.access_key, server.secret_key, KEY]
                    wall, user, system = timed(
                        [sys.executable, "-c", BOTO3, *arguments, str(dest / KEY)]
                    )
                else:
                    src, _, options = name.partition("|")
                    command = [sys.executable, "-m", "modelfs", "--config", str(remotes), "pull"]
                    command += [*options.split(), f"t:perf/{KEY}", str(dest)]
                    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
                    wall, user, system = timed(command, env)
                rate = size / wall / 1e6
                results.setdefault(name, []).append((rate, user + system))
                print(f"{name:32s} {rate:6.0f} MB/s  cpu {user + system:.2f} s", flush=True)
                print(f"{'':32s} (user {user:.2f}, system {system:.2f})", flush=True)
    for name, runs in results.items():
        rates = sorted(round(rate) for rate, _ in runs)
        cpus = sorted(round(cpu, 2) for _, cpu in runs)
        print(f"{name}: MB/s {rates}, CPU-s {cpus}")


if __name__ == "__main__":
    main()
