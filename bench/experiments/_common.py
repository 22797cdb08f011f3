"""What the experiment scripts share: a remotes file for a SeaweedFS server, and a mount."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.seaweed import SeaweedServer  # noqa: E402

__all__ = ["SeaweedServer", "mounted", "write_remotes"]


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
