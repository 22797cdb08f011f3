"""Cold `ls -lR` and cold read of every file of the benchmark's small-file tree.

    REPS=3 python bench/experiments/tree_ops.py [extra modelfs mount options]

Uploads DATA_DIR/tree (default /var/tmp/mfsb-fulldata, made by bench.py) to its own
SeaweedFS, then REPS times each: a fresh mount with an empty cache, the timed operation,
unmount. Prints a raw boto3 listing of the same keys for scale. Run as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import REPO, SeaweedServer, mounted, write_remotes

_PROBE = REPO / "bench" / "probe.py"


def upload_tree(server: SeaweedServer, root: Path) -> int:
    client = server.client()
    files = [path for path in root.rglob("*") if path.is_file()]

    def put(path: Path) -> None:
        key = path.relative_to(root.parent).as_posix()
        client.put_object(Bucket="perf", Key=key, Body=path.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
    return len(files)


def timed_ls(mountpoint: Path) -> float:
    start = time.perf_counter()
    command = ["sh", "-c", 'exec ls -lR "$0" > /dev/null', str(mountpoint / "tree")]
    subprocess.run(command, check=True)
    return (time.perf_counter() - start) * 1000


def timed_read(mountpoint: Path) -> float:
    out = subprocess.run(
        [sys.executable, str(_PROBE), "read-tree", str(mountpoint / "tree")],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(out.stdout)["seconds"]) * 1000


def main(argv: list[str]) -> int:
    data = Path(os.environ.get("DATA_DIR", "/var/tmp/mfsb-fulldata"))
    reps = int(os.environ.get("REPS", "3"))
    server = SeaweedServer().start()
    try:
        server.create_bucket("perf")
        count = upload_tree(server, data / "tree")
        client = server.client()
        with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
            work = Path(scratch)
            remotes = write_remotes(work / "remotes.conf", server)
            for _ in range(reps):
                start = time.perf_counter()
                paginator = client.get_paginator("list_objects_v2")
                pages = paginator.paginate(Bucket="perf", Prefix="tree/")
                keys = sum(page.get("KeyCount", 0) for page in pages)
                raw = (time.perf_counter() - start) * 1000
                with mounted(remotes, work, argv[1:]) as mountpoint:
                    os.listdir(mountpoint)
                    ls_ms = timed_ls(mountpoint)
                with mounted(remotes, work, argv[1:]) as mountpoint:
                    os.listdir(mountpoint)
                    read_ms = timed_read(mountpoint)
                print(
                    f"{count} files: boto3 list {raw:.0f} ms ({keys} keys), "
                    f"ls -lR cold {ls_ms:.0f} ms, read cold {read_ms:.0f} ms",
                    flush=True,
                )
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
