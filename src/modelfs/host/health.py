"""Is a mountpoint mounted by modelfs with a given remote, and does that mount answer?

What it owns: the health probe, and the verdict the supervisor acts on (`check_mount`):

    not in mountinfo                                -> NOT_MOUNTED  (mount it)
    fstype != fuse.modelfs, or another source       -> FOREIGN      (an error, never a takeover)
    ours, the probe answers in time                  -> HEALTHY     (use it)
    ours, the probe fails with ENOTCONN/ECONNABORTED -> DEAD        (detach and mount again)
    ours, no answer within the timeout               -> HUNG        (the same; a watchdog first
                                                                      waits for a few in a row)
    ours, stat fails with anything else             -> UNUSABLE     (an error, e.g. EACCES on a
                                                                      mount of another user)

The probe (stat, then statfs, which the kernel never answers from a cache) never waits on the
store: the mount answers a getattr of its root and a statfs from memory, so a store that is
down or slow does not make a live mount look hung. It runs in a daemon thread because a stat
on a FUSE mount whose daemon is alive but stuck blocks in the kernel, beyond the reach of
signals once the daemon has read the request.
Invariant: at most one probe per path is in flight. While an earlier probe of a path is still
stuck, a new probe reports it hung at once instead of piling up another blocked thread.

`read_probe` asks more of a mount that answers: it reads `SAMPLE_BYTES` of the smallest file
(at most `SAMPLE_FILE_MAX`, so no model file's whole-file fetch starts) at the top of the
mount, or in its first directories, with O_DIRECT, so the daemon itself answers and not the
page cache. A mount can answer stat while every read fails: keys expired or revoked (EACCES),
the store down and the file not cached (EIO). Its verdict is for reporting only, never for
the liveness verdict above: such a mount is alive, and mounting it again would not help.
"""

from __future__ import annotations

import enum
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from modelfs.config.remote import normalize_spec
from modelfs.host.mountinfo import (
    DEAD_ERRNOS,
    MODELFS_FSTYPE,
    MountEntry,
    find_mount,
    read_mountinfo,
)

# A stat of a mount root is answered from the kernel's attribute cache or by one getattr;
# seconds means something is wrong, and a loaded machine still answers well within this.
DEFAULT_PROBE_TIMEOUT = 10.0
SAMPLE_BYTES = 4096  # what `read_probe` reads: one page, the unit of O_DIRECT
SAMPLE_FILE_MAX = 1 << 20  # the largest file it reads from: one block of the mount's cache
_SAMPLE_DIRS = 3  # the top of the mount and its first two directories
_SAMPLE_ENTRIES = 256  # entries looked at per directory


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
    verb: str = "stat",
) -> ProbeResult:
    """Ask the mount at `path` in a thread; HUNG if it does not answer within `timeout`.
    `verb` names what `stat` does in the verdict's detail."""
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
            return ProbeResult(Health.HUNG, f"an earlier {verb} of {path} is still blocked")
        thread = threading.Thread(target=stat_once, name=f"probe {path}", daemon=True)
        _in_flight[path] = thread
    thread.start()
    thread.join(timeout)
    if not outcome:
        return ProbeResult(Health.HUNG, f"{verb} {path} did not answer within {timeout:g}s")
    return _classify_stat_error(path, outcome[0], verb)


def read_probe(mountpoint: str, timeout: float = DEFAULT_PROBE_TIMEOUT) -> ProbeResult:
    """Read a sample of the mount (see the module docstring) in a thread: HEALTHY (also when
    no small file is found), FAILED with the read's error, or HUNG."""
    return probe(os.path.join(mountpoint, ""), timeout, stat=read_sample, verb="read")


def read_sample(root: str) -> None:
    """Read `SAMPLE_BYTES` of the smallest non-empty file near the top of `root`, O_DIRECT."""
    path = _sample_file(root)
    if path is None:
        return
    buffer = mmap.mmap(-1, SAMPLE_BYTES)  # page aligned, as O_DIRECT wants
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            os.preadv(fd, [buffer], 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None  # name the file read
    finally:
        buffer.close()


def _sample_file(root: str) -> str | None:
    directories: list[str] = [root]
    smallest: tuple[int, str] | None = None
    for depth in range(_SAMPLE_DIRS):
        if depth >= len(directories):
            break
        with os.scandir(directories[depth]) as entries:
            for index, entry in enumerate(entries):
                if index >= _SAMPLE_ENTRIES:
                    break
                if entry.is_dir(follow_symlinks=False):
                    directories.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    size = entry.stat(follow_symlinks=False).st_size
                    if 0 < size <= SAMPLE_FILE_MAX and (smallest is None or size < smallest[0]):
                        smallest = (size, entry.path)
        if smallest is not None:
            return smallest[1]
    return None


def _classify_stat_error(path: str, exc: BaseException | None, verb: str = "stat") -> ProbeResult:
    if exc is None:
        return ProbeResult(Health.HEALTHY, "answers")
    if isinstance(exc, OSError) and exc.errno in DEAD_ERRNOS:
        return ProbeResult(Health.DEAD, f"{verb} {path}: {exc.strerror}")
    if isinstance(exc, OSError) and exc.filename:
        return ProbeResult(Health.FAILED, f"{verb} {exc.filename}: {exc.strerror}")
    return ProbeResult(Health.FAILED, f"{verb} {path}: {exc}")


class MountStatus(enum.Enum):
    NOT_MOUNTED = "not mounted"
    HEALTHY = "healthy"
    DEAD = "dead"
    HUNG = "hung"
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
        Health.HUNG: MountStatus.HUNG,
        Health.FAILED: MountStatus.UNUSABLE,
    }[result.health]
    return MountCheck(status, result.detail, entry)
