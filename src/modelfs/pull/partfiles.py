"""Partial files of a pull: where its blocks land, and the record that makes a pull resumable.

A pull fetches with the mount's engine (`read.fetcher.BlockFetcher`), whose blocks go to a
`DataCache`; here that cache is the destination's partial files. Layout, under DEST:

    DEST/.modelfs-pull/                 0700, the pull's own directory (ignored by `verify`)
    ├── state.jsonl                     files completed by earlier pulls (see `state`)
    └── partial/
        ├── <h>.part                    the file being filled, block i at offset i*B (sparse)
        └── <h>.<B>.blocks              the blocks on disk: one 8-byte little-endian index
                                        appended per block once its bytes are written
    where <h> = sha256 of the file's path, 32 hex digits, and B is the block size.

Invariants: an index is appended to `.blocks` only after its bytes were written to `.part`, so
a pull killed at any point (even kill -9: both writes are in the kernel's page cache) finds
every recorded block on disk and fetches only the others. A power loss can lose the tail of
either file; a block recorded but lost reads back wrong, which the file's sha256 check at the
end catches (the partial file is then thrown away). A torn last record is ignored. A block
whose write failed (a full disk) is never recorded, so `missing` finds it before `finish`.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelfs.cache.protocol import CacheStatistics
from modelfs.host.flush import start_writeback
from modelfs.objects import ObjectId

PULL_DIR = ".modelfs-pull"
_RECORD = struct.Struct("<Q")


def pull_dir(dest: Path) -> Path:
    return dest / PULL_DIR


@dataclass
class _Partial:
    path: str
    part: Path
    log: Path
    fd: int
    log_fd: int
    present: set[int] = field(default_factory=set)
    error: OSError | None = None  # the last failed write (a full disk, most likely)


class PartFiles:
    """The `DataCache` of a pull: blocks of the files being pulled, by path (`ObjectId.key`).

    `put` runs on the fetcher's writer threads, everything else on the trio thread; `_lock`
    guards the table and the present sets (never held across I/O of another file)."""

    def __init__(
        self, dest: Path, block_size: int, on_written: Callable[[int], None] = lambda n: None
    ) -> None:
        self.block_size = block_size
        self.dir = pull_dir(dest) / "partial"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(pull_dir(dest), 0o700)
        self._on_written = on_written
        self._umask = _umask()  # read once, here: reading it sets it for a moment
        self._lock = threading.Lock()
        self._open: dict[str, _Partial] = {}
        self._writes = self._write_errors = 0

    def _names(self, path: str) -> tuple[Path, Path]:
        return partial_names(self.dir, path, self.block_size)

    def open(self, path: str) -> set[int]:
        """Start (or resume) the partial file of `path`; the blocks it holds already."""
        part, log = self._names(path)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        log_fd = os.open(log, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        present = _read_log(log_fd)
        with self._lock:
            self._open[path] = _Partial(path, part, log, fd, log_fd, present)
        return set(present)

    def discard(self, path: str) -> None:
        """Throw the partial file away (its bytes failed the check, or it is done)."""
        partial = self._close(path)
        if partial is not None:
            for leftover in (partial.part, partial.log):
                leftover.unlink(missing_ok=True)

    def finish(self, path: str, size: int, target: Path) -> None:
        """The partial file is whole and checked: make it `target` (atomically; durable at the
        pull's next checkpoint, see `state.Checkpoints`: one filesystem sync for many files,
        not an fsync each)."""
        partial = self._entry(path)
        os.ftruncate(partial.fd, size)
        os.fchmod(partial.fd, 0o666 & ~self._umask)  # as any file the user creates
        _move_into_place(partial.part, target)
        self._close(path)
        partial.log.unlink(missing_ok=True)

    def write_whole(self, path: str, data: bytes, target: Path) -> None:
        """A small file fetched in one piece: written beside the partial files (created with
        the mode any file the user creates gets), then renamed into place (durable at the next
        checkpoint, as `finish`). Thread safe: many worker threads write files at once."""
        part, _ = self._names(path)
        temporary = part.with_suffix(".whole")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, 0o666)
        except FileExistsError:  # left by a pull killed while writing it: its mode may differ
            temporary.unlink()
            fd = os.open(temporary, flags, 0o666)
        try:
            _write_all(fd, data, 0)
        finally:
            os.close(fd)
        _move_into_place(temporary, target)

    def missing(self, path: str, count: int) -> int:
        """How many of the file's `count` blocks are not on disk."""
        with self._lock:
            return count - len(self._open[path].present & set(range(count)))

    def last_error(self, path: str) -> OSError | None:
        with self._lock:
            return self._open[path].error

    def close(self) -> None:
        for path in list(self._open):
            self._close(path)

    # -- DataCache -------------------------------------------------------------------------

    def put(self, obj: ObjectId, index: int, data: bytes, *, page_cache: bool = False) -> None:
        """Write and record a block; never raises (a failed write stays unrecorded, and
        `missing` reports it before the file could be finished). Part files are always
        written through the page cache: `page_cache` changes nothing."""
        partial = self._entry(obj.key)
        offset = index * self.block_size
        try:
            _write_all(partial.fd, data, offset)
            os.write(partial.log_fd, _RECORD.pack(index))
            start_writeback(partial.fd, offset, len(data))  # on disk by the checkpoint
        except OSError as exc:
            with self._lock:
                self._write_errors += 1
                partial.error = exc
            return
        with self._lock:
            partial.present.add(index)
            self._writes += 1
        self._on_written(len(data))

    def get(self, obj: ObjectId, index: int) -> bytes | None:
        return self.get_range(obj, index, 0, self.block_size)

    def get_range(self, obj: ObjectId, index: int, start: int, length: int) -> bytes | None:
        partial = self._open.get(obj.key)
        if partial is None or not self.contains(obj, index):
            return None
        return os.pread(partial.fd, length, index * self.block_size + start)

    def contains(self, obj: ObjectId, index: int) -> bool:
        with self._lock:
            partial = self._open.get(obj.key)
            return partial is not None and index in partial.present

    def advise(self, obj: ObjectId, index: int) -> None:
        return None

    def statistics(self) -> CacheStatistics:
        with self._lock:
            blocks = sum(len(partial.present) for partial in self._open.values())
            return CacheStatistics(
                blocks=blocks,
                bytes=blocks * self.block_size,
                max_bytes=0,
                hits=0,
                misses=0,
                evictions=0,
                corrupt=0,
                write_errors=self._write_errors,
            )

    def _entry(self, path: str) -> _Partial:
        with self._lock:
            return self._open[path]

    def _close(self, path: str) -> _Partial | None:
        with self._lock:
            partial = self._open.pop(path, None)
        if partial is not None:
            os.close(partial.fd)
            os.close(partial.log_fd)
        return partial


def partial_names(directory: Path, path: str, block_size: int) -> tuple[Path, Path]:
    """The partial file of `path` and its record of blocks."""
    name = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return directory / f"{name}.part", directory / f"{name}.{block_size}.blocks"


def recorded_bytes(dest: Path, block_size: int, path: str, size: int) -> int:
    """Bytes of `path` an earlier pull into `dest` left on disk (0 if none)."""
    _, log = partial_names(pull_dir(dest) / "partial", path, block_size)
    try:
        fd = os.open(log, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        blocks = _read_log(fd)
    finally:
        os.close(fd)
    ends = (min((index + 1) * block_size, size) for index in blocks if index * block_size < size)
    return sum(end - (end - 1) // block_size * block_size for end in ends)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _read_log(fd: int) -> set[int]:
    size = os.fstat(fd).st_size
    data = os.pread(fd, size - size % _RECORD.size, 0)
    return {index for (index,) in _RECORD.iter_unpack(data)}


def _move_into_place(source: Path, target: Path) -> None:
    """Rename `source` to `target`, making `target`'s directories first if they are missing
    (tried after the rename fails, so a tree of many files in few directories pays nothing)."""
    try:
        os.replace(source, target)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
