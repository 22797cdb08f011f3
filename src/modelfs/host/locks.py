"""The locks of directories modelfs processes use: `<dir>/lock`, held with flock.

Two ways to hold a directory:
- alone (`hold_lock`): one process for the directory's whole life, exclusively. A mount's
  write-back root is held this way: its staging files and journal are one mount's.
- shared (`join_lock`): every process that uses the directory holds its lock shared. The first
  to arrive, finding no other holder, gets it exclusively instead and is told so (`alone`), so
  that it may clean up after a crash (temp files of dead writers) before it `share`s it. The
  block cache root is held this way: several mounts use one cache.
`exclusive(fd)` holds another file's flock exclusively for a short critical section (the block
cache's ledger), blocking until it is free.

The kernel frees a flock when its holder dies, even by kill -9, so a crash never leaves a
stale lock behind. A lock file held alone holds its holder's pid, for the message a second
process gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from modelfs.errors import MountError
from modelfs.host import private

LOCK_NAME = "lock"
# How long `join_lock` waits for a process that holds the lock exclusively: the first user's
# clean-up takes a scan of the directory; a process that holds it for longer than this owns
# the directory alone (an older modelfs) and is not going to share it.
JOIN_WAIT = 30.0
_JOIN_POLL = 0.05


def _open(directory: Path) -> int:
    return private.open_owned(directory / LOCK_NAME, os.O_RDWR)


def _in_use(fd: int, what: str, directory: Path) -> MountError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return MountError(
        f"{what} {directory} is in use by another modelfs process (pid {holder}); "
        "use another --cache-dir"
    )


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def hold_lock(directory: Path, what: str) -> int:
    """Take `directory/lock` for this process: its fd, to keep open while owning `directory`.
    MountError naming the holder if another process (or another owner here) has it; OSError if
    the lock file cannot be opened at all."""
    fd = _open(directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _in_use(fd, what, directory)
        os.close(fd)
        raise error from None
    _write_pid(fd)
    return fd


def join_lock(directory: Path, what: str, *, wait: float | None = None) -> tuple[int, bool]:
    """Take `directory/lock` as one of the processes sharing `directory`: (fd, alone).

    `alone`: no other process held it, and this one now holds it exclusively until it calls
    `share(fd)`. Otherwise it is held shared. MountError if a process keeps it exclusively for
    `wait` seconds (default `JOIN_WAIT`); OSError if the lock file cannot be opened."""
    fd = _open(directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        _write_pid(fd)
        return fd, True
    deadline = time.monotonic() + (JOIN_WAIT if wait is None else wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd, False
        except BlockingIOError:
            if time.monotonic() >= deadline:
                error = _in_use(fd, what, directory)
                os.close(fd)
                raise error from None
            time.sleep(_JOIN_POLL)


def share(fd: int) -> None:
    """An exclusive hold from `join_lock` becomes a shared one (others may join now)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


@contextlib.contextmanager
def exclusive(fd: int) -> Iterator[None]:
    """Hold `fd`'s flock exclusively for the block, waiting for other holders to let go.

    flock belongs to an open file description, not a thread: threads of one process that
    share `fd` must serialize among themselves (a threading.Lock) before calling this."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
