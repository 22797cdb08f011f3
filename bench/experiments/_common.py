"""What the experiment scripts share: a remotes file for a SeaweedFS server, and a mount."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.seaweed import SeaweedServer  # noqa: E402

__all__ = ["SeaweedServer", "fs_statistic", "mounted", "sample_object", "serving", "write_remotes"]


def write_remotes(path: Path, server: SeaweedServer) -> Path:
    """A remotes file whose remote `t` is `server`."""
    path.write_text(
        f"[t]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {server.access_key}\n"
        f"secret_access_key = {server.secret_key}\nendpoint = {server.endpoint}\n"
        "region = us-east-1\n"
    )
    return path


@contextlib.contextmanager
def mounted(
    remotes: Path, work: Path, extra: list[str], env: dict[str, str] | None = None
) -> Iterator[Path]:
    """`t:perf` mounted at work/mnt with an empty cache in work/cache; unmounted at exit."""
    cache, mountpoint = work / "cache", work / "mnt"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    mountpoint.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "modelfs", "--config", str(remotes), "mount", "--daemon"]
    command += ["--cache-dir", str(cache), *extra, "t:perf", str(mountpoint)]
    subprocess.run(
        command, capture_output=True, check=True, timeout=60, env={**os.environ, **(env or {})}
    )
    try:
        yield mountpoint
    finally:
        subprocess.run([sys.executable, "-m", "modelfs", "unmount", str(mountpoint)], check=False)


def sample_object(server: SeaweedServer, key: str, size: int) -> bytes:
    """Put `size` bytes (a multiple of 64 MiB, random, repeating) under `key` in bucket
    `perf`, which this creates; the bytes."""
    server.create_bucket("perf")
    body = os.urandom(64 << 20) * (size >> 26)
    server.client().put_object(Bucket="perf", Key=key, Body=body)
    return body


def fs_statistic(mountpoint: Path, name: str) -> int:
    """One of the mount's filesystem counters (`modelfs status --json`, "fs")."""
    status = subprocess.run(
        [sys.executable, "-m", "modelfs", "status", "--json", str(mountpoint)],
        capture_output=True,
        check=True,
        text=True,
    )
    return int(json.loads(status.stdout)["fs"][name])


@contextlib.contextmanager
def serving(key: str, size: int) -> Iterator[tuple[SeaweedServer, Path, Path]]:
    """A SeaweedFS server holding a sample object (`sample_object`), a scratch directory in
    $SCRATCH (default /var/tmp; /dev/shm puts the block cache in memory) and a remotes file
    for the server in it; all gone at exit."""
    server = SeaweedServer().start()
    try:
        sample_object(server, key, size)
        with tempfile.TemporaryDirectory(dir=os.environ.get("SCRATCH", "/var/tmp")) as scratch:
            work = Path(scratch)
            yield server, work, write_remotes(work / "remotes.conf", server)
    finally:
        server.close()
