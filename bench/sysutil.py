"""Host plumbing for the benchmark: cleanup on any exit, processes, mounts, page cache, RSS.

Cleanup model: everything the benchmark sets up (a server, a mount, a network namespace, a
work directory) registers an undo action on the one `Cleanup` stack as soon as it exists.
Normal code runs the action itself when done (`Action.run()`, idempotent); whatever is still
on the stack runs in reverse order at exit -- normal return, exception, Ctrl-C, SIGTERM or
SIGHUP (turned into SystemExit so `finally` blocks and atexit run). Ctrl-C or SIGTERM while
cleaning up is ignored, so the undo actions are never cut short.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

_START = time.monotonic()
_KILL_GRACE_S = 5.0  # time for a mounter to unmount and exit after SIGTERM before SIGKILL
_UNMOUNT_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def log(message: str) -> None:
    """One progress line, stamped with the time since the benchmark started."""
    elapsed = time.monotonic() - _START
    print(f"[{int(elapsed) // 60:3d}:{elapsed % 60:04.1f}] {message}", flush=True)


# -- cleanup ---------------------------------------------------------------------------------


@dataclass
class Action:
    what: str
    undo: Callable[[], None]
    owner: Cleanup
    done: bool = False

    def run(self) -> None:
        """Undo now (once); errors are logged, never raised: cleanup must go on. Interrupted
        by Ctrl-C, the action stays on the stack and runs again at exit."""
        if self.done:
            return
        try:
            self.undo()
        except Exception as exc:
            log(f"cleanup: {self.what} failed: {exc}")
        self.done = True
        self.owner.forget(self)


@dataclass
class Cleanup:
    _actions: list[Action] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, what: str, undo: Callable[[], None]) -> Action:
        action = Action(what, undo, self)
        with self._lock:
            self._actions.append(action)
        return action

    def forget(self, action: Action) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._actions.remove(action)

    def run_all(self) -> None:
        """Every action left, newest first, with the stopping signals ignored meanwhile."""
        stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stopping}
        try:
            while True:
                with self._lock:
                    if not self._actions:
                        return
                    action = self._actions[-1]
                try:
                    action.run()
                finally:
                    self.forget(action)  # whatever happened, never retried in a loop
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def install(self) -> None:
        """Run everything left at interpreter exit; SIGTERM/SIGHUP/SIGINT exit through it."""
        atexit.register(self.run_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
        # Python leaves SIGINT ignored when it starts ignored (e.g. `cmd &` in a script): make
        # Ctrl-C / kill -INT always interrupt, so a run can always be stopped cleanly.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# -- processes -------------------------------------------------------------------------------


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), check=check, timeout=timeout, capture_output=True, text=True, env=env
    )


def tool_version(cmd: Sequence[str]) -> str:
    """First line of a `--version`-like command, or why it could not run."""
    try:
        result = run(cmd, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child if the benchmark dies, even by SIGKILL (no cleanup runs
    then); FUSE mounters unmount on SIGTERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def terminate(pid: int, grace: float = _KILL_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds. Only for processes this benchmark started."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_popen(process: subprocess.Popen[bytes], grace: float = _KILL_GRACE_S) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


def pids_with_argument(argument: str) -> list[int]:
    """Processes (not this one) whose command line has `argument` as one of its words."""
    wanted = argument.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in words:
            found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/PID/task/*/children)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return tree


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of `pids` and their descendants so far (/proc/PID/stat);
    a process that exited meanwhile counts nothing."""
    total = 0.0
    for pid in {p for root in pids for p in process_tree(root)}:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def _status_kib(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


class RssSampler:
    """Peak resident memory of a set of processes (and their children) while a block runs.

    Two views, the larger wins: the sum of VmRSS over the process trees, polled every
    `interval` seconds, and each process's own kernel-kept peak VmHWM read at the end (which
    catches a spike between two polls, but only per process)."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.05) -> None:
        self._pids = pids
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.peak_kib = 0

    def _current_kib(self) -> int:
        return sum(_status_kib(p, "VmRSS") for root in self._pids() for p in process_tree(root))

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self._current_kib())
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        for root in self._pids():
            for pid in process_tree(root):
                self.peak_kib = max(self.peak_kib, _status_kib(pid, "VmHWM"))

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


# -- page cache and mounts -------------------------------------------------------------------


def drop_page_cache() -> None:
    """Write back dirty pages, then drop the clean page cache, dentries and inodes."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _unescape_mountinfo(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/self/mountinfo") as mountinfo:
        return any(_unescape_mountinfo(line.split()[4]) == target for line in mountinfo)


def force_unmount(mountpoint: Path) -> None:
    """Lazy unmount: detaches even a busy or dead (ENOTCONN) FUSE mount."""
    for cmd in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if not is_mounted(mountpoint):
            return
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            run(cmd, check=False, timeout=_UNMOUNT_TIMEOUT_S)


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [_unescape_mountinfo(line.split()[4]) for line in mountinfo]
    return [point for point in points if point.startswith(prefix)]


def safe_rmtree(directory: Path) -> None:
    """rmtree that refuses to descend into a live mount (it would delete bucket objects)."""
    live = mounts_under(directory)
    if live:
        log(f"not removing {directory}: still mounted: {', '.join(live)}")
        return
    shutil.rmtree(directory, ignore_errors=True)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# -- machine ---------------------------------------------------------------------------------


_FREE_PAGE_REPORTING_BIT = 5  # VIRTIO_BALLOON_F_REPORTING; sysfs lists feature bits from 0


def machine_info(tools: dict[str, Sequence[str]]) -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text()
    total = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    info = {
        "nproc": str(os.cpu_count()),
        "kernel": os.uname().release,
        "memory_gib": f"{int(total.group(1)) / 1024 / 1024:.1f}" if total else "?",
        "python": sys.version.split()[0],
    }
    reporting = balloon_reports_free_pages()
    if reporting is not None:
        # On: a page the guest freed (say by drop_caches) costs a host fault when used again,
        # so filling the page cache during a large cold read is slow for every mounter
        # (bench/experiments/memory_first_touch.py; docs/performance.md).
        info["balloon_free_page_reporting"] = "on" if reporting else "off"
    info.update({name: tool_version(cmd) for name, cmd in tools.items()})
    return info


def balloon_reports_free_pages() -> bool | None:
    """Whether a virtio-balloon device negotiated free page reporting (None: no balloon)."""
    for device in Path("/sys/bus/virtio/devices").glob("*"):
        try:
            if (device / "device").read_text().strip() != "0x0005":
                continue
            features = (device / "features").read_text().strip()
        except OSError:
            continue
        return (
            len(features) > _FREE_PAGE_REPORTING_BIT and features[_FREE_PAGE_REPORTING_BIT] == "1"
        )
    return None


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then `t[0]` is the elapsed seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)
