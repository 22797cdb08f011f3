"""Partial files of a pull: where its blocks land, and the record that makes a pull resumable.

A pull fetches with the mount's engine (`read.fetcher.BlockFetcher`), whose blocks go to a
`DataCache`; here that cache is the destination's partial files. Layout, under DEST:

    DEST/.modelfs-pull/                 0700, the pull's own directory (ignored by `verify`)
    ├── state.jsonl                     files completed by earlier pulls (see `state`)
    └── partial/
        ├── <h>.part                    the file being filled, block i at offset i*B (sparse)
        └── <h>.<B>.blocks              the blocks on disk: a header (16-byte tags of the
                                        boot it was written in and of the version pulled),
                                        then one 8-byte little-endian record per block once
                                        its bytes are written, and marks
    where <h> = sha256 of the file's path, 32 hex digits, and B is the block size.

Invariants: an index is appended to `.blocks` only after its bytes were written to `.part`, so
a pull killed at any point (even kill -9: both writes are in the kernel's page cache) finds
every recorded block on disk and fetches only the others. A torn last record is ignored. A
block whose write failed (a full disk) is never recorded, so `missing` finds it before `finish`.
The blocks are of the version the header names (the manifest's sha256, else the listing's
ETag): a resumed pull of another version (the object was replaced meanwhile) starts afresh,
never mixing the bytes of two versions.

A power loss is another matter: the page cache is gone, and what reached the disk of the two
files need not agree (a record may survive its block's bytes, which then read back as zeros;
a pull without a manifest has no sha256 to catch that). So a checkpoint (`mark_durable`, every
few seconds of a pull) fdatasyncs each partial file and its record, then appends a mark, "the
record's first N bytes are durable", and syncs it too. A record read in the boot it was
written in (the tag; `host.boot`) stands whole; one from an earlier boot stands up to its last
mark, and is rewritten for this boot with just those blocks (synced before it replaces the old
one). A power loss thus costs the blocks fetched since the last checkpoint, never wrong bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelfs.cache.protocol import CacheStatistics
from modelfs.host.boot import current_boot
from modelfs.host.flush import start_writeback
from modelfs.objects import ObjectId

PULL_DIR = ".modelfs-pull"
_RECORD = struct.Struct("<Q")
_MARK = 1 << 63  # a record with this bit: the record file's first (value - _MARK) bytes are durable
TAG_SIZE = 16
HEADER_SIZE = 2 * TAG_SIZE  # the boot's tag, then the version's

log = logging.getLogger(__name__)


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
    log_size: int = 0  # bytes of the record written so far (whole records)
    settled: int = 0  # the record's size when nothing in it awaited a mark
    closing: threading.Lock = field(default_factory=threading.Lock)  # held while fds are used
    closed: bool = False


class PartFiles:
    """The `DataCache` of a pull: blocks of the files being pulled, by path (`ObjectId.key`).

    `put` runs on the fetcher's writer threads, `mark_durable` on a checkpoint's thread,
    everything else on the trio thread. `_lock` guards the table, the present sets and the
    record sizes (never held across I/O); a partial's `closing` lock keeps its descriptors
    open while a checkpoint syncs them. Lock order: `closing`, then `_lock`."""

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
        self._boot = boot_tag()

    def _names(self, path: str) -> tuple[Path, Path]:
        return partial_names(self.dir, path, self.block_size)

    def open(self, path: str, version: str) -> set[int]:
        """Start (or resume) the partial file of `version` of `path`; the blocks it holds."""
        part, record = self._names(path)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        present, settled = self._resume(record, self._boot + version_tag(version))
        if not present:
            os.ftruncate(fd, 0)  # another version's bytes, or none: they take no space
        log_fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        size = os.fstat(log_fd).st_size
        size -= (size - HEADER_SIZE) % _RECORD.size  # a torn last record: the next follows it
        os.ftruncate(log_fd, size)
        with self._lock:
            self._open[path] = _Partial(
                path, part, record, fd, log_fd, present, log_size=size, settled=settled
            )
        return set(present)

    def _resume(self, record: Path, header: bytes) -> tuple[set[int], int]:
        """The blocks `record` says are on disk, and how much of it needs no new mark; a
        record with another header (another boot or version, or none) is replaced by one with
        `header` and what stands."""
        try:
            data = record.read_bytes()
        except FileNotFoundError:
            data = b""
        present, marked = read_records(data, header)
        if data[:HEADER_SIZE] == header:
            return present, marked
        content = header + b"".join(_RECORD.pack(index) for index in sorted(present))
        if present:  # their bytes were synced before the mark that vouched for them
            content += _RECORD.pack(_MARK | len(content))
        temporary = record.with_suffix(".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, content, 0)
            if present:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, record)
        return present, len(content) if present else 0

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

    def mark_durable(self) -> None:
        """Make the blocks recorded so far durable, then mark each record so (blocking: run in
        a thread). A failed sync marks nothing: the next checkpoint tries again."""
        with self._lock:
            partials = [p for p in self._open.values() if p.log_size > p.settled]
        for partial in partials:
            with partial.closing:
                if partial.closed:
                    continue
                with self._lock:
                    size = partial.log_size  # blocks recorded by now are written: synced next
                try:
                    os.fdatasync(partial.fd)
                    os.fdatasync(partial.log_fd)
                    os.write(partial.log_fd, _RECORD.pack(_MARK | size))
                    os.fdatasync(partial.log_fd)  # the mark too: what it vouches for stands
                except OSError as exc:
                    log.debug("checkpoint of %s: %s", partial.path, exc)
                    continue
                with self._lock:
                    partial.log_size += _RECORD.size
                    recorded_meanwhile = partial.log_size != size + _RECORD.size
                    partial.settled = size if recorded_meanwhile else partial.log_size

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
            partial.log_size += _RECORD.size
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
            with partial.closing:
                partial.closed = True
                os.close(partial.fd)
                os.close(partial.log_fd)
        return partial


def partial_names(directory: Path, path: str, block_size: int) -> tuple[Path, Path]:
    """The partial file of `path` and its record of blocks."""
    name = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return directory / f"{name}.part", directory / f"{name}.{block_size}.blocks"


def recorded_bytes(dest: Path, block_size: int, path: str, size: int, version: str) -> int:
    """Bytes of `version` of `path` an earlier pull into `dest` left on disk (0 if none)."""
    _, record = partial_names(pull_dir(dest) / "partial", path, block_size)
    try:
        blocks, _ = read_records(record.read_bytes(), boot_tag() + version_tag(version))
    except OSError:
        return 0
    ends = (min((index + 1) * block_size, size) for index in blocks if index * block_size < size)
    return sum(end - (end - 1) // block_size * block_size for end in ends)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def boot_tag() -> bytes:
    """What a record file written in this boot starts with."""
    return hashlib.sha256(current_boot().encode()).digest()[:TAG_SIZE]


def version_tag(version: str) -> bytes:
    """What a record file of `version` (a sha256 or an ETag) has after the boot's tag."""
    return hashlib.sha256(version.encode("utf-8", "surrogateescape")).digest()[:TAG_SIZE]


def read_records(data: bytes, header: bytes) -> tuple[set[int], int]:
    """The blocks a record file's bytes say are on disk, and how many of its bytes its last
    mark says are durable, for the boot and version `header` names (`boot_tag() +
    version_tag(v)`): none of another version; of this version, every record if written in
    this boot, else those before the last mark (a torn last record is ignored either way)."""
    if data[TAG_SIZE:HEADER_SIZE] != header[TAG_SIZE:]:
        return set(), 0
    end = len(data) - (len(data) - HEADER_SIZE) % _RECORD.size
    blocks: list[tuple[int, int]] = []
    marked = 0
    for offset in range(HEADER_SIZE, end, _RECORD.size):
        (value,) = _RECORD.unpack_from(data, offset)
        if not value & _MARK:
            blocks.append((offset + _RECORD.size, value))
        elif value - _MARK <= offset:  # a mark vouches only for what was written before it
            marked = max(marked, value - _MARK)
    stands = end if data[:TAG_SIZE] == header[:TAG_SIZE] else marked
    return {index for record_end, index in blocks if record_end <= stands}, marked


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
