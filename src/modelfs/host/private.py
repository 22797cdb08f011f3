"""Paths only this user may touch: the control directory, the cache, the journal, the logs.

A directory another local user can write is one where they can plant a block file (xxh3 is a
checksum, not a MAC, and a pickled `.pt` runs code in the app), swap the control socket, or
put a symlink where modelfs is about to write. So, one rule each:

- `make_dirs(path)`: create `path` and its missing parents with mode 0700;
- `require_dir(path, what, forbidden)`: `path` is a real directory (not a symlink) owned by the
  effective user, with none of the `forbidden` mode bits; else `UnsafePath`, one line naming
  what is wrong and what to do;
- `own_dir(path, what)`: a directory modelfs alone uses (a cache root, the write-back root):
  made, checked like `require_dir` (what another user could have planted in it would be
  trusted, so it is refused, not narrowed), and narrowed to 0700 if an older version left it
  readable by others;
- `open_new(path, flags)`: a new file, 0600, with O_EXCL|O_NOFOLLOW, so a planted file or
  symlink makes the open fail instead of being followed;
- `replace_file(path, data, durable)`: atomically replace `path` through a new temp file
  (named after the process and thread, so two threads never share one), synced first if
  `durable`;
- `open_owned(path, flags)`: a file modelfs keeps (a log, the journal): created 0600, never
  opened through a symlink, narrowed to 0600 if an older version left it wider (`narrow`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

from modelfs.errors import UnsafePath

DIR_MODE = 0o700
FILE_MODE = 0o600
GROUP_OR_OTHERS_WRITE = 0o022
GROUP_OR_OTHERS_ANY = 0o077


def make_dirs(path: Path) -> None:
    """mkdir -p with mode 0700 for every directory it creates (existing ones are left)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)


def require_dir(path: Path, what: str, forbidden: int = GROUP_OR_OTHERS_WRITE) -> None:
    """UnsafePath unless `path` is a directory of ours without `forbidden` mode bits."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UnsafePath(f"{what} {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{what} {path} is not a directory")
    problem = _problem(st, forbidden)
    if problem is not None:
        raise UnsafePath(f"{what} {path} is not safe to use: {problem}")


def _problem(st: os.stat_result, forbidden: int) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "it is a symlink (remove it)"
    euid = os.geteuid()
    if st.st_uid != euid:
        return f"it belongs to uid {st.st_uid}, not to uid {euid} (remove it, or use another)"
    mode = stat.S_IMODE(st.st_mode)
    if mode & forbidden:
        return f"mode {mode:04o} lets other users in (chmod {mode & ~forbidden:04o} it)"
    return None


def own_dir(path: Path, what: str) -> None:
    """A directory modelfs alone uses: create it (0700), check it is ours and writable by no
    other user (UnsafePath), narrow it to 0700."""
    make_dirs(path)
    require_dir(path, what)
    if stat.S_IMODE(os.stat(path).st_mode) & GROUP_OR_OTHERS_ANY:
        os.chmod(path, DIR_MODE)


def open_new(path: Path | str, flags: int = os.O_WRONLY) -> int:
    """Create `path` (0600) and open it; FileExistsError if anything, a symlink too, is there."""
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)


def replace_file(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to a new 0600 temp file beside `path` (synced if `durable`: a power
    loss then leaves the old file or the new one, never a torn one), rename it over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # left by a crash of this pid's predecessor: ours to remove
    fd = open_new(temporary)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, path)


def open_owned(path: Path | str, flags: int) -> int:
    """Open (creating 0600) a file modelfs keeps; ELOOP if it is a symlink; one of ours left
    wider by an older version is narrowed to 0600."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        _narrow(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def narrow(path: Path | str) -> None:
    """Make an existing file of ours 0600 (nothing if it is missing, or a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _narrow(fd)
    finally:
        os.close(fd)


def _narrow(fd: int) -> None:
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & GROUP_OR_OTHERS_ANY:
        os.fchmod(fd, FILE_MODE)
