"""The read policy: what is fetched, and when, beyond the bytes a reader asks for.

The filesystem core asks it for a reader when a file is opened (`open`) and hands the reader
back on release (`closed`); every decision about fetching lives here:
- every open gets an `ObjectReader` with its own readahead (window from one part up to
  `readahead_max`, see `readahead`);
- a model file (by suffix, between `model_min_size` and `whole_fetch_max`) is fetched whole
  in the background on open (`WholeObjectFetch`), once per object version at a time, unless
  it is cached already; it waits while a reader of that version streams through it;
- the first open of a small file within `burst_ttl` fetches its directory's other small files
  in one burst (listing order, starting after the opened file; at most `small_burst_max_files`);
- `modelfs warm` fetches files whole on request (`fetch_whole`), sharing a running fetch;
- while a `recorder` is set (`modelfs run` recording an app's start, `daemon.replay`), every
  read that reaches a reader is noted in it (`read.profile`);
- a large file read by its only reader has the page cache behind that reader dropped while
  memory is short for it (`drop_behind_auto`), or always for files of `drop_behind_min` or
  more (see `dropbehind`); the trimmer's own opens get no handle (`is_internal`);
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
from modelfs.read import dropbehind
from modelfs.read.dropbehind import DropBehind, PageCacheTrimmer
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.profile import Recorder
from modelfs.read.readahead import HandlePrefetcher, ReadaheadPolicy
from modelfs.read.reader import ObjectReader
from modelfs.read.verify import Verifications
from modelfs.read.whole import WholeObjectFetch

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf", ".onnx")


@dataclass(frozen=True, slots=True)
class ReadOptions:
    transfers: int = 16
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
    verified: int  # model files that matched the manifest's sha256
    verify_failed: int  # ... that did not (their reads fail with EIO)


class OpenFile(Protocol):
    """What the policy needs of the file a reader is opened on (the core's inode)."""

    @property
    def path(self) -> str: ...  # where it is now (renames move it), relative to the mount

    @property
    def opens(self) -> int: ...  # handles open on it, of any kind


Siblings = Callable[[str], Awaitable[Iterable[ObjectInfo]]]
"""The files directly in a directory (a path relative to the mount root)."""

MemoryProbe = Callable[[int], int | None]
"""Bytes of memory a process (by pid) may still fill with page cache; None: unknown."""

MEMORY_TTL = 1.0  # seconds a process's memory figure is reused (asked at most per drop step)


class ReadPolicy:
    def __init__(
        self,
        fetcher: BlockFetcher,
        options: ReadOptions,
        *,
        siblings: Siblings,
        trimmer: PageCacheTrimmer | None = None,
        verifications: Verifications | None = None,
        memory: MemoryProbe = lambda pid: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetcher = fetcher
        self.verifications = verifications or Verifications({})
        self.options = options
        self.trimmer = trimmer
        self._siblings = siblings
        self._memory = memory
        self._memory_of: TTLCache[int, int | None] = TTLCache(
            maxsize=256, ttl=MEMORY_TTL, timer=clock
        )
        self._readers: dict[ObjectReader, OpenFile] = {}
        self._whole: dict[ObjectId, WholeObjectFetch] = {}
        # Directories whose small files were fetched in one burst, forgotten with the listing.
        self._burst_dirs: TTLCache[str, bool] = TTLCache(
            maxsize=4096, ttl=max(options.burst_ttl, 1e-9), timer=clock
        )
        self._nursery: trio.Nursery | None = None
        self.recorder: Recorder | None = None  # the start being recorded, if any

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the fetcher and the background fetches until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fetcher.run)
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def is_internal(self, pid: int) -> bool:
        """An open by drop-behind's own thread: it gets no handle and keeps the page cache."""
        return self.trimmer is not None and self.trimmer.is_own(pid)

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
        self._maybe_fetch_whole(info)
        reader = ObjectReader(
            self.fetcher,
            info,
            prefetcher,
            part_size=options.part_size,
            drop=self._drop_behind_for(info, pid),
            request_drop=self._request_drop,
            verification=self.verifications.of(info.id),
            observe=self._observe,
        )
        self._readers[reader] = file
        if options.prefetch_small and info.size <= options.small_file_max:
            await self._burst_small_siblings(directory, info)
        return reader

    def _observe(self, info: ObjectInfo, offset: int, end: int) -> None:
        if self.recorder is not None:
            self.recorder.note(info, offset, end)

    def closed(self, reader: ObjectReader) -> None:
        reader.close()
        self._readers.pop(reader, None)

    def statistics(self) -> ReadStatistics:
        running = sum(1 for fetch in self._whole.values() if not fetch.done.is_set())
        dropped = self.trimmer.dropped if self.trimmer is not None else 0
        verified, failed = self.verifications.counts()
        return ReadStatistics(len(self._readers), running, dropped, verified, failed)

    # -- whole-object fetches --------------------------------------------------------------------

    def _maybe_fetch_whole(self, info: ObjectInfo) -> None:
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
        if self.fetcher.fully_present(info):
            return
        fetch = WholeObjectFetch(
            self.fetcher,
            info,
            part_size=options.part_size,
            parallel=options.transfers,
            reader_streaming=lambda: self._streaming_reader(info.id),
        )
        self._whole[info.id] = fetch
        self._background().start_soon(fetch.run)

    async def fetch_whole(
        self, info: ObjectInfo, started: Callable[[WholeObjectFetch], None] = lambda _: None
    ) -> WholeObjectFetch:
        """All of version `info` into the cache, now (`modelfs warm`), in the caller's task (so
        cancelling it stops the fetch): the whole-object fetch running for it already, or a new
        one, handed to `started` first. Returns it once every block fetched was offered to the
        cache (and is no longer held in RAM for a reader)."""
        fetch = self._whole.get(info.id)
        if fetch is None or fetch.done.is_set():
            fetch = WholeObjectFetch(
                self.fetcher,
                info,
                part_size=self.options.part_size,
                parallel=self.options.transfers,
                reader_streaming=lambda: self._streaming_reader(info.id),
            )
            self._whole[info.id] = fetch
            started(fetch)
            await fetch.run()
        else:
            started(fetch)
            await fetch.done.wait()
        await self.fetcher.settle(info.id)
        for index in range(self.fetcher.block_count(info)):  # on disk: no RAM kept for them
            self.fetcher.done_with(info.id, index)
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
            # Trio may start the tasks spawned in one scheduling batch in any order (it even
            # reverses batches on purpose); one per batch keeps them queueing for the
            # prefetch slots in listing order. When a batch of 200 ran reversed, the first
            # file read in the directory waited for the whole burst.
            await trio.lowlevel.checkpoint()

    # -- drop-behind -----------------------------------------------------------------------------

    def _drop_behind_for(self, info: ObjectInfo, pid: int) -> DropBehind | None:
        options = self.options
        if self.trimmer is None:
            return None
        if options.drop_behind_min > 0:
            return DropBehind(pid) if info.size >= options.drop_behind_min else None
        if options.drop_behind_auto and info.size > dropbehind.DROP_LAG:
            return DropBehind(pid, by_memory=True)
        return None

    def _request_drop(self, reader: ObjectReader, start: int, stop: int) -> None:
        drop, file = reader.drop, self._readers.get(reader)
        # Only for the file's one reader: another one may still need the pages behind this one.
        if drop is None or file is None or file.opens != 1 or self.trimmer is None:
            return
        if drop.by_memory and dropbehind.keeps_page_cache(
            self._memory_for(drop.pid), reader.info.size
        ):
            return  # asked again at the next read: memory may run short meanwhile
        drop.pending = trio.Event()
        self._background().start_soon(self._drop_behind, self.trimmer, file, drop, start, stop)

    async def _drop_behind(
        self, trimmer: PageCacheTrimmer, file: OpenFile, drop: DropBehind, start: int, stop: int
    ) -> None:
        try:
            await trimmer.drop(file.path, start, stop)
        finally:
            drop.finished(start, stop)

    def _memory_for(self, pid: int) -> int | None:
        if pid not in self._memory_of:
            self._memory_of[pid] = self._memory(pid)
        return self._memory_of[pid]

    def _background(self) -> trio.Nursery:
        assert self._nursery is not None, "ReadPolicy.run() is not running"
        return self._nursery
