"""The one lock of a directory a modelfs process owns: `<dir>/lock`, held with flock.

A mount holds its cache root's lock for its life; the block cache and the write-back staging
area, usable on their own, hold their own directories' locks the same way. The kernel frees a
flock when its holder dies, even by kill -9, so a crash never leaves a stale lock behind. The
lock file holds the holder's pid, for the message a second process gets.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from modelfs.errors import MountError

LOCK_NAME = "lock"


def hold_lock(directory: Path, what: str) -> int:
    """Take `directory/lock` for this process: its fd, to keep open while owning `directory`.
    MountError naming the holder if another process (or another owner here) has it; OSError if
    the lock file cannot be opened at all."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise MountError(
            f"{what} {directory} is in use by another modelfs process (pid {holder}); "
            "use another --cache-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
