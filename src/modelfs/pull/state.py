"""What earlier pulls completed in DEST, so a complete file is skipped without a byte fetched.

`DEST/.modelfs-pull/state.json` maps each completed path to the size, sha256 and ETag it was
pulled with and the file's mtime (ns) right after. A file is complete if it still has that
size and mtime and the version wanted now is the one recorded (same sha256 from a manifest,
or same ETag from the bucket's listing). A file that is there with no record (a copy made by
hand, an earlier tool) is hashed once, locally, and counts as complete if the manifest's
sha256 matches; without a sha256 to compare, it is pulled again: a size alone proves nothing
(the start scripts this replaces skipped `model_v23.pt` "whatever its content").

The record is rewritten atomically (temporary file, rename) after each completed file, so a
kill loses at most the record of a file whose own rename had not happened yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modelfs.pull.partfiles import pull_dir

if TYPE_CHECKING:
    from modelfs.pull.engine import PullFile

STATE_NAME = "state.json"
_HASH_PIECE = 8 << 20


@dataclass(frozen=True, slots=True)
class Completed:
    size: int
    sha256: str
    etag: str | None
    mtime_ns: int


class PullState:
    def __init__(self, dest: Path) -> None:
        self._path = pull_dir(dest) / STATE_NAME
        self._dest = dest
        self._lock = threading.Lock()
        self._files: dict[str, Completed] = {}
        with contextlib.suppress(OSError, ValueError, TypeError):
            data = json.loads(self._path.read_text())
            self._files = {path: Completed(**entry) for path, entry in data["files"].items()}

    def is_complete(self, path: str, size: int, sha256: str | None, etag: str | None) -> bool:
        """Whether DEST/path is already this version (see the module docstring)."""
        target = self._dest / path
        try:
            stat = target.stat()
        except OSError:
            return False
        if stat.st_size != size:
            return False
        with self._lock:
            known = self._files.get(path)
        if known is not None and known.size == size and known.mtime_ns == stat.st_mtime_ns:
            if sha256 is not None:
                return known.sha256 == sha256
            return etag is not None and known.etag == etag
        if sha256 is None:
            return False
        if file_sha256(target) != sha256:
            return False
        self.record(path, size, sha256, etag)
        return True

    def pending(self, files: Sequence[PullFile]) -> list[PullFile]:
        """The files not complete already (blocking: may hash a file with no record)."""
        return [f for f in files if not self.is_complete(f.path, f.size, f.sha256, f.etag)]

    def record(self, path: str, size: int, sha256: str, etag: str | None) -> None:
        mtime_ns = (self._dest / path).stat().st_mtime_ns
        with self._lock:
            self._files[path] = Completed(size, sha256, etag, mtime_ns)
            data = {"files": {name: asdict(entry) for name, entry in self._files.items()}}
            temporary = self._path.with_suffix(".tmp")
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            os.replace(temporary, self._path)


def file_sha256(path: Path) -> str:
    """The sha256 of a local file (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while piece := source.read(_HASH_PIECE):
            digest.update(piece)
    return digest.hexdigest()
