"""Mounts as the kernel lists them, and the one way to tell and clear a dead FUSE mount.

What it owns: reading `/proc/self/mountinfo` (`find_mount`, `mount_of`), telling a dead mount
(`is_dead`: its daemon is gone, the kernel answers ENOTCONN/ECONNABORTED), and taking a mount down
(`unmount`, which waits for the daemon to exit, and `detach`, the lazy `fusermount3 -u -z`
that clears a dead one). `modelfs mount`'s preflight, `modelfs unmount` and `modelfs run`
all use these, so "dead" means the same everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfs.errors import MountError
from modelfs.host import control

log = logging.getLogger(__name__)

MODELFS_FSTYPE = "fuse.modelfs"
MOUNTINFO_PATH = "/proc/self/mountinfo"
# errnos the kernel returns once the FUSE connection is gone (daemon died or was aborted).
DEAD_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})
# How long `unmount` waits for the daemon to finish its exit (it drains uploads first).
_EXIT_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo (only the fields we use)."""

    mount_id: int
    device: str  # "major:minor"
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text; malformed lines are skipped (the kernel never writes them)."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    device=fields[2],
                    mountpoint=_unescape(fields[4]),
                    fstype=fields[separator + 1],
                    source=_unescape(fields[separator + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def read_mountinfo() -> str:
    return Path(MOUNTINFO_PATH).read_text()


def find_mount(mountpoint: str, mountinfo: str) -> MountEntry | None:
    """The topmost mount at `mountpoint` (mounts stacked on one path are listed in order)."""
    wanted = os.path.normpath(mountpoint)
    found = None
    for entry in parse_mountinfo(mountinfo):
        if entry.mountpoint == wanted:
            found = entry
    return found


def mount_of(path: str, mountinfo: str) -> MountEntry | None:
    """The mount `path` (absolute, symlinks resolved) is on: the deepest mountpoint above it."""
    wanted = os.path.normpath(path)
    found = None
    for entry in parse_mountinfo(mountinfo):
        top = entry.mountpoint
        inside = wanted == top or wanted.startswith(top.rstrip("/") + "/")
        if inside and (found is None or len(top) >= len(found.mountpoint)):
            found = entry
    return found


def is_dead(path: str) -> bool:
    """A FUSE mount whose daemon is gone. statfs always reaches the daemon; stat may be
    answered from the kernel's attribute cache and look fine."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in DEAD_ERRNOS
    return False


def detach(mountpoint: str) -> bool:
    """Lazily detach a (dead) FUSE mount: `fusermount3 -u -z`. True on success."""
    try:
        done = subprocess.run(
            ["fusermount3", "-u", "-z", mountpoint], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        log.error("cannot run fusermount3: %s", exc)
        return False
    if done.returncode != 0:
        log.error("fusermount3 -u -z %s failed: %s", mountpoint, done.stderr.strip())
    return done.returncode == 0


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount, also a dead mount (ENOTCONN) which needs a lazy detach; then wait until the
    daemon serving it has exited."""
    path = os.path.abspath(mountpoint)
    entry = find_mount(control.canonical_mountpoint(path), read_mountinfo())
    if entry is None:
        raise MountError(f"{path} is not mounted")
    dead = is_dead(path)
    command = ["fusermount3", "-u"] + (["-z"] if lazy or dead else []) + [path]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        if "busy" in message.lower():
            raise MountError(f"{path} is busy (files open?): close them or use --lazy")
        raise MountError(f"cannot unmount {path}: {message}")
    state = control.read_state(path)
    if state is not None:
        _wait_for_exit(state)
    with contextlib.suppress(OSError):
        control.remove_state(control.mount_id(path))


def _wait_for_exit(state: dict[str, Any], timeout: float = _EXIT_WAIT) -> None:
    """Until the daemon `state` names has exited: its zombie counts as exited (an init that
    reaps orphans late must not hold up `unmount`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and control.is_alive(state):
        time.sleep(0.02)
