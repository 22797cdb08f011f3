"""What earlier pulls completed in DEST, so a complete file is skipped without a byte fetched.

`DEST/.modelfs-pull/state.jsonl` maps each completed path to the size, sha256 and ETag it was
pulled with and the file's mtime (ns) right after. A file is complete if it still has that
size and mtime and the version wanted now is the one recorded (same sha256 from a manifest,
or same ETag from the bucket's listing). A file that is there with no record (a copy made by
hand, an earlier tool) is hashed once, locally, and counts as complete if the manifest's
sha256 matches; without a sha256 to compare, it is pulled again: a size alone proves nothing
(the start scripts this replaces skipped `model_v23.pt` "whatever its content").

The record is a JSON-lines file, `state.jsonl`: one line appended (O_APPEND) per completed
file, the last line of a path winning, so a pull of thousands of small files pays one small
write per file, not a rewrite of the whole record; a torn last line is ignored, and a record
with many superseded lines is compacted (rewritten atomically) when it is loaded.

Durability (`Checkpoints`): a finished file is renamed into place at once, but recorded only
after a checkpoint has synced the destination's filesystem (one `syncfs` every `interval`
seconds and at the end, for every file finished before it began, instead of an fsync of each
file and directory, which cost a journal commit each). A power loss can therefore leave a
renamed file whose bytes never reached the disk, but never a record of one: a file with no
record is hashed locally against the manifest, or fetched again without one.
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

from modelfs.host.flush import sync_filesystem
from modelfs.pull.partfiles import PartFiles, pull_dir

if TYPE_CHECKING:
    from modelfs.pull.engine import PullFile

STATE_NAME = "state.jsonl"
_COMPACT_FACTOR = 2  # compact when the record has this many lines per file it describes
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
        lines = 0
        with contextlib.suppress(OSError):
            for line in self._path.read_text(errors="replace").splitlines():
                lines += 1
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    entry = json.loads(line)
                    path = entry.pop("path")
                    self._files[path] = Completed(**entry)
        if lines > _COMPACT_FACTOR * max(len(self._files), 1):
            self._compact()

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
        """Note `path` as complete at this version (one appended line)."""
        self.record_all([(path, size, sha256, etag)])

    def record_all(self, files: Sequence[tuple[str, int, str, str | None]]) -> None:
        """Note each (path, size, sha256, etag) as complete, in one append; a file gone
        meanwhile (removed by the user) gets no record."""
        lines = []
        entries = {}
        for path, size, sha256, etag in files:
            try:
                mtime_ns = (self._dest / path).stat().st_mtime_ns
            except OSError:
                continue
            entries[path] = entry = Completed(size, sha256, etag, mtime_ns)
            lines.append(json.dumps({"path": path, **asdict(entry)}) + "\n")
        with self._lock:
            self._files.update(entries)
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
            fd = os.open(self._path, flags, 0o600)
            try:
                os.write(fd, "".join(lines).encode())
            finally:
                os.close(fd)

    def _compact(self) -> None:
        lines = [json.dumps({"path": p, **asdict(e)}) + "\n" for p, e in self._files.items()]
        temporary = self._path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(lines)
        os.replace(temporary, self._path)


def file_sha256(path: Path) -> str:
    """The sha256 of a local file (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while piece := source.read(_HASH_PIECE):
            digest.update(piece)
    return digest.hexdigest()


class Checkpoints:
    """Files finished since the last checkpoint, recorded once the filesystem is synced; and
    the partial files' blocks, made durable and marked so (`PartFiles.mark_durable`)."""

    def __init__(self, state: PullState, dest: Path, partials: PartFiles) -> None:
        self._state = state
        self._dest = dest
        self._partials = partials
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, str, str | None]] = []

    def finished(self, path: str, size: int, sha256: str, etag: str | None) -> None:
        with self._lock:
            self._pending.append((path, size, sha256, etag))

    def sync(self) -> int:
        """Sync DEST's filesystem, then record what was finished before (blocking: run it in a
        thread); how many files it recorded. The partial files' blocks first."""
        self._partials.mark_durable()
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        sync_filesystem(self._dest)
        self._state.record_all(batch)
        return len(batch)
