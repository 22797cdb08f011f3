"""Running the power-loss simulator (`lazyfs`) from a test: `LazyDisk`.

    with LazyDisk(tmp_path / "disk", tmp_path / "lazy") as disk:
        ...                        # programs use disk.mountpoint
        disk.power_off("zeros")    # what was not fsynced is lost (but for what the mode keeps)
        disk.power_on()            # the same disk, as after a restart

The simulator runs in a child process; the backing directory is "the disk". On exit it shuts
down cleanly (held writes synced) unless the power is off.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import lazyfs
from .mounting import force_unmount, is_mounted


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
