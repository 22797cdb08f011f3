"""The control channel of a running mount: a state file and a unix socket per mountpoint.

Layout (runtime dir: /run/modelfs as root, else $XDG_RUNTIME_DIR/modelfs or /tmp/modelfs-UID):

    <runtime>/
      <id>.json   {"pid", "spec", "mountpoint", "cache_dir", "started"}  written once mounted
      <id>.sock   JSON-lines: {"cmd": "status"} -> statistics, {"cmd": "sync"} -> waits,
                  {"cmd": "warm", "paths": [...], "pin"|"unpin": bool} -> progress, then done
where <id> = sha256(realpath(mountpoint))[:16]. Both are removed on a clean exit; a state file
whose pid is dead is stale and ignored.

One request per connection; the answer is one JSON line. A long request may send progress
lines first, `{"progress": {...}}`, which `request` hands to `on_progress`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/modelfs")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "modelfs" if xdg else Path(f"/tmp/modelfs-{os.getuid()}")


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(mountpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The state of the modelfs process serving `mountpoint`, or None if there is none alive."""
    try:
        state: dict[str, Any] = json.loads(state_path(mount_id(mountpoint)).read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return None
    return state


def write_state(ident: str, state: dict[str, Any]) -> None:
    path = state_path(ident)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(state))
    os.replace(temp, path)


def remove_state(ident: str) -> None:
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
    answers."""
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
