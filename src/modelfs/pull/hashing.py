"""The sha256 and size of every file of a tree: a local directory or a remote prefix.

Used by `manifest create` (to write a manifest) and `verify` (to check one). Files are hashed
in parallel worker threads (`hashlib` releases the GIL while it hashes), each read once as a
stream: a local file in 8 MiB pieces, a remote object straight from its GET, with no local
copy. The pull's own directory (`.modelfs-pull/`) and the manifest itself are not part of a
tree.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from modelfs.objects import ObjectInfo
from modelfs.pull.manifest import MANIFEST_NAME
from modelfs.pull.partfiles import PULL_DIR
from modelfs.pull.state import file_sha256
from modelfs.store.protocol import ObjectStore

PIECE = 8 << 20
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Hashed:
    path: str
    size: int
    sha256: str
    etag: str | None = None


def local_files(root: Path) -> dict[str, int]:
    """Every regular file under `root` (relative path -> size), symlinks followed."""
    found: dict[str, int] = {}
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if d != PULL_DIR)
        for name in sorted(names):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if relative == MANIFEST_NAME or not path.is_file():
                continue
            found[relative] = path.stat().st_size
    return found


def hash_local(root: Path, paths: Iterable[str], threads: int) -> list[Hashed]:
    def one(path: str) -> Hashed:
        target = root / path
        return Hashed(path, target.stat().st_size, file_sha256(target))

    return _in_parallel(one, paths, threads)


def hash_remote(
    store: ObjectStore, prefix: str, infos: Iterable[ObjectInfo], threads: int
) -> list[Hashed]:
    def one(info: ObjectInfo) -> Hashed:
        digest = hashlib.sha256()
        for piece in store.iter_range(info.id, 0, info.size, PIECE):
            digest.update(piece)
        return Hashed(info.key[len(prefix) :], info.size, digest.hexdigest(), info.etag)

    return _in_parallel(one, infos, threads)


def _in_parallel(work: Callable[[T], Hashed], items: Iterable[T], threads: int) -> list[Hashed]:
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="hash") as pool:
        return sorted(pool.map(work, items), key=lambda hashed: hashed.path)
