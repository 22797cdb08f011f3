"""The control channel of a running mount: a state file and a unix socket per mountpoint.

Layout (runtime dir: /run/modelfs as root, else $XDG_RUNTIME_DIR/modelfs, else
${TMPDIR:-/tmp}/modelfs-EUID):

    <runtime>/    0700, owned by the effective user, or refused (see below)
      <id>.json   {"pid", "start_time", "spec", "mountpoint", "cache_dir", "started"}, 0600,
                  written once mounted (through a new temp file: O_EXCL|O_NOFOLLOW)
      <id>.sock   JSON-lines: {"cmd": "status"} -> statistics, {"cmd": "sync"} -> waits,
                  {"cmd": "warm", "paths": [...], "pin"|"unpin": bool} -> progress, then done,
                  {"cmd": "replay", "name", "quiet", "max_bytes"} -> at once (`daemon.replay`)
where <id> = sha256(realpath(mountpoint))[:16]. Both are removed on a clean exit (by the mount
that wrote them: one that exits late leaves the next mount's alone); a state file
whose process is gone (dead, or its pid reused: `start_time` differs) is stale and ignored.

One request per connection; the answer is one JSON line. A long request may send progress
lines first, `{"progress": {...}}`, which `request` hands to `on_progress`.

The runtime dir is checked before every use (`checked_dir`): a real directory, mode 0700,
owned by the effective user; anything else is refused with one line (`UnsafePath`). In the
shared /tmp another user could create `modelfs-UID` first and then swap the socket, edit the
pid, or plant a symlink where the state file is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfs.host import private


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/modelfs")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "modelfs"
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"modelfs-{os.geteuid()}"


def checked_dir(*, create: bool) -> Path | None:
    """The runtime dir once it passed the check (made first if `create`); None if it does
    not exist and `create` is false (then no mount of this user is running)."""
    path = runtime_dir()
    if create:
        private.make_dirs(path)
    elif not os.path.lexists(path):
        return None
    private.require_dir(path, "control directory", forbidden=private.GROUP_OR_OTHERS_ANY)
    return path


def canonical_mountpoint(mountpoint: str | os.PathLike[str]) -> str:
    """The absolute path of a mountpoint, resolving symlinks in its parents only: a stat of the
    mountpoint itself would hang on a stuck mount, and deadlock inside the mount process."""
    path = os.path.abspath(mountpoint)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def mount_id(mountpoint: str | os.PathLike[str]) -> str:
    return hashlib.sha256(canonical_mountpoint(mountpoint).encode()).hexdigest()[:16]


def state_path(ident: str) -> Path:
    return runtime_dir() / f"{ident}.json"


def socket_path(ident: str) -> Path:
    return runtime_dir() / f"{ident}.sock"


def process_start_time(pid: int) -> int | None:
    """When process `pid` started (field 22 of /proc/PID/stat, clock ticks since boot); None if
    there is no such process, or only its zombie. A pid the kernel gave to another process
    since has another start time, so (pid, start time) names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold anything, ')' and spaces too.
    fields = text[text.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] == b"Z":  # fields[0] is field 3, the state
        return None
    return int(fields[19])


def is_alive(state: dict[str, Any]) -> bool:
    """The process a state file names still runs: same pid and same start time (a zombie,
    exited but not yet reaped by its parent or init, does not run)."""
    pid, started = state.get("pid"), state.get("start_time")
    if not isinstance(pid, int) or pid <= 0:
        return False
    return process_start_time(pid) == started if isinstance(started, int) else _pid_exists(pid)


def _pid_exists(pid: int) -> bool:
    """For a state file written before start times were recorded."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(mountpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state of the modelfs process serving `mountpoint`, or None if there is none alive."""
    if checked_dir(create=False) is None:
        return None
    try:
        fd = os.open(state_path(mount_id(mountpoint)), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as file:
            state: dict[str, Any] = json.load(file)
    except (OSError, ValueError):
        return None
    return state if is_alive(state) else None


def write_state(ident: str, state: dict[str, Any]) -> None:
    """Record the mount served by this process (`pid` and `start_time` are added)."""
    checked_dir(create=True)
    pid = os.getpid()
    state = {**state, "pid": pid, "start_time": process_start_time(pid)}
    private.replace_file(state_path(ident), json.dumps(state).encode())


def remove_state(ident: str, *, pid: int | None = None) -> None:
    """Remove the state file and socket of `ident`; with `pid`, only if that process wrote
    them: a mount still exiting must not remove those of the next mount on its mountpoint."""
    if pid is not None:
        try:
            owner = json.loads(state_path(ident).read_bytes()).get("pid")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner != pid:
            return
    for path in (state_path(ident), socket_path(ident)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def request(
    mountpoint: str | os.PathLike[str],
    message: dict[str, Any],
    timeout: float | None = 10.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Send one request to the mount's control socket and return its answer; progress lines
    before it go to `on_progress`. `timeout` bounds each wait for a line.

    Raises OSError (e.g. FileNotFoundError, ConnectionRefusedError, TimeoutError) if no mount
    answers, and UnsafePath if the runtime dir is not ours alone."""
    if checked_dir(create=False) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(runtime_dir()))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path(mount_id(mountpoint))))
        sock.sendall(json.dumps(message).encode() + b"\n")
        buffer = b""
        while True:
            line, newline, rest = buffer.partition(b"\n")
            if not newline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                continue
            buffer = rest
            answer: dict[str, Any] = json.loads(line)
            if "progress" not in answer:
                return answer
            if on_progress is not None:
                on_progress(answer["progress"])
    ended: dict[str, Any] = json.loads(buffer or b"{}")
    return ended
