"""The filesystem core: FUSE-shaped async methods over the bucket, with no pyfuse3 in sight.

Owns the inode table, open handles and the policy of what is fetched when. Returns plain values
(`Attr`, bytes) and raises `ModelfsError`s; the FUSE adapter (`fuse_ops`) only translates.

- Lookups and directory reads come from `Namespace` listings (TTL-cached, negative too).
- A file handle pins the object version seen at open (`ObjectInfo`): every byte read through it
  is of that version (old blocks from the cache, or ESTALE once they are gone), never a mix.
- Reads assemble blocks from the `BlockFetcher`; a `HandlePrefetcher` reads ahead, and large
  model files are pulled whole in the background on open (mmap-friendly).
- The kernel keeps its page cache across opens while the ETag is unchanged (keep_cache).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cachetools import TTLCache

from . import keys
from .errors import IsADirectory, NotADirectory, NotFound, ReadOnly
from .fetcher import BlockFetcher
from .inodes import ROOT_INODE, InodeTable, Node
from .namespace import Namespace
from .prefetch import HandlePrefetcher, ReadaheadPolicy, WholeObjectFetch
from .values import ObjectId, ObjectInfo

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".gguf", ".onnx")


@dataclass(frozen=True, slots=True)
class FsOptions:
    uid: int = 0
    gid: int = 0
    umask: int = 0o022
    dir_cache_time: float = 60.0
    read_only: bool = True
    transfers: int = 16
    part_size: int = 8 << 20  # one GET of readahead; 8 MiB amortises request latency
    readahead_max: int = 128 << 20  # 16 parts in flight at once
    model_suffixes: tuple[str, ...] = MODEL_SUFFIXES
    model_min_size: int = 64 << 20  # below this, readahead alone loads a file fast enough
    whole_fetch_max: int = 5 << 30  # at most half the default cache: never thrash the cache
    prefetch_small: bool = True
    small_file_max: int = 1 << 20  # tokenizer, config and prompt files are well below this
    small_burst_max_files: int = 256  # cap one burst, so a huge directory costs no surprise bill


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    is_dir: bool
    size: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int
    timeout: float


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    attr: Attr


@dataclass
class FileHandle:
    fh: int
    node: Node
    info: ObjectInfo
    prefetcher: HandlePrefetcher
    memo_index: int = -1
    memo_data: bytes = b""


@dataclass
class DirHandle:
    fh: int
    entries: list[DirEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FsStatistics:
    inodes: int
    open_files: int
    background_fetches: int
    reads: int
    bytes_read: int


class Filesystem:
    def __init__(
        self,
        namespace: Namespace,
        fetcher: BlockFetcher,
        options: FsOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.fetcher = fetcher
        self.options = options
        self._clock = clock
        self.inodes = InodeTable()
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._whole: dict[ObjectId, WholeObjectFetch] = {}
        # Directories whose small files were fetched in one burst, forgotten with the listing.
        self._burst_dirs: TTLCache[str, bool] = TTLCache(
            maxsize=4096, ttl=max(options.dir_cache_time, 1e-9), timer=clock
        )
        self._nursery: trio.Nursery | None = None
        self._reads = 0
        self._bytes_read = 0
        self._mount_time_ns = time.time_ns()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the background machinery (GETs, whole-object fetches) until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fetcher.run)
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- attributes ----------------------------------------------------------------------------

    def attr_of(self, node: Node) -> Attr:
        options = self.options
        if node.is_dir:
            mode = stat.S_IFDIR | (0o777 & ~options.umask)
            size, mtime_ns = 0, self._mount_time_ns
        else:
            perm = 0o666 if not options.read_only else 0o444
            mode = stat.S_IFREG | (perm & ~options.umask)
            assert node.info is not None
            size, mtime_ns = node.info.size, int(node.info.mtime * 1e9)
        return Attr(
            node.ino,
            node.is_dir,
            size,
            mtime_ns,
            mode,
            options.uid,
            options.gid,
            options.dir_cache_time,
        )

    async def lookup(self, parent_ino: int, name: str) -> Attr:
        parent = self.inodes.get(parent_ino)
        if name == ".":
            node = parent
        elif name == "..":
            node = self.inodes.by_path(keys.parent_of(parent.path)) or self.inodes.get(ROOT_INODE)
        else:
            node = await self._resolve(parent, name)
        node.lookups += 1
        return self.attr_of(node)

    async def _resolve(self, parent: Node, name: str) -> Node:
        if not parent.is_dir:
            raise NotADirectory(parent.path)
        listing = await self.namespace.listing(parent.path)
        path = keys.join(parent.path, name)
        if name in listing.dirs:
            return self.inodes.upsert(path, True, None)
        info = listing.files.get(name)
        if info is None:
            raise NotFound(path)
        return self.inodes.upsert(path, False, info)

    async def getattr(self, ino: int) -> Attr:
        node = self.inodes.get(ino)
        if node.ino != ROOT_INODE:
            await self._refresh(node)
        return self.attr_of(node)

    async def _refresh(self, node: Node) -> None:
        """Bring `node.info` up to date with the (TTL-cached) listing of its directory."""
        listing = await self.namespace.listing(keys.parent_of(node.path))
        name = keys.name_of(node.path)
        if node.is_dir:
            if name not in listing.dirs:
                raise NotFound(node.path)
            return
        info = listing.files.get(name)
        if info is None:
            raise NotFound(node.path)
        node.info = info

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    def note_lookup(self, ino: int) -> None:
        """The kernel accepted an entry from readdir (readdirplus counts as a lookup)."""
        node = self.inodes.get(ino)
        node.lookups += 1

    # -- directories ---------------------------------------------------------------------------

    async def opendir(self, ino: int) -> int:
        node = self.inodes.get(ino)
        if not node.is_dir:
            raise NotADirectory(node.path)
        listing = await self.namespace.listing(node.path)
        handle = DirHandle(self._new_fh())
        for name in listing.names():
            path = keys.join(node.path, name)
            info = listing.files.get(name)
            child = self.inodes.upsert(path, info is None, info)
            handle.entries.append(DirEntry(name, self.attr_of(child)))
        self._dirs[handle.fh] = handle
        return handle.fh

    def readdir(self, fh: int, start: int) -> list[DirEntry]:
        """Entries from index `start` on (the adapter passes index+1 as the next offset)."""
        return self._dirs[fh].entries[start:]

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def _burst_small_siblings(self, node: Node) -> None:
        """The first open of a small file fetches its directory's other small files at once:
        apps read a tokenizer or config directory file by file, each a cold GET otherwise.
        Listing alone fetches nothing (an `ls -lR` must not download the bucket)."""
        directory = keys.parent_of(node.path)
        if directory in self._burst_dirs:
            return
        self._burst_dirs[directory] = True
        listing = await self.namespace.listing(directory)
        small = [i for i in listing.files.values() if 0 < i.size <= self.options.small_file_max]
        for info in small[: self.options.small_burst_max_files]:
            self.fetcher.start_fetch(info, 0, 1, prefetch=True)

    # -- files ---------------------------------------------------------------------------------

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open for reading; returns (fh, keep_cache)."""
        node = self.inodes.get(ino)
        if node.is_dir:
            raise IsADirectory(node.path)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise ReadOnly(f"{node.path}: the mount is read-only")
        await self._refresh(node)
        assert node.info is not None
        info = node.info
        keep_cache = node.last_open_etag == info.etag
        node.last_open_etag = info.etag
        node.opens += 1
        policy = ReadaheadPolicy(
            self.options.part_size,
            self.options.readahead_max,
            tolerance=self.options.part_size,
        )
        prefetcher = HandlePrefetcher(
            self.fetcher, info, policy, self.options.part_size, self.options.transfers
        )
        handle = FileHandle(self._new_fh(), node, info, prefetcher)
        self._files[handle.fh] = handle
        self._maybe_fetch_whole(info)
        if self.options.prefetch_small and info.size <= self.options.small_file_max:
            await self._burst_small_siblings(node)
        return handle.fh, keep_cache

    def _maybe_fetch_whole(self, info: ObjectInfo) -> None:
        options = self.options
        if not info.key.endswith(options.model_suffixes):
            return
        if not options.model_min_size <= info.size <= options.whole_fetch_max:
            return
        running = self._whole.get(info.id)
        if running is not None and not running.done.is_set():
            return
        if not any(
            True for _ in self.fetcher.missing_runs(info, 0, self.fetcher.block_count(info))
        ):
            return
        fetch = WholeObjectFetch(
            self.fetcher, info, part_size=options.part_size, parallel=options.transfers
        )
        self._whole[info.id] = fetch
        assert self._nursery is not None
        self._nursery.start_soon(fetch.run)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._files[fh]
        info = handle.info
        end = min(offset + size, info.size)
        if offset >= end:
            return b""
        self._reads += 1
        handle.prefetcher.on_read(offset, end - offset)
        block_size = self.fetcher.block_size
        first, last = offset // block_size, (end - 1) // block_size
        run = max(
            last - first + 1,
            self.options.part_size // block_size if handle.prefetcher.sequential else 1,
        )
        pieces: list[bytes] = []
        for index in range(first, last + 1):
            data = await self._block(handle, index, run - (index - first))
            base = index * block_size
            lo, hi = max(offset, base) - base, min(end, base + len(data)) - base
            pieces.append(data if lo == 0 and hi == len(data) else data[lo:hi])
        self._bytes_read += end - offset
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _block(self, handle: FileHandle, index: int, run: int) -> bytes:
        if handle.memo_index == index:
            return handle.memo_data
        data = await self.fetcher.block(handle.info, index, run_blocks=run)
        # Small kernel requests (128 KiB) hit the same block several times in a row.
        handle.memo_index, handle.memo_data = index, data
        return data

    def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        handle.prefetcher.close()
        self.inodes.release(handle.node)

    # -- refused until write-back is enabled --------------------------------------------------

    def refuse_write(self, what: str) -> ReadOnly:
        return ReadOnly(f"{what}: the mount is read-only")

    # -- misc ----------------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def statistics(self) -> FsStatistics:
        running = sum(1 for f in self._whole.values() if not f.done.is_set())
        return FsStatistics(
            len(self.inodes), len(self._files), running, self._reads, self._bytes_read
        )
