"""Is a mountpoint mounted by modelfs with a given remote, and does that mount answer?

What it owns: reading `/proc/self/mountinfo`, the health probe, and the verdict the supervisor
acts on (`check_mount`):

    not in mountinfo                                -> NOT_MOUNTED  (mount it)
    fstype != fuse.modelfs, or another source       -> FOREIGN      (an error, never a takeover)
    ours, the probe answers in time                 -> HEALTHY      (use it)
    ours, the probe fails with ENOTCONN/ECONNABORTED,
      or does not answer within the timeout         -> DEAD         (detach and mount again)
    ours, stat fails with anything else             -> UNUSABLE     (an error, e.g. EACCES on a
                                                                      mount of another user)

The probe (stat, then statfs, which the kernel never answers from a cache) runs in a daemon
thread because a stat on a FUSE mount whose daemon is alive but stuck blocks in the kernel,
beyond the reach of signals once the daemon has read the request.
Invariant: at most one probe per path is in flight. While an earlier probe of a path is still
stuck, a new probe reports it hung at once instead of piling up another blocked thread.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .remote import parse_spec

log = logging.getLogger(__name__)

MODELFS_FSTYPE = "fuse.modelfs"
MOUNTINFO_PATH = "/proc/self/mountinfo"
# A stat of a mount root is answered from the kernel's attribute cache or by one getattr;
# seconds means something is wrong. 10 s leaves room for a loaded 2-core machine.
DEFAULT_PROBE_TIMEOUT = 10.0
# errnos the kernel returns once the FUSE connection is gone (daemon died or was aborted).
_DEAD_ERRNOS = frozenset({errno.ENOTCONN, errno.ECONNABORTED})


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


def normalize_spec(spec: str) -> str:
    """'remote:bucket/prefix/' -> 'remote:bucket/prefix', the form a mount shows as source."""
    parsed = parse_spec(spec.strip())
    prefix = parsed.prefix.rstrip("/")
    return f"{parsed.remote}:{parsed.bucket}" + (f"/{prefix}" if prefix else "")


class Health(enum.Enum):
    HEALTHY = "healthy"
    DEAD = "dead"
    HUNG = "hung"
    FAILED = "failed"  # stat failed with an errno that does not mean "connection gone"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    health: Health
    detail: str


_in_flight: dict[str, threading.Thread] = {}
_in_flight_lock = threading.Lock()


def stat_round_trip(path: str) -> None:
    """stat, then statfs: the kernel may answer a stat from its attribute cache even after the
    daemon died, but it always sends statfs to the daemon (never cached)."""
    os.stat(path)
    os.statvfs(path)


def probe(
    path: str,
    timeout: float = DEFAULT_PROBE_TIMEOUT,
    stat: Callable[[str], object] = stat_round_trip,
) -> ProbeResult:
    """Ask the mount at `path` in a thread; HUNG if it does not answer within `timeout`."""
    outcome: list[BaseException | None] = []

    def stat_once() -> None:
        try:
            stat(path)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)
        finally:
            with _in_flight_lock:
                _in_flight.pop(path, None)

    with _in_flight_lock:
        if path in _in_flight:
            return ProbeResult(Health.HUNG, f"an earlier stat of {path} is still blocked")
        thread = threading.Thread(target=stat_once, name=f"probe {path}", daemon=True)
        _in_flight[path] = thread
    thread.start()
    thread.join(timeout)
    if not outcome:
        return ProbeResult(Health.HUNG, f"stat {path} did not answer within {timeout:g}s")
    return _classify_stat_error(path, outcome[0])


def _classify_stat_error(path: str, exc: BaseException | None) -> ProbeResult:
    if exc is None:
        return ProbeResult(Health.HEALTHY, "answers")
    if isinstance(exc, OSError) and exc.errno in _DEAD_ERRNOS:
        return ProbeResult(Health.DEAD, f"stat {path}: {exc.strerror}")
    return ProbeResult(Health.FAILED, f"stat {path}: {exc}")


class MountStatus(enum.Enum):
    NOT_MOUNTED = "not mounted"
    HEALTHY = "healthy"
    DEAD = "dead"
    FOREIGN = "foreign"
    UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class MountCheck:
    status: MountStatus
    detail: str
    entry: MountEntry | None = None


Prober = Callable[[str, float], ProbeResult]


def check_mount(
    mountpoint: str,
    spec: str,
    *,
    timeout: float = DEFAULT_PROBE_TIMEOUT,
    mountinfo: Callable[[], str] = read_mountinfo,
    prober: Prober = probe,
) -> MountCheck:
    """Classify `mountpoint` for the modelfs mount of `spec` (see the module docstring)."""
    entry = find_mount(mountpoint, mountinfo())
    if entry is None:
        return MountCheck(MountStatus.NOT_MOUNTED, f"{mountpoint} is not a mountpoint")
    if entry.fstype != MODELFS_FSTYPE:
        return MountCheck(
            MountStatus.FOREIGN,
            f"{mountpoint} is already a {entry.fstype} mount of {entry.source}",
            entry,
        )
    if entry.source != normalize_spec(spec):
        return MountCheck(
            MountStatus.FOREIGN,
            f"{mountpoint} is already a modelfs mount of {entry.source}, not {spec}",
            entry,
        )
    result = prober(mountpoint, timeout)
    status = {
        Health.HEALTHY: MountStatus.HEALTHY,
        Health.DEAD: MountStatus.DEAD,
        Health.HUNG: MountStatus.DEAD,
        Health.FAILED: MountStatus.UNUSABLE,
    }[result.health]
    return MountCheck(status, result.detail, entry)


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
