"""Running the power-loss simulator (`lazyfs`) from a test: `LazyDisk`.

    with LazyDisk(tmp_path / "disk", tmp_path / "lazy") as disk:
        ...                        # programs use disk.mountpoint
        disk.power_off("zeros")    # what was not fsynced is lost (but for what the mode keeps)
        disk.power_on()            # the same disk, as after a restart

The simulator runs in a child process; the backing directory is "the disk". On exit it shuts
down cleanly (held writes synced) unless the power is off.

`power_env` puts a mount's cache dir on such a disk (`PowerEnv`): `power_cut` cuts the power
and kills the mount with it, `after_reboot` mounts as the machine would after rebooting
($MODELFS_BOOT_ID stands for the kernel's boot id, which a test cannot change).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from modelfs.host.boot import BOOT_ID_ENV

from . import lazyfs, make_config
from .mounting import Mounted, MountEnv, force_unmount, is_mounted, run_cli
from .proxy import FaultProxy
from .seaweed import SeaweedServer

if TYPE_CHECKING:
    import pytest


class LazyDisk:
    """The simulator as a context manager: mounted on entry, cleanly unmounted (held writes
    synced) on exit unless the power is off."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LazyDisk:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.power_on()
        return self

    def power_on(self) -> None:
        assert self._process is None, "already on"
        self._process = subprocess.Popen(
            [sys.executable, lazyfs.__file__, str(self.backing), str(self.mountpoint)]
        )
        deadline = time.monotonic() + 30
        while not is_mounted(self.mountpoint):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._stop(signal.SIGKILL)
                raise AssertionError("the power-loss simulator did not mount")
            time.sleep(0.02)

    def power_off(self, mode: str = "drop") -> None:
        """Cut the power: what was not fsynced is lost, but for what `mode` keeps."""
        self._stop(lazyfs.POWER_OFF_SIGNALS.get(mode, signal.SIGKILL))

    def _stop(self, number: int) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(number)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if is_mounted(self.mountpoint):
                force_unmount(self.mountpoint)

    def __exit__(self, *exc_info: object) -> None:
        self._stop(signal.SIGTERM)


class PowerEnv(MountEnv):
    """A MountEnv whose cache dir lives on a `LazyDisk` (see the module docstring)."""

    disk: LazyDisk

    @property
    def cache(self) -> Path:
        return self.disk.mountpoint / "cache"

    def mount_on_disk(self, *options: str) -> Mounted:
        return self.mount("--write-back", "1h", *options, cache_dir=self.cache)

    def objects(self) -> dict[str, bytes]:
        client = self.seaweed.client()
        listing = client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            item["Key"]: client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
            for item in listing
        }

    def power_cut(self, mounted: Mounted, mode: str = "drop") -> None:
        """The disk loses what `mode` says, the mount dies with it; then the disk is back."""
        self.disk.power_off(mode)
        mounted.kill()
        run_cli("unmount", self.mountpoint)  # the dead mount
        self.disk.power_on()

    def after_reboot(self, monkeypatch: pytest.MonkeyPatch) -> Mounted:
        """A mount as the machine would make it after rebooting."""
        monkeypatch.setenv(BOOT_ID_ENV, "boot-after-the-power-cut")
        return self.mount_on_disk()


@contextlib.contextmanager
def power_env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PowerEnv]:
    """A PowerEnv in `directory`, its disk on, the boot before the power cut."""
    monkeypatch.setenv(BOOT_ID_ENV, "boot-before-the-power-cut")
    created = PowerEnv.create(seaweed, proxy, bucket, directory, make_config)
    with LazyDisk(directory / "disk", directory / "lazy") as disk:
        created.disk = disk
        yield created
