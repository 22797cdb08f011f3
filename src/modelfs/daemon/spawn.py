"""`modelfs mount --daemon`: start the mount in the background, return once it answers.

The parent runs `python -m modelfs ... mount` (the same words without `--daemon`, with a log
file) in a new session, and waits on a pipe whose write end the child inherits (its number in
`MODELFS_READY_FD`). The child writes "ok" once the mount answers a stat ("ok: ..." with a
warning, e.g. a mount started offline), or "error: ..." if mounting failed; the parent then
prints the warning line and exits 0, or prints the error line and exits non-zero. A child
that dies without a word, or says nothing within `_READY_TIMEOUT`, is an error too, pointing at
the log file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from modelfs import console
from modelfs.daemon.preflight import check_cache_dir
from modelfs.errors import MountError
from modelfs.host import private

READY_FD_ENV = "MODELFS_READY_FD"
_READY_TIMEOUT = 120.0  # bucket checks fail within seconds; mounting itself is fast


def spawn_daemon(args: argparse.Namespace, cache_dir: Path) -> int:
    """Start the mount in the background; its exit code as `modelfs mount` should return it."""
    check_cache_dir(cache_dir)  # the default log file lives there
    log_file = args.log_file or str(cache_dir / "modelfs.log")
    argv = [a for a in sys.argv[1:] if a != "--daemon"]
    if not args.log_file:
        verb = argv.index("mount") + 1
        argv = [*argv[:verb], "--log-file", log_file, *argv[verb:]]
    log_stream = os.fdopen(open_log(log_file), "ab")
    read_end, write_end = os.pipe()
    env = {**os.environ, READY_FD_ENV: str(write_end)}
    with log_stream:
        child = subprocess.Popen(
            [sys.executable, "-m", "modelfs", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=log_stream,
            pass_fds=(write_end,),
            env=env,
            start_new_session=True,
        )
    os.close(write_end)
    answer = _wait_for_answer(read_end, child)
    os.close(read_end)
    if answer == "ok" or answer.startswith("ok: "):
        if answer != "ok":
            console.warning_line(answer.removeprefix("ok: "))
        return console.EXIT_OK
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=10)  # it exits right after saying why: its code (2: bad input)
    message = answer.removeprefix("error: ")
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=10)  # its exit code says bad input (2) or a runtime failure (1)
    if not message:
        message = f"mount process exited with status {child.poll()}; see {log_file}"
    console.error_line(message)
    return child.returncode if child.returncode not in (None, 0) else console.EXIT_FAILURE


def open_log(log_file: str) -> int:
    """The mount's log file, opened to append: made 0600 (with 0700 parents), never through a
    symlink; MountError if it cannot be."""
    try:
        private.make_dirs(Path(log_file).parent)
        return private.open_owned(log_file, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise MountError(f"cannot open log file {log_file}: {exc.strerror or exc}") from exc


def _wait_for_answer(read_end: int, child: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + _READY_TIMEOUT
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 0.2)
        if ready:
            chunk = os.read(read_end, 4096)
            if not chunk:
                child.wait(timeout=10)
                return buffer.decode().strip()
            buffer += chunk
            if buffer.endswith(b"\n"):
                return buffer.decode().strip()
    child.kill()
    return f"error: mount did not become ready within {_READY_TIMEOUT:.0f}s"


def parent_pipe() -> int:
    """The pipe to a waiting `--daemon` parent (-1: none); taken out of the environment, so
    processes the mount starts do not inherit it."""
    return int(os.environ.pop(READY_FD_ENV, "-1"))


def tell_parent(fd: int, message: str) -> None:
    """ "ok", "ok: WARNING", or "error: ..." (never raises: the parent may be gone)."""
    if fd < 0:
        return
    try:
        os.write(fd, (message + "\n").encode())
        os.close(fd)
    except OSError:
        pass
