"""The `DataCache` protocol: where fetched blocks are kept, keyed by object version.

A block is `block_size` bytes of one object version (the last block of an object may be
shorter). The read path depends only on this protocol, so it is tested with an in-memory cache
(`tests/fakes/memcache.py`); the persistent implementation is `cache.disk.DiskBlockCache`.

The cache is an optimisation, never a source of failure: `get` returns None for anything it
cannot vouch for (missing, corrupt, unreadable) and `put` swallows and logs its own errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelfs.objects import ObjectId


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    blocks: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int
    corrupt: int
    write_errors: int
    pinned_bytes: int = 0  # block file bytes of the pinned files (never evicted)
    pinned_files: int = 0


class DataCache(Protocol):
    block_size: int

    def get(self, obj: ObjectId, index: int) -> bytes | None:
        """The verified block, or None (a miss)."""

    def put(self, obj: ObjectId, index: int, data: bytes, *, page_cache: bool = False) -> None:
        """Store a block; never raises. `page_cache`: memory is plentiful for the block's file,
        write it where the next read finds it in memory (a hint)."""

    def get_range(self, obj: ObjectId, index: int, start: int, length: int) -> bytes | None:
        """Part of a verified block, or None (a miss)."""

    def contains(self, obj: ObjectId, index: int) -> bool:
        """Whether `get` would likely hit (cheap; not verified)."""

    def advise(self, obj: ObjectId, index: int) -> None:
        """Hint that the block will be read soon (start loading it); never raises."""

    def statistics(self) -> CacheStatistics: ...
