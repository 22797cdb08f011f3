"""Run the real `modelfs` CLI in a subprocess and manage its mounts in tests.

A `Mounted` context manager mounts with `--daemon` (which returns once the mount answers) and
always cleans up: `modelfs unmount`, then `fusermount3 -u -z` if that failed, then kills the
mount process if it is still alive (as pyfuse3's own test/util.py does).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .proxy import FaultProxy
from .seaweed import SeaweedServer

MODELFS = [sys.executable, "-m", "modelfs"]


def run_cli(
    *args: str | os.PathLike[str], timeout: float = 60.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODELFS, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=check
    )


def is_mounted(path: str | os.PathLike[str]) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split(" ")[4] == target for line in mountinfo)


def force_unmount(path: str | os.PathLike[str]) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Mounted:
    def __init__(
        self,
        config: Path,
        spec: str,
        mountpoint: Path,
        cache_dir: Path,
        *options: str,
    ) -> None:
        self.config = config
        self.spec = spec
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.options = options
        self.pid: int | None = None
        self.stderr = ""  # what `mount --daemon` printed (a warning, when it mounts offline)

    def __enter__(self) -> Mounted:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        result = run_cli(
            "--config", self.config, "mount", "--daemon", "--cache-dir", self.cache_dir,
            *self.options, self.spec, self.mountpoint,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"mount failed ({result.returncode}): {result.stderr.strip()}")
        self.stderr = result.stderr
        self.pid = int(self.status()["pid"])
        return self

    def status(self) -> dict[str, Any]:
        result = run_cli("status", "--json", self.mountpoint, check=True)
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def unmount(self) -> None:
        if is_mounted(self.mountpoint):
            result = run_cli("unmount", self.mountpoint)
            if result.returncode != 0:
                force_unmount(self.mountpoint)
        self.wait_exit()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        self.wait_exit()

    def wait_exit(self, timeout: float = 30.0) -> None:
        if self.pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.unmount()
        finally:
            if is_mounted(self.mountpoint):
                force_unmount(self.mountpoint)
            self.kill()


@dataclass
class MountEnv:
    """A bucket on the test SeaweedFS, reached through the fault proxy, and where to mount it."""

    seaweed: SeaweedServer
    proxy: FaultProxy
    bucket: str
    config: Path
    mountpoint: Path
    cache_dir: Path

    @classmethod
    def create(
        cls: type[_Env],
        seaweed: SeaweedServer,
        proxy: FaultProxy,
        bucket: str,
        tmp_path: Path,
        make_config: Callable[..., Path],
    ) -> _Env:
        config = make_config(tmp_path, proxy.endpoint)
        return cls(seaweed, proxy, bucket, config, tmp_path / "mnt", tmp_path / "cache")

    def put(self, key: str, data: bytes) -> None:
        self.seaweed.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def mount(self, *options: str, prefix: str = "", cache_dir: Path | None = None) -> Mounted:
        spec = f"test:{self.bucket}" + (f"/{prefix}" if prefix else "")
        return Mounted(self.config, spec, self.mountpoint, cache_dir or self.cache_dir, *options)


_Env = TypeVar("_Env", bound=MountEnv)
