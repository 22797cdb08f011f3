"""What `stat` shows of a file or directory of the mount.

A file's size and mtime are its object's (or, while staged, what the writer holds); owner and
group are the mount's `--uid`/`--gid`; modes are 0777 (directories) and 0666 (files) minus the
umask, files 0444 on a read-only mount. Directories have the mount's start time (an object store
keeps no times for prefixes). The kernel keeps entries and attributes for `dir_cache_time`.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from modelfs.core.inodes import Node


@dataclass(frozen=True, slots=True)
class FsOptions:
    uid: int = 0
    gid: int = 0
    umask: int = 0o022
    dir_cache_time: float = 60.0  # how long the kernel may keep entries and attributes


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    is_dir: bool
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    timeout: float


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    attr: Attr


def attributes(node: Node, options: FsOptions, read_only: bool, mount_time_ns: int) -> Attr:
    if node.is_dir:
        mode = stat.S_IFDIR | (0o777 & ~options.umask)
        size, mtime_ns = 0, mount_time_ns
    else:
        perm = 0o444 if read_only else 0o666
        mode = stat.S_IFREG | (perm & ~options.umask)
        assert node.info is not None
        size, mtime_ns = node.info.size, int(node.info.mtime * 1e9)
    timeout = options.dir_cache_time
    return Attr(node.ino, node.is_dir, size, mtime_ns, mode, options.uid, options.gid, timeout)
