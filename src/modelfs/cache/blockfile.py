"""One block file of the block cache: its name, its header, its checksum and how it is written.

A block is up to `block_size` bytes of one object version (`ObjectId` = key + ETag) at one block
index. `BlockName` identifies it by 128-bit blake2b digests of the key and the ETag (keys can be
long and hold any character, file names cannot; at 128 bits collisions are out of reach for any
realistic bucket) plus the index. Where the file lives is `cache.tree`'s business.

Block file header (little endian; 64 bytes of fields, zero-padded to one 4 KiB page):

     0  magic  b"MFSB"          4  format u16 = 3     6  header size u16 = 4096
     8  key hash (16 bytes)    24  etag hash (16)    40  block index u64    48  payload length u64
    56  xxh3-64 of header[0:56] + payload

The header fills a page so that a whole block file is one page-aligned write: `BlockWriter`
writes with O_DIRECT where the filesystem allows it.

Invariants
- `verify` accepts only a header that names exactly the expected block and payload length and
  whose checksum matches header fields and payload; anything else raises `CorruptBlock`.
- `file_stamp` (inode, size, mtime_ns) changes with any rewrite of a file, so a stamp taken when
  a file was verified or written tells whether it still holds those bytes.
- `BlockWriter.write` creates a new file (O_EXCL) holding exactly header + payload with the
  given mtime; its `direct` flag only ever goes from True to False.

Checksum choice: format 2 used zlib.crc32, and because every block is checksummed when written,
crc32 showed up as a visible share of a cold read's CPU profile. Format 3 uses xxh3-64 (PyPI
`xxhash`), many times faster than crc32 and than every hashlib hash (see docs/performance.md):
any accidental corruption goes unnoticed with probability 2**-64. That is enough against
accidents; the cache is not a defence against an attacker who can write to it.

No locks: `BlockWriter` keeps one staging buffer per thread (thread-local), and its `direct`
flag is a single attribute store that any thread may make.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import mmap
import os
import struct
import threading
from typing import NamedTuple

import xxhash

from modelfs.objects import ObjectId

# The block cache logs under one name, its public module's, as it did before the split.
logger = logging.getLogger("modelfs.cache.disk")

FORMAT = 3
_MAGIC = b"MFSB"
_PREFIX = struct.Struct("<4sHH16s16sQQ")  # everything the checksum covers in the header
_SUFFIX = struct.Struct("<Q")  # xxh3-64
_FIELDS_SIZE = _PREFIX.size + _SUFFIX.size
assert _FIELDS_SIZE == 64
HEADER_SIZE = 4096  # the fields, zero-padded to a page: the payload starts page-aligned
_HEADER_PADDING = bytes(HEADER_SIZE - _FIELDS_SIZE)
_DIGEST_SIZE = 16  # 128-bit hashes: collisions are out of reach for any realistic bucket


Stamp = tuple[int, int, int]  # (inode, size, mtime_ns): any rewrite of a file changes it


def file_stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class BlockName(NamedTuple):
    key: bytes  # digest of the object key
    etag: bytes  # digest of the ETag
    number: int  # block index


class CorruptBlock(Exception):
    """A block file that does not hold what its name promises."""


@functools.lru_cache(maxsize=4096)  # a few entries per open object version is plenty
def _digest(text: str, person: bytes) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE, person=person).digest()


def key_digest(key: str) -> bytes:
    return _digest(key, b"modelfs-key")


def block_name(obj: ObjectId, index: int) -> BlockName:
    return BlockName(key_digest(obj.key), _digest(obj.etag, b"modelfs-etag"), index)


def _header_prefix(name: BlockName, payload_length: int) -> bytes:
    return _PREFIX.pack(
        _MAGIC, FORMAT, HEADER_SIZE, name.key, name.etag, name.number, payload_length
    )


def encode_header(name: BlockName, payload: bytes) -> bytes:
    prefix = _header_prefix(name, len(payload))
    return prefix + _SUFFIX.pack(checksum(prefix, payload)) + _HEADER_PADDING


def verify(name: BlockName, header: bytes, payload: bytes, expected_length: int) -> None:
    """Raise CorruptBlock unless `header` + `payload` is block `name` of `expected_length`."""
    if len(header) != HEADER_SIZE:
        raise CorruptBlock(f"short header ({len(header)} bytes)")
    prefix = header[: _PREFIX.size]
    if prefix != _header_prefix(name, expected_length):
        raise CorruptBlock("header does not name this block")
    if len(payload) != expected_length:
        raise CorruptBlock(f"truncated payload ({len(payload)} of {expected_length} bytes)")
    (stored,) = _SUFFIX.unpack_from(header, _PREFIX.size)
    if checksum(prefix, payload) != stored:
        raise CorruptBlock("checksum mismatch")


def checksum(prefix: bytes, payload: bytes) -> int:
    hasher = xxhash.xxh3_64(prefix)
    hasher.update(payload)
    return hasher.intdigest()


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("block cache: cannot remove %s: %s", path, exc)


class BlockWriter:
    """Writes block files, with O_DIRECT while the cache's filesystem accepts it.

    Why O_DIRECT: a cold read writes every byte it fetches into the cache, and through the page
    cache that write (the kernel's copy of the data into page-cache folios under the writer
    threads' writev) cost more CPU than anything else on the cold path; written with O_DIRECT,
    block files also reach the disk much faster (see docs/performance.md). O_DIRECT needs a
    page-aligned buffer, offset and length, so each writer thread owns an aligned staging
    buffer (an anonymous mmap, reused, so its pages stay mapped); the file is written from
    offset 0 rounded up to a whole page and then truncated to its real size. A filesystem
    that refuses O_DIRECT (EINVAL: tmpfs before Linux 6.6, some FUSE and network
    filesystems) switches this cache to buffered writes for good.
    The block then is not in the page cache, which is what we want while memory is short: the
    reader that caused the fetch got it from memory, and a later reader's `advise` brings it
    in. While memory is plentiful for the block's file the caller asks for a buffered write
    instead (`page_cache`, decided by `read.pagecache`): the disk then takes the writes later,
    merged, rather than during the cold fetch, where they competed with every other read of
    the disk (a local S3 server's among them), and the file's next random read finds the block
    in memory."""

    def __init__(self, block_size: int) -> None:
        self._capacity = _round_up(HEADER_SIZE + block_size, mmap.PAGESIZE)
        # Small payloads (a config file, the tail of an object) go through the page cache: an
        # O_DIRECT write waits for the disk, and for a burst of small files that wait, not the
        # copy, was the cost (profiled: the writer threads busy in the write, GET streams
        # blocked on the full write queue).
        self._direct_min = max(1, block_size // 2)
        self._local = threading.local()
        self.direct = hasattr(os, "O_DIRECT")

    def write(
        self, path: str, header: bytes, payload: bytes, mtime: float, *, page_cache: bool = False
    ) -> Stamp:
        """Create `path` (which must not exist) holding header + payload, mtime set; return
        the file's stamp. `page_cache`: write through the page cache even where O_DIRECT
        works (memory to spare: the block stays in memory for its next reader)."""
        fits = len(header) + len(payload) <= self._capacity
        if self.direct and fits and len(payload) >= self._direct_min and not page_cache:
            try:
                return self._write_file(path, header, payload, mtime, direct=True)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                unlink_quietly(path)
                self.direct = False
                logger.info("block cache: O_DIRECT refused here (%s); buffered writes", exc)
        return self._write_file(path, header, payload, mtime, direct=False)

    def _write_file(
        self, path: str, header: bytes, payload: bytes, mtime: float, *, direct: bool
    ) -> Stamp:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags | (os.O_DIRECT if direct else 0), 0o600)  # ours alone
        try:
            if direct:
                self._write_aligned(fd, header, payload)
            else:
                _write_all(fd, header, payload)
            os.utime(fd, (mtime, mtime))
            return file_stamp(os.fstat(fd))
        finally:
            os.close(fd)

    def _write_aligned(self, fd: int, header: bytes, payload: bytes) -> None:
        staging = self._staging()
        size = len(header) + len(payload)
        padded = _round_up(size, mmap.PAGESIZE)
        staging[: len(header)] = header
        staging[len(header) : size] = payload
        view = memoryview(staging)
        try:
            if padded > size:
                view[size:padded] = bytes(padded - size)
            written = 0
            while written < padded:
                written += os.write(fd, view[written:padded])
        finally:
            view.release()
        if padded > size:
            os.ftruncate(fd, size)

    def _staging(self) -> mmap.mmap:
        staging: mmap.mmap | None = getattr(self._local, "staging", None)
        if staging is None:
            staging = mmap.mmap(-1, self._capacity)
            self._local.staging = staging
        return staging


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _write_all(fd: int, header: bytes, payload: bytes) -> None:
    """writev header + payload, finishing any short write (regular files rarely do one)."""
    written = os.writev(fd, [header, payload])
    if written < len(header) + len(payload):
        rest = memoryview(header + payload)[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]
