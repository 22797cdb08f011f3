"""What a power loss leaves of a staging file, and how recovery tells whether to trust it.

A write() lands in the kernel's page cache: it outlives modelfs (kill -9 loses nothing), not
the machine. The journal row of a file is committed before the file's first changed byte, so
after a power loss a row can name a staging file that lost what was written since its last
fsync: shorter, zero-filled, or with part of a write. Uploaded over the object, that would
replace a good object with a torn copy. So:

- The journal records the boot (`host.boot.current_boot`) its rows were last checked in: a
  journal from this boot (only modelfs died) is trusted as it is; one from another boot (a
  power loss, a crash of the kernel, or any reboot) is checked row by row (`recovery`).
- `Digests` holds xxh3-128 digests of a staging file's 1 MiB chunks from offset 0, brought up
  to date incrementally: an fsync of a growing log hashes the last chunk and what was appended,
  not the whole file. The digest of a file's first `size` bytes is the xxh3-128 of its chunk
  digests in order.
- `verdict` compares a staging file after a reboot with what its row says was synced.

Invariant (kept by `files.StagedFiles.make_durable`, the only code that records synced state):
a row's synced `(size, digest)` is committed after an fsync of the staging file returned, and
only if no byte below `size` changed between the reading of those bytes and that fsync's end.
So a staging file whose first `size` bytes match `digest` after a reboot holds exactly the
bytes that fsync made durable (an xxh3-128 collision aside: a checksum, not a MAC).
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass, field

import xxhash

from modelfs.write.journal import Synced
from modelfs.write.staging import read_at

CHUNK = 1 << 20
NOTHING_CHANGED = sys.maxsize


@dataclass(eq=False)
class Digests:
    """Chunk digests of bytes [0, size) of a staging file, as of their last `update`; bytes
    from `low` on changed since (the file's writers report each change with `changed`).

    `begin` runs on the trio thread, `update` in a worker thread; one update at a time (the
    caller holds the file's sync lock). Writes that land during an update lower `low` again, so
    the next update reads those chunks once more."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    low: int = NOTHING_CHANGED

    def changed(self, offset: int) -> None:
        self.low = min(self.low, offset)

    def begin(self) -> int:
        """Start an update: the offset to read from (the start of the first stale chunk)."""
        start = min(self.low, self.size)
        self.low = NOTHING_CHANGED
        return start - start % CHUNK

    def update(self, fd: int, start: int, size: int) -> str:
        """Hash bytes [start, size) of `fd` (blocking); the digest of bytes [0, size)."""
        del self.chunks[start // CHUNK :]
        for offset in range(start, size, CHUNK):
            chunk = read_at(fd, offset, min(CHUNK, size - offset))
            self.chunks.append(xxhash.xxh3_128_digest(chunk))
        self.size = size
        return self.digest()

    def digest(self) -> str:
        return xxhash.xxh3_128_hexdigest(b"".join(self.chunks))


def digests_of(fd: int, size: int) -> tuple[Digests, str]:
    """Fresh digests of bytes [0, size) of `fd` (blocking), and their digest."""
    digests = Digests()
    return digests, digests.update(fd, 0, size)


class Verdict(enum.Enum):
    INTACT = "exactly what was synced"
    GREW = "what was synced, then bytes no fsync covered"
    TORN = "not what was synced (or never synced)"


def verdict(fd: int, size: int, synced: Synced | None) -> tuple[Verdict, Digests | None]:
    """How staging file `fd` of `size` bytes compares with its row's `synced` state after a
    reboot (blocking: reads up to `synced.size` bytes). The digests of the synced bytes come
    with INTACT and GREW."""
    if synced is None or size < synced.size:
        return Verdict.TORN, None
    digests, digest = digests_of(fd, synced.size)
    if digest != synced.digest:
        return Verdict.TORN, None
    return (Verdict.INTACT if size == synced.size else Verdict.GREW), digests
