"""CPU per small-object GET, client and server, on this machine.

    python bench/experiments/small_get_cost.py

Starts its own SeaweedFS, puts 2,000 objects of 256 B - 64 KiB (like the benchmark's tree),
then GETs them all with 16 threads, once through boto3's `get_object` and once through
modelfs's `S3Store` (whose data GETs take the lean lane, leanget.py). Prints wall time and the
CPU time the client process and the `weed` server spent per GET (from /proc/<pid>/stat).
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from modelfs.store.s3 import S3Store  # noqa: E402
from support import SeaweedServer, remote_config  # noqa: E402

FILES = 2000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def measure(label: str, server_pid: int, get: object, keys: list[str]) -> None:
    assert callable(get)
    wall, client, server = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(get, keys))
    wall = time.perf_counter() - wall
    client = time.process_time() - client
    server = cpu_seconds(server_pid) - server
    per = 1000 / len(keys)
    print(
        f"{label}: {wall:.2f} s wall for {len(keys)} GETs; CPU per GET: "
        f"client {client * per:.2f} ms, server {server * per:.2f} ms"
    )


def main() -> int:
    server = SeaweedServer().start()
    try:
        client = server.client()
        bucket = server.create_bucket("small")
        rng = random.Random(1)
        keys = [f"tree/d{d:02d}/f{i:04d}.bin" for d in range(10) for i in range(FILES // 10)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda k: client.put_object(
                        Bucket=bucket, Key=k, Body=os.urandom(rng.randint(256, 65536))
                    ),
                    keys,
                )
            )
        assert server._process is not None
        pid = server._process.pid

        def boto3_get(key: str) -> int:
            return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())

        store = S3Store(remote_config(server.endpoint), bucket)
        infos = {key: store.head(key) for key in keys}
        store.warm_up(".modelfs-warm-up-probe")

        def store_get(key: str) -> int:
            info = infos[key]
            return len(store.get_range(info.id, 0, info.size))

        measure("boto3 get_object", pid, boto3_get, keys)
        measure("modelfs S3Store.get_range", pid, store_get, keys)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
