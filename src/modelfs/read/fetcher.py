"""Fetching blocks of object versions: from the data cache, or from the store with ranged GETs.

Owns the in-flight table. Invariants:
- at most one GET is in flight for a given (object version, block); concurrent readers of that
  block wait on the same `Inflight` entry ("concurrent misses on one block share one GET");
- a GET covers a run of consecutive blocks and streams them: each block is written to the cache
  and handed to its waiters as soon as it is complete, so a reader waits only for its own block;
- GETs run as background tasks in the fetcher's nursery; store calls run in worker threads under
  a `CapacityLimiter` (demand reads and prefetch have separate limiters so prefetch never takes
  the slots a reader needs), and RAM for in-flight chunks comes from the `MemoryBudget`;
- a GET may be abandoned (its reader seeked away); its unfinished blocks then fail with
  `Abandoned`, and anyone still waiting on them issues a demand GET of its own;
- a reader's own GETs go first (`tickets.DemandFirst`): background GETs hold back meanwhile;
- a reader does not wait for a block that a background GET (readahead, whole-object fetch)
  will reach only after `STEAL_DISTANCE` or more blocks: it takes the block over with a demand
  GET of its own (`_steal`), and the background GET reads past it. Each block has one owner,
  which alone delivers it (`tickets.Claims`), so it is written to the cache and published
  once;
- a delivered block stays in the table, in RAM, until it is on disk and then until a reader
  has read past its end (`done_with`) or it is among the oldest once more than half the
  budget is held by such "clean" blocks, or a stream needs the budget. So a sequential reader
  that prefetched ahead is served from memory even where memory is short and the cache writes
  bypass the page cache (`page_cache_writes`, see `read.pagecache`). Every block in the table
  holds its size in the `MemoryBudget`.

All bytes are of exactly the version named by the `ObjectId` (the store sends If-Match), so a
changed object surfaces as `StaleObject`, never as mixed bytes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import trio

from modelfs.cache.protocol import DataCache
from modelfs.cache.writer import CacheWriter
from modelfs.memory import MemoryBudget
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.read.tickets import Abandoned, Claims, DemandFirst, FetchTicket, Inflight
from modelfs.store.protocol import RangeReads
from modelfs.store.s3errors import error_code

log = logging.getLogger(__name__)

_SETTLE_POLL = 0.005  # seconds; a block's cache write takes about that long


@dataclass(frozen=True, slots=True)
class FetcherStatistics:
    gets: int
    blocks_fetched: int
    bytes_fetched: int
    shared_waits: int
    abandoned: int
    inflight_blocks: int  # claimed, not yet delivered
    held_blocks: int  # delivered and still in RAM (not yet on disk, or kept for a reader)
    errors: dict[str, int]  # failed GETs by error code (`store.s3errors.error_code`)
    taken_over: int = 0  # blocks a reader took over from a background GET far from them


class BlockFetcher:
    def __init__(
        self,
        store: RangeReads,
        cache: DataCache,
        *,
        demand_limiter: trio.CapacityLimiter,
        prefetch_limiter: trio.CapacityLimiter,
        budget: MemoryBudget,
    ) -> None:
        self._store = store
        self._cache = cache
        self.block_size = cache.block_size
        self.demand_limiter = demand_limiter
        self.prefetch_limiter = prefetch_limiter
        self._budget = budget
        self._writer = CacheWriter(cache)
        self._inflight: dict[tuple[ObjectId, int], Inflight] = {}
        self._claims = Claims()
        self._demand_first = DemandFirst()
        # Blocks now on disk, to drop from the in-flight table (appended by writer threads,
        # drained by the trio thread: deque appends and pops are atomic).
        self._written: collections.deque[tuple[ObjectId, int]] = collections.deque()
        # Delivered blocks already on disk, oldest first: kept for readers, dropped first.
        self._clean: collections.OrderedDict[tuple[ObjectId, int], None] = collections.OrderedDict()
        self._clean_limit = budget.limit // 2
        budget.on_pressure = self._relieve_pressure
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        # Whether the blocks of a version are written to the cache through the page cache
        # (memory to spare for its file); the read policy sets it (`read.pagecache`).
        self.page_cache_writes: Callable[[ObjectInfo], bool] = lambda info: False
        self._gets = self._blocks = self._bytes = self._shared = self._abandoned = 0
        self._stolen = 0
        self._errors: collections.Counter[str] = collections.Counter()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery in which background GETs run; returns only when cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._writer.close()

    # -- reading ---------------------------------------------------------------------------

    def block_count(self, info: ObjectInfo) -> int:
        return -(-info.size // self.block_size)

    def is_present(self, obj: ObjectId, index: int) -> bool:
        return (obj, index) in self._inflight or self._cache.contains(obj, index)

    def cached_range(self, info: ObjectInfo, index: int, start: int, length: int) -> bytes | None:
        """Part of a block straight from the data cache (None: not there, or being fetched)."""
        if (info.id, index) in self._inflight:
            return None
        return self._cache.get_range(info.id, index, start, length)

    async def block(self, info: ObjectInfo, index: int, *, run_blocks: int = 1) -> bytes:
        """Block `index` of `info`'s version; on a miss GET it plus up to `run_blocks - 1`
        following missing blocks (one request, streamed)."""
        obj = info.id
        self._retire_written()
        while True:
            entry = self._inflight.get((obj, index))
            if entry is not None:
                self._shared += 1
                if not entry.done.is_set():
                    self._steal(info, index, entry)
                await entry.done.wait()
                if isinstance(entry.error, Abandoned):
                    continue
                if entry.error is not None:
                    raise entry.error
                assert entry.data is not None
                return entry.data
            data = self._cache.get(obj, index)
            if data is not None:
                return data
            self.start_fetch(info, index, run_blocks, prefetch=False)

    async def chunks(self, info: ObjectInfo) -> AsyncGenerator[bytes, None]:
        """Every block of version `info`, in order, through the cache: a cached block costs no
        request, and each run of missing blocks is one streamed GET."""
        count = self.block_count(info)
        for index in range(count):
            data = await self.block(info, index, run_blocks=count - index)
            self.done_with(info.id, index)
            yield data

    def start_fetch(
        self, info: ObjectInfo, first: int, count: int, *, prefetch: bool
    ) -> FetchTicket | None:
        """Claim the run of missing blocks starting at `first` (at most `count`, stopping at the
        first block already cached or in flight) and GET it in the background."""
        obj = info.id
        last = min(first + count, self.block_count(info))
        ticket = FetchTicket(obj, first, 0, prefetch, position=first)
        for index in range(first, last):
            if self.is_present(obj, index):
                break
            entry = self._inflight[(obj, index)] = Inflight(owner=ticket)
            ticket.entries.append(entry)
        ticket.count = len(ticket.entries)
        if ticket.count == 0:
            return None
        self._start(info, ticket)
        return ticket

    def _start(self, info: ObjectInfo, ticket: FetchTicket) -> None:
        limiter = self.prefetch_limiter if ticket.prefetch else self.demand_limiter
        assert self._nursery is not None, "BlockFetcher.run() is not running"
        self._nursery.start_soon(self._get_run, info, ticket, limiter)

    def _steal(self, info: ObjectInfo, index: int, entry: Inflight) -> None:
        """Take block `index` over from a background GET that is still far from it (see the
        module docstring), with a demand GET of this one block."""
        ticket = self._claims.take_over(entry, index)
        if ticket is not None:
            self._stolen += 1
            self._start(info, ticket)

    def fully_present(self, info: ObjectInfo) -> bool:
        """Every block of `info` is cached or being fetched."""
        return all(self.is_present(info.id, i) for i in range(self.block_count(info)))

    async def wait_for(self, obj: ObjectId, index: int) -> BaseException | None:
        """Wait until block `index` is no longer in flight; the error it failed with, if any."""
        entry = self._inflight.get((obj, index))
        if entry is None:
            return None
        await entry.done.wait()
        return None if isinstance(entry.error, Abandoned) else entry.error

    def advise_cached(self, info: ObjectInfo, first: int, last: int) -> None:
        """Ask the cache to start loading the cached blocks in [first, last), once the read
        that moved the window has its answer: opening a block file and hinting it can wait
        for the disk after the kernel dropped its caches, and a warm file's first read used
        to wait for all of its window's hints.

        The hints still run on the trio thread, in order, right after that read: handed to
        worker threads they sometimes fell behind a fast reader, which then read without
        hints; on this thread they are always ahead of the next read (docs/performance.md)."""
        obj = info.id
        cached = [
            index
            for index in range(first, min(last, self.block_count(info)))
            if (obj, index) not in self._inflight and self._cache.contains(obj, index)
        ]
        if cached:
            assert self._nursery is not None, "BlockFetcher.run() is not running"
            self._nursery.start_soon(self._advise, obj, cached)

    async def _advise(self, obj: ObjectId, indexes: list[int]) -> None:
        for index in indexes:
            self._cache.advise(obj, index)

    def done_with(self, obj: ObjectId, index: int) -> None:
        """A reader has read block `index` to its end: it need not stay in RAM for it."""
        entry = self._inflight.get((obj, index))
        if entry is None or not entry.done.is_set() or entry.error is not None:
            return
        if entry.on_disk:
            self._drop((obj, index))
        else:
            entry.consumed = True

    async def settle(self, obj: ObjectId) -> None:
        """Wait until no block of `obj` is in flight or waiting for its cache write: every
        block fetched so far has been offered to the cache (`put` returned)."""
        self._retire_written()
        while any(key[0] == obj and not entry.on_disk for key, entry in self._inflight.items()):
            await trio.sleep(_SETTLE_POLL)  # blocks kept in RAM for a reader are on disk too
            self._retire_written()

    def abandon(self, ticket: FetchTicket) -> None:
        if not ticket.finished:
            ticket.cancel.set()

    async def warm_up(self, key: str) -> None:
        """Have the store open a connection and prepare a GET, so a reader's first one is not
        the first (see `ObjectStore.warm_up`)."""
        await trio.to_thread.run_sync(self._store.warm_up, key, limiter=self.demand_limiter)

    # -- the GET itself ----------------------------------------------------------------------

    async def _get_run(
        self, info: ObjectInfo, ticket: FetchTicket, limiter: trio.CapacityLimiter
    ) -> None:
        error: BaseException = Abandoned()
        self._demand_first.started(ticket)
        keep = self.page_cache_writes(info)
        try:
            await trio.to_thread.run_sync(self._stream_run, info, ticket, keep, limiter=limiter)
        except Exception as exc:
            error = exc
            if not isinstance(exc, Abandoned):
                self._errors[error_code(exc)] += 1
                log.warning(
                    "GET %s blocks %d+%d failed: %s", info.key, ticket.first, ticket.count, exc
                )
        finally:
            ticket.finished = True
            self._fail_unfinished(ticket, error)
            self._demand_first.demote(ticket)

    def _stream_run(self, info: ObjectInfo, ticket: FetchTicket, page_cache: bool) -> None:
        """Worker thread: one ranged GET, published block by block; its blocks go to the
        cache through the page cache if `page_cache`."""
        if ticket.cancel.is_set():
            raise Abandoned()
        size = self.block_size
        start = ticket.first * size
        end = min(info.size, (ticket.first + ticket.count) * size)
        self._gets += 1
        chunks = iter(self._store.iter_range(info.id, start, end, size))
        try:
            for index, entry in enumerate(ticket.entries, ticket.first):
                self._demand_first.hold_back(ticket)
                ours = entry.owner is ticket  # else taken over: read past it
                if ours and not self._budget.acquire(size, ticket.cancel):
                    raise Abandoned()
                try:
                    data = next(chunks)
                except BaseException:
                    if ours:
                        self._budget.release(size)
                    raise
                ticket.position = index + 1
                self._bytes += len(data)
                if ours and not self._claims.deliver(entry, ticket):
                    self._budget.release(size)  # taken over while it arrived
                elif ours:
                    self._blocks += 1
                    # Readers first: to its waiters now (fire and forget: the loop runs these
                    # in order), to the disk in the background. Its entry stays in the table
                    # until it is on disk, so nobody starts a second GET for it meanwhile.
                    assert self._token is not None
                    self._token.run_sync_soon(self._publish, info.id, index, data)
                    written = self._written_callback(info.id, index)
                    self._writer.submit(info.id, index, data, written, page_cache=page_cache)
                    self._demand_first.demote(ticket)  # its reader has its block
                if ticket.cancel.is_set():
                    self._abandoned += 1
                    raise Abandoned()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _written_callback(self, obj: ObjectId, index: int) -> Callable[[], None]:
        def written() -> None:
            self._written.append((obj, index))
            if self._token is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(self._retire_written)

        return written

    def _retire_written(self) -> None:
        while self._written:
            key = self._written.popleft()
            entry = self._inflight.get(key)
            if entry is None:
                continue
            entry.on_disk = True
            if entry.done.is_set():
                self._now_clean(key, entry)

    def _publish(self, obj: ObjectId, index: int, data: bytes) -> None:
        self._retire_written()
        entry = self._inflight.get((obj, index))
        if entry is None:
            self._budget.release(self.block_size)  # nobody will drop it: let its memory go
            return
        entry.data = data
        entry.done.set()
        if entry.on_disk:
            self._now_clean((obj, index), entry)

    def _now_clean(self, key: tuple[ObjectId, int], entry: Inflight) -> None:
        """`entry` is delivered and on disk: drop it if read, else keep it while RAM allows."""
        if entry.consumed:
            self._drop(key)
            return
        self._clean[key] = None
        while len(self._clean) * self.block_size > self._clean_limit:
            self._drop(next(iter(self._clean)))

    def _drop(self, key: tuple[ObjectId, int]) -> None:
        del self._inflight[key]
        self._clean.pop(key, None)
        self._budget.release(self.block_size)

    def _relieve_pressure(self) -> None:
        """Worker thread, waiting for budget: have the trio thread drop every clean block."""
        if self._token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._drop_clean)

    def _drop_clean(self) -> None:
        self._retire_written()
        while self._clean:
            self._drop(next(iter(self._clean)))

    def _fail_unfinished(self, ticket: FetchTicket, error: BaseException) -> None:
        """Fail the blocks this GET never delivered. Delivered ones stay in the table until
        they are on disk and read or evicted (see `_now_clean`)."""
        for index, entry in enumerate(ticket.entries, ticket.first):
            if not self._claims.deliver(entry, ticket):
                continue  # delivered, or taken over by another GET
            if self._inflight.get((ticket.obj, index)) is entry:
                del self._inflight[(ticket.obj, index)]
            entry.error = error
            entry.done.set()

    def statistics(self) -> FetcherStatistics:
        held = sum(1 for entry in self._inflight.values() if entry.done.is_set())
        return FetcherStatistics(
            gets=self._gets,
            blocks_fetched=self._blocks,
            bytes_fetched=self._bytes,
            shared_waits=self._shared,
            abandoned=self._abandoned,
            inflight_blocks=len(self._inflight) - held,
            held_blocks=held,
            errors=dict(self._errors),
            taken_over=self._stolen,
        )
