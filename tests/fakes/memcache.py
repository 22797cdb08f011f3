"""`MemoryDataCache`: a bounded in-memory LRU `DataCache` for unit tests of the read path."""

from __future__ import annotations

from collections import OrderedDict

from modelfs.cache.protocol import CacheStatistics
from modelfs.objects import ObjectId


class MemoryDataCache:
    """A bounded in-memory LRU `DataCache` for tests of the read path."""

    def __init__(self, block_size: int, max_bytes: int) -> None:
        self.block_size = block_size
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[tuple[ObjectId, int], bytes] = OrderedDict()
        self.page_cache_puts = 0  # puts told that memory is plentiful for their file
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    def get(self, obj: ObjectId, index: int) -> bytes | None:
        data = self._blocks.get((obj, index))
        if data is None:
            self._misses += 1
            return None
        self._hits += 1
        self._blocks.move_to_end((obj, index))
        return data

    def get_range(self, obj: ObjectId, index: int, start: int, length: int) -> bytes | None:
        data = self.get(obj, index)
        return None if data is None else data[start : start + length]

    def put(self, obj: ObjectId, index: int, data: bytes, *, page_cache: bool = False) -> None:
        self.page_cache_puts += page_cache
        old = self._blocks.pop((obj, index), None)
        if old is not None:
            self._bytes -= len(old)
        while self._blocks and self._bytes + len(data) > self.max_bytes:
            _, evicted = self._blocks.popitem(last=False)
            self._bytes -= len(evicted)
            self._evictions += 1
        self._blocks[(obj, index)] = data
        self._bytes += len(data)

    def contains(self, obj: ObjectId, index: int) -> bool:
        return (obj, index) in self._blocks

    def advise(self, obj: ObjectId, index: int) -> None:
        pass

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            blocks=len(self._blocks),
            bytes=self._bytes,
            max_bytes=self.max_bytes,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            corrupt=0,
            write_errors=0,
        )
