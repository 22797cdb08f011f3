"""Run the real `modelfs` CLI in a subprocess and manage its mounts in tests.

A `Mounted` context manager mounts with `--daemon` (which returns once the mount answers) and
always cleans up: `modelfs unmount`, then `fusermount3 -u -z` if that failed, then kills the
mount process if it is still alive (as pyfuse3's own test/util.py does).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from modelfs.host.control import process_start_time

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


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "8m") mounted on `path` (made 0700) for the block: a disk that
    really fills up, so writes to it say ENOSPC (as root, only a full disk does). Needs root."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(path: Path) -> int:
    """Write zeros to a new file `path` until its disk is full; returns the bytes it took."""
    taken = 0
    with path.open("wb", buffering=0) as filler:
        with contextlib.suppress(OSError):
            while True:
                taken += filler.write(bytes(1 << 20))
        with contextlib.suppress(OSError):
            while True:
                taken += filler.write(bytes(4096))
    return taken


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

    def command(self) -> list[str | os.PathLike[str]]:
        """The `modelfs` arguments that mount it in the background."""
        return [
            "--config", self.config, "mount", "--daemon", "--cache-dir", self.cache_dir,
            *self.options, self.spec, self.mountpoint,
        ]  # fmt: skip

    def __enter__(self) -> Mounted:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        result = run_cli(*self.command())
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
        # Its zombie counts as exited: it has closed its files (the FUSE device too), and this
        # machine's init may take a second or two to reap an orphan.
        while time.monotonic() < deadline:
            if process_start_time(self.pid) is None:
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

    # -- the bucket, straight from the server (not through the proxy) ----------------------------

    def object(self, key: str) -> bytes:
        body: bytes = self.seaweed.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def bucket_keys(self) -> list[str]:
        listing = self.seaweed.client().list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def open_uploads(self) -> list[str]:
        uploads = self.seaweed.client().list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in uploads.get("Uploads", [])]

    def unfinished_uploads(self) -> set[str]:
        """Multipart uploads modelfs sent parts to but never completed (POST ?uploadId=) nor
        aborted (DELETE ?uploadId=), from the requests the proxy saw. (SeaweedFS 4.48 keeps
        listing some completed uploads in ListMultipartUploads, so the proof is client-side.)"""
        started, finished = set(), set()
        for request in self.proxy.requests:
            match = re.search(r"uploadId=([^&]+)", request.path)
            if match is None:
                continue
            if request.method == "PUT":
                started.add(match.group(1))
            elif request.method in ("POST", "DELETE") and request.status in (200, 204):
                finished.add(match.group(1))
        return started - finished

    def wait_for_object(self, key: str, data: bytes, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if key in self.bucket_keys() and self.object(key) == data:
                return
            time.sleep(0.2)
        raise AssertionError(f"{key} never reached the bucket with the expected bytes")


_Env = TypeVar("_Env", bound=MountEnv)
