"""`modelfs run` with the stand-in app (`standin_app.py`) over a real bucket: the shared setup.

`app_setup` puts the app's models (`MODELS`, with a manifest) under cache_hub_v23/ of a bucket,
writes a config whose remote "e2e" points at `endpoint`, and yields a `Setup` whose `run_argv`
is the `modelfs run` command line; on exit it detaches the mountpoint and kills any daemon left
(a failing test must not leave a mount behind). The helpers below drive such a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelfs.host import control
from modelfs.host.health import MountStatus, check_mount

from . import make_config
from .seaweed import SeaweedServer

STANDIN = str(Path(__file__).parent / "standin_app.py")
MODELS = {
    "models/model.safetensors": os.urandom(3 << 20),  # several 1 MiB FUSE reads
    "models/config.json": b'{"dim": 1024}',
    "tokenizer/tokenizer.json": b'{"vocab": ["a", "b"]}',
}
# How long a test waits for something that takes about a second (a mount, a heal).
WAIT_SECONDS = 60


@dataclass
class Setup:
    config: Path
    spec: str
    mountpoint: Path
    workdir: Path
    cache_dir: Path
    bucket: str
    seaweed: SeaweedServer

    def run_argv(self, *app_args: str, extra: tuple[str, ...] = ()) -> list[str]:
        return [
            sys.executable, "-m", "modelfs", "--config", str(self.config), "run",
            "--mount", self.spec, str(self.mountpoint),
            "--link", "cache_hub=cache_hub_v23",
            "--workdir", str(self.workdir),
            "--cache-dir", str(self.cache_dir),
            "--watch-interval", "0.2s",
            "--probe-timeout", "2s",
            *extra,
            "--", sys.executable, STANDIN, *app_args,
        ]  # fmt: skip

    def mount_daemon(self) -> int:
        """Mount as a user would before `run`; return the daemon's pid."""
        done = modelfs(
            self.config, "mount", "--daemon", "--cache-dir", str(self.cache_dir),
            self.spec, str(self.mountpoint),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return daemon_pid(self.mountpoint)

    def status(self) -> MountStatus:
        return check_mount(str(self.mountpoint), self.spec, timeout=5).status

    def log_in_bucket(self) -> str:
        body = self.seaweed.client().get_object(Bucket=self.bucket, Key="logs/app.log")["Body"]
        return str(body.read().decode())


def modelfs(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfs", "--config", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS * 2,
        check=False,
    )


def daemon_pid(mountpoint: Path) -> int:
    state = control.read_state(str(mountpoint))
    assert state is not None, f"no live modelfs daemon for {mountpoint}"
    return int(state["pid"])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_line_with(process: subprocess.Popen[str], marker: str) -> str:
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        assert line, f"app output ended before {marker!r}"
        if marker in line:
            return line


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL `modelfs run` and the app it started (their own session) if still running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def cleanup_mount(mountpoint: Path) -> None:
    state = control.read_state(str(mountpoint))
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)
    if state is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(state["pid"]), signal.SIGKILL)


@contextlib.contextmanager
def app_setup(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, endpoint: str | None = None
) -> Iterator[Setup]:
    """See the module docstring; `endpoint` defaults to the server's own."""
    client = seaweed.client()
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in MODELS.items()}
    for name, data in MODELS.items():
        client.put_object(Bucket=bucket, Key=f"cache_hub_v23/{name}", Body=data)
    client.put_object(
        Bucket=bucket, Key="cache_hub_v23/manifest.json", Body=json.dumps(manifest).encode()
    )
    client.put_object(Bucket=bucket, Key="logs/app.log", Body=b"previous run\n")
    config = make_config(tmp_path, endpoint or seaweed.endpoint, name="e2e")
    mountpoint = tmp_path / "mnt"
    workdir = tmp_path / "app"
    mountpoint.mkdir()
    workdir.mkdir()
    result = Setup(
        config, f"e2e:{bucket}", mountpoint, workdir, tmp_path / "cache", bucket, seaweed
    )
    try:
        yield result
    finally:
        cleanup_mount(mountpoint)
