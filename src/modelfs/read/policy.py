"""The read policy: what is fetched, and when, beyond the bytes a reader asks for.

The filesystem core asks it for a reader when a file is opened (`open`) and hands the reader
back on release (`closed`); every decision about fetching lives here:
- every open gets an `ObjectReader` with its own readahead (window from one part up to
  `readahead_max`, see `readahead`);
- a model file (by suffix, between `model_min_size` and `whole_fetch_max`) is fetched whole
  in the background on open (`WholeObjectFetch`), once per object version at a time, unless
  it is cached already (and needs no filling into the page cache); it waits while a reader of
  that version streams through it;
- the first open of a small file within `burst_ttl` fetches its directory's other small files
  in one burst (listing order, starting after the opened file; at most `small_burst_max_files`);
- `modelfs warm` fetches files whole on request (`fetch_whole`), sharing a running fetch;
- while a `recorder` is set (`modelfs run` recording an app's start, `daemon.replay`), every
  read that reaches a reader is noted in it (`read.profile`);
- the kernel's page cache (see `pagecache`): while memory is plentiful for a file, its blocks
  are written to the cache through the page cache, and for a model file the whole-object
  fetch also brings it into the page cache, part by part; while memory is short
  for a large file (`drop_behind_auto`), or always for files of `drop_behind_min` or more, the
  page cache behind its only reader is dropped (see `dropbehind`). The advisor's own opens get
  a reader with no readahead and no fetch of their own (`is_internal`, `open_internal`);
- a file the mount's manifest lists is verified against its sha256 on open, as it is fetched
  (whole, for a model file; reading it all for a small one), and its readers wait for, and
  obey, the verdict (`verify`).

The policy runs the fetcher and its own background tasks (`run`), and never blocks a reader on
them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import trio
from cachetools import TTLCache

from modelfs.objects import ObjectId, ObjectInfo
from modelfs.read import dropbehind, pagecache
from modelfs.read.concurrency import adapt_background_gets
from modelfs.read.dropbehind import DropBehind
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.pagecache import BLOCK_COPIES, PageCacheAdvisor
from modelfs.read.profile import Recorder
from modelfs.read.readahead import HandlePrefetcher, ReadaheadPolicy
from modelfs.read.reader import ObjectReader
from modelfs.read.verify import Verifications
from modelfs.read.whole import Fill, WholeObjectFetch

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf", ".onnx")


@dataclass(frozen=True, slots=True)
class ReadOptions:
    transfers: int = 16  # background GETs at once at most (and a reader's own, apart)
    adaptive_transfers: bool = False  # probe how many of them pay (see `concurrency`)
    part_size: int = 8 << 20  # one GET of readahead; 8 MiB amortises request latency
    readahead_max: int = 128 << 20  # 16 parts in flight at once
    model_suffixes: tuple[str, ...] = MODEL_SUFFIXES
    model_min_size: int = 64 << 20  # below this, readahead alone loads a file fast enough
    whole_fetch_max: int = 5 << 30  # at most half the default cache: never thrash the cache
    prefetch_small: bool = True
    small_file_max: int = 1 << 20  # tokenizer, config and prompt files are well below this
    small_burst_max_files: int = 256  # cap one burst, so a huge directory costs no surprise bill
    burst_ttl: float = 60.0  # a directory's burst is not repeated within this (the listing TTL)
    drop_behind_auto: bool = True  # drop behind a reader while memory is short for its file
    drop_behind_min: int = 0  # > 0: files this large always drop behind (a fixed rule instead)


@dataclass(frozen=True, slots=True)
class ReadStatistics:
    open_readers: int
    background_fetches: int  # whole-object fetches running
    dropped_behind: int  # bytes of page cache dropped behind readers
    filled_ahead: int  # bytes brought into the page cache by whole-object fetches
    verified: int  # model files that matched the manifest's sha256
    verify_failed: int  # ... that did not (their reads fail with EIO)


class OpenFile(Protocol):
    """What the policy needs of the file a reader is opened on (the core's inode)."""

    @property
    def path(self) -> str: ...  # where it is now (renames move it), relative to the mount

    @property
    def opens(self) -> int: ...  # handles open on it, of any kind

    @property
    def last_open_etag(self) -> str | None: ...  # the version the kernel's page cache holds


Siblings = Callable[[str], Awaitable[Iterable[ObjectInfo]]]
"""The files directly in a directory (a path relative to the mount root)."""

MemoryProbe = Callable[[int], int | None]
"""Bytes of memory a process (by pid) may still fill with page cache; None: unknown."""

MEMORY_TTL = 1.0  # seconds a process's memory figure is reused (asked at most per drop step)
REFILL_INTERVAL = 1.0  # seconds between two fills of one version started by random reads


class ReadPolicy:
    def __init__(
        self,
        fetcher: BlockFetcher,
        options: ReadOptions,
        *,
        siblings: Siblings,
        page_cache: PageCacheAdvisor | None = None,
        verifications: Verifications | None = None,
        memory: MemoryProbe = lambda pid: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetcher = fetcher
        self.verifications = verifications or Verifications({})
        self.options = options
        self.page_cache = page_cache
        self._siblings = siblings
        self._memory = memory
        self._memory_of: TTLCache[int, int | None] = TTLCache(
            maxsize=256, ttl=MEMORY_TTL, timer=clock
        )
        self._readers: dict[ObjectReader, OpenFile] = {}
        self._whole: dict[ObjectId, WholeObjectFetch] = {}
        self._filling: dict[ObjectId, trio.Event] = {}  # set when the fill under way ends
        self._refilled: TTLCache[ObjectId, bool] = TTLCache(
            maxsize=1024, ttl=REFILL_INTERVAL, timer=clock
        )
        # Directories whose small files were fetched in one burst, forgotten with the listing.
        self._burst_dirs: TTLCache[str, bool] = TTLCache(
            maxsize=4096, ttl=max(options.burst_ttl, 1e-9), timer=clock
        )
        self._nursery: trio.Nursery | None = None
        self.recorder: Recorder | None = None  # the start being recorded, if any
        fetcher.page_cache_writes = lambda info: self._keeps_pages(info, copies=BLOCK_COPIES)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the fetcher and the background fetches until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fetcher.run)
            if self.options.adaptive_transfers:
                adaptive = adapt_background_gets(self.fetcher, self.options.transfers)
                nursery.start_soon(adaptive.run)
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def is_internal(self, pid: int) -> bool:
        """An open by the page cache advisor's own thread (see `open_internal`)."""
        return self.page_cache is not None and self.page_cache.is_own(pid)

    def open_internal(self, info: ObjectInfo) -> ObjectReader:
        """A reader for the advisor's own open: it reads blocks (a fill's readahead is
        answered like any read, verification included) but fetches nothing ahead and
        drops nothing."""
        policy = ReadaheadPolicy(self.options.part_size, 0, tolerance=0)
        prefetcher = HandlePrefetcher(self.fetcher, info, policy, self.options.part_size, 0)
        verification = self.verifications.of(info.id)
        return ObjectReader(self.fetcher, info, prefetcher, part_size=0, verification=verification)

    async def open(
        self, info: ObjectInfo, file: OpenFile, directory: str, pid: int = 0
    ) -> ObjectReader:
        """A reader of version `info` of `file` (in `directory`), opened by process `pid`, and
        the fetches it warrants."""
        options = self.options
        policy = ReadaheadPolicy(
            options.part_size, options.readahead_max, tolerance=options.part_size
        )
        prefetcher = HandlePrefetcher(
            self.fetcher, info, policy, options.part_size, options.transfers
        )
        self._maybe_fetch_whole(info, file, pid)
        reader = ObjectReader(
            self.fetcher,
            info,
            prefetcher,
            part_size=options.part_size,
            drop=self._drop_behind_for(info, pid),
            request_drop=self._request_drop,
            verification=self.verifications.of(info.id),
            observe=self._observe,
            on_random_read=self._refill,
            pid=pid,
        )
        whole = self._whole.get(info.id)
        reader.whole_fetch = whole is not None and not whole.done.is_set()
        self._readers[reader] = file
        if options.prefetch_small and info.size <= options.small_file_max:
            await self._burst_small_siblings(directory, info)
        return reader

    def _observe(self, info: ObjectInfo, offset: int, end: int) -> None:
        if self.recorder is not None:
            self.recorder.note(info, offset, end)

    async def flush(self, reader: ObjectReader) -> None:
        """close(2) waits for this: no descriptor of ours on the file outlives its last
        reader's close (the reader's drop under way, and the fill of its version)."""
        await reader.flush()
        filling = self._filling.get(reader.info.id)
        others = any(r is not reader and r.info.id == reader.info.id for r in self._readers)
        if filling is not None and not others:
            await filling.wait()

    def closed(self, reader: ObjectReader) -> None:
        reader.close()
        self._readers.pop(reader, None)

    def statistics(self) -> ReadStatistics:
        running = sum(1 for fetch in self._whole.values() if not fetch.done.is_set())
        advisor = self.page_cache
        dropped, filled = (advisor.dropped, advisor.filled) if advisor is not None else (0, 0)
        verified, failed = self.verifications.counts()
        return ReadStatistics(len(self._readers), running, dropped, filled, verified, failed)

    # -- whole-object fetches --------------------------------------------------------------------

    def _maybe_fetch_whole(self, info: ObjectInfo, file: OpenFile, pid: int) -> None:
        options = self.options
        if info.size > options.whole_fetch_max:
            return  # fetching it whole (or reading it all to verify it) would thrash the cache
        part_blocks = max(1, options.part_size // self.fetcher.block_size)
        self.verifications.start(self.fetcher, info, self._background(), part_blocks)
        if not info.key.endswith(options.model_suffixes) or info.size < options.model_min_size:
            return
        running = self._whole.get(info.id)
        if running is not None and not running.done.is_set():
            return
        fill = self._filler(info, file, pid)
        if fill is None and self.fetcher.fully_present(info):
            return
        self._background().start_soon(self._new_whole_fetch(info, fill).run)

    async def fetch_whole(
        self, info: ObjectInfo, started: Callable[[WholeObjectFetch], None] = lambda _: None
    ) -> WholeObjectFetch:
        """All of version `info` into the cache, now (`modelfs warm`), in the caller's task (so
        cancelling it stops the fetch): the whole-object fetch running for it already, or a new
        one, handed to `started` first. Returns it once every block fetched was offered to the
        cache (and is no longer held in RAM for a reader)."""
        fetch = self._whole.get(info.id)
        if fetch is None or fetch.done.is_set():
            fetch = self._new_whole_fetch(info, None)
            started(fetch)
            await fetch.run()
        else:
            started(fetch)
            await fetch.done.wait()
        await self.fetcher.settle(info.id)
        for index in range(self.fetcher.block_count(info)):  # on disk: no RAM kept for them
            self.fetcher.done_with(info.id, index)
        return fetch

    def _new_whole_fetch(self, info: ObjectInfo, fill: Fill | None) -> WholeObjectFetch:
        fetch = WholeObjectFetch(
            self.fetcher,
            info,
            part_size=self.options.part_size,
            parallel=self.options.transfers,
            reader_streaming=lambda: self._streaming_reader(info.id),
            fill=fill,
        )
        self._whole[info.id] = fetch
        return fetch

    def readers_of(self, obj: ObjectId) -> list[ObjectReader]:
        """The open readers of version `obj`."""
        return [reader for reader in self._readers if reader.info.id == obj]

    def whole_fetch(self, obj: ObjectId) -> WholeObjectFetch | None:
        """The whole-object fetch of `obj` started last, if any (finished or not)."""
        return self._whole.get(obj)

    def _streaming_reader(self, obj: ObjectId) -> bool:
        now = trio.current_time()
        return any(r.info.id == obj and r.streaming(now) for r in self._readers)

    # -- small-file bursts -----------------------------------------------------------------------

    async def _burst_small_siblings(self, directory: str, opened: ObjectInfo) -> None:
        """The first open of a small file fetches its directory's other small files at once:
        apps read a tokenizer or config directory file by file, each a cold GET otherwise.
        Listing alone fetches nothing (an `ls -lR` must not download the bucket).

        The opened file goes first, as a demand fetch; its siblings follow in listing order
        starting after it (the order in which `ls`, `os.walk` and most apps read them)."""
        if directory in self._burst_dirs:
            return
        self._burst_dirs[directory] = True
        self.fetcher.start_fetch(opened, 0, 1, prefetch=False)
        files = await self._siblings(directory)
        small = [i for i in files if 0 < i.size <= self.options.small_file_max]
        after = [i for i in small if i.key > opened.key]
        before = [i for i in small if i.key < opened.key]
        burst = (after + before)[: self.options.small_burst_max_files]
        self._background().start_soon(self._fetch_in_order, burst)

    async def _fetch_in_order(self, infos: list[ObjectInfo]) -> None:
        for info in infos:
            self.fetcher.start_fetch(info, 0, 1, prefetch=True)
            # One task per scheduling batch (trio may start a batch's tasks in any order): they
            # queue for the slots in listing order, the file read first not behind the rest.
            await trio.lowlevel.checkpoint()

    # -- the page cache: filled while memory is plentiful, dropped behind while short -----------

    def _filler(self, info: ObjectInfo, file: OpenFile, pid: int) -> Fill | None:
        """How a whole-object fetch of `info` fills the page cache, or None: not while memory
        is short, nor for a file that always drops behind its reader."""
        advisor = self.page_cache
        if advisor is None or not self._keeps_pages(info, pid):
            return None

        async def fill(start: int, end: int) -> None:
            # Asked again at every part: the file may show another version by now, memory may
            # have run short, or its last reader closed it (what it read stays in the cache).
            if file.last_open_etag != info.etag or not self.readers_of(info.id):
                return
            if not self._keeps_pages(info, pid):
                return
            self._filling[info.id] = filling = trio.Event()
            try:
                await advisor.fill(file.path, start, end)
            finally:
                del self._filling[info.id]
                filling.set()

        return fill

    def _keeps_pages(self, info: ObjectInfo, pid: int = 0, *, copies: int = 1) -> bool:
        """Whether `copies` copies of `info` keep their page cache for `pid` (0: the mount)."""
        if 0 < self.options.drop_behind_min <= info.size:
            return False  # always drops behind: no memory figure is asked
        return pagecache.keeps_page_cache(self._memory_for(pid), info.size, copies=copies)

    def _refill(self, reader: ObjectReader) -> None:
        """A random read reached the mount: the page cache lacks that page. If the version
        was fetched whole (and so filled), its pages were evicted or dropped since (an app's
        own POSIX_FADV_DONTNEED, `drop_caches`): fill it again, at most once per
        REFILL_INTERVAL, if memory allows (`_maybe_fetch_whole` decides)."""
        info, file = reader.info, self._readers.get(reader)
        fetch = self._whole.get(info.id)
        if file is None or fetch is None or not fetch.done.is_set() or info.id in self._refilled:
            return
        self._refilled[info.id] = True
        self._maybe_fetch_whole(info, file, reader.pid)

    def _drop_behind_for(self, info: ObjectInfo, pid: int) -> DropBehind | None:
        options = self.options
        if self.page_cache is None:
            return None
        if options.drop_behind_min > 0:
            return DropBehind(pid) if info.size >= options.drop_behind_min else None
        if options.drop_behind_auto and info.size > dropbehind.DROP_LAG:
            return DropBehind(pid, by_memory=True)
        return None

    def _request_drop(self, reader: ObjectReader, start: int, stop: int) -> None:
        drop, file = reader.drop, self._readers.get(reader)
        # Only for the file's one reader: another one may still need the pages behind this one.
        if drop is None or file is None or file.opens != 1 or self.page_cache is None:
            return
        if drop.by_memory and pagecache.keeps_page_cache(
            self._memory_for(drop.pid), reader.info.size
        ):
            return  # asked again at the next read: memory may run short meanwhile
        drop.pending = trio.Event()
        self._background().start_soon(self._drop_behind, self.page_cache, file, drop, start, stop)

    async def _drop_behind(
        self, advisor: PageCacheAdvisor, file: OpenFile, drop: DropBehind, start: int, stop: int
    ) -> None:
        try:
            await advisor.drop(file.path, start, stop)
        finally:
            drop.finished(start, stop)

    def _memory_for(self, pid: int) -> int | None:
        if pid not in self._memory_of:
            self._memory_of[pid] = self._memory(pid)
        return self._memory_of[pid]

    def _background(self) -> trio.Nursery:
        assert self._nursery is not None, "ReadPolicy.run() is not running"
        return self._nursery
