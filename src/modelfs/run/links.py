"""`--link NAME=SUBPATH`: point `WORKDIR/NAME` at `MOUNTPOINT/SUBPATH`.

What it owns: parsing link specs and installing the symlinks.

Invariants:
- A symlink is replaced atomically: the new link is made under a temporary name in the same
  directory and renamed over the old one (rename(2) replaces the link itself, never what it
  points to), so an app starting concurrently sees the old or the new version, never nothing.
- A real file or directory at `WORKDIR/NAME` is never deleted. It is an error, or with
  `move_aside` it is renamed to `NAME.bak-<YYYYmmdd-HHMMSS>` (a `-N` suffix if taken).
- NAME is one path component; SUBPATH is relative and never climbs out of the mount ('..').
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from modelfs.errors import AlreadyExists, ConfigError


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """WORKDIR/name -> MOUNTPOINT/subpath ("." links the whole mount)."""

    name: str
    subpath: str

    def target(self, mountpoint: str) -> str:
        return os.path.normpath(os.path.join(mountpoint, self.subpath))


def parse_link(text: str) -> LinkSpec:
    """'cache_hub=cache_hub_v23' -> LinkSpec('cache_hub', 'cache_hub_v23')."""
    name, sep, subpath = text.strip().partition("=")
    name, subpath = name.strip(), subpath.strip()
    if not sep or not name or not subpath:
        raise ConfigError(f"invalid link {text!r} (expected NAME=SUBPATH, e.g. cache_hub=v23)")
    if "/" in name or name in (".", ".."):
        raise ConfigError(f"invalid link {text!r}: NAME must be a plain file name")
    parts = PurePosixPath(subpath).parts
    if subpath.startswith("/") or ".." in parts:
        raise ConfigError(f"invalid link {text!r}: SUBPATH must be relative to the mount")
    normalized = str(PurePosixPath(*parts)) if parts else "."
    return LinkSpec(name, normalized)


class LinkAction(enum.Enum):
    CREATED = "created"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"
    MOVED_ASIDE = "moved aside"


@dataclass(frozen=True, slots=True)
class LinkResult:
    path: Path
    target: str
    action: LinkAction
    backup: Path | None = None


def backup_path(path: Path, now: float) -> Path:
    """A free `NAME.bak-<timestamp>` next to `path`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    counter = 1
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{counter}")
        counter += 1
    return candidate


def install_link(
    workdir: Path, target: str, name: str, *, move_aside: bool = False, now: float | None = None
) -> LinkResult:
    """Make `workdir/name` a symlink to `target` (see the module invariants)."""
    path = workdir / name
    backup = None
    if path.is_symlink():
        if os.readlink(path) == target:
            return LinkResult(path, target, LinkAction.UNCHANGED)
        action = LinkAction.REPLACED
    elif os.path.lexists(path):
        kind = "directory" if path.is_dir() else "file"
        if not move_aside:
            raise AlreadyExists(
                f"{path} is a real {kind}; not replacing it with a link "
                "(move it away, or pass --move-aside to rename it to NAME.bak-<time>)"
            )
        backup = backup_path(path, time.time() if now is None else now)
        path.rename(backup)
        action = LinkAction.MOVED_ASIDE
    else:
        action = LinkAction.CREATED
    _replace_with_symlink(path, target)
    return LinkResult(path, target, action, backup)


def _replace_with_symlink(path: Path, target: str) -> None:
    temporary = path.with_name(f".{path.name}.modelfs-link-{os.getpid()}")
    try:
        if os.path.lexists(temporary):
            temporary.unlink()
        os.symlink(target, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            temporary.unlink()
