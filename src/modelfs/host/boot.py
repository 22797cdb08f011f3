"""Which boot of the machine this process runs in: what tells recovery after a power loss
from recovery after only a process died.

A write lands in the kernel's page cache: it outlives the process that made it (kill -9 loses
nothing), not the machine. Files that record progress (the write-back journal, a pull's block
records) note the boot they were written in; read in the same boot, all of it stands; read in
another (a power loss, a kernel crash, any reboot), only what was made durable does.

`MODELFS_BOOT_ID` in the environment stands in for the kernel's boot id: the power-loss
simulation in the tests (tests/support/lazyfs.py) cannot reboot the machine.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

BOOT_ID_ENV = "MODELFS_BOOT_ID"
_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
# Without a boot id, every process counts as a new boot: only what was made durable is trusted
# after any restart (safe), instead of unsynced state being trusted after a power loss (not).
_PROCESS_BOOT = f"process-{uuid.uuid4()}"


def current_boot() -> str:
    """The boot this process runs in: same value for every process until the next reboot."""
    forced = os.environ.get(BOOT_ID_ENV)
    if forced:
        return forced
    try:
        return _BOOT_ID_PATH.read_text().strip() or _PROCESS_BOOT
    except OSError:
        return _PROCESS_BOOT
