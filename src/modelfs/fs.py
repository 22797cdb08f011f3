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

import contextlib
import functools
import logging
import math
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from cachetools import TTLCache

from . import keys
from .errors import (
    AlreadyExists,
    CrossDevice,
    InvalidArgument,
    IsADirectory,
    ModelfsError,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    ReadOnly,
)
from .fetcher import BlockFetcher
from .inodes import ROOT_INODE, InodeTable, Node
from .namespace import Namespace
from .pagecache import DropBehind, PageCacheTrimmer
from .prefetch import HandlePrefetcher, ReadaheadPolicy, WholeObjectFetch
from .values import ObjectId, ObjectInfo
from .writeback import WriteBack, WriteHandle

log = logging.getLogger(__name__)

# The mount's warm-up GETs this name (under the remote's prefix), which nobody should create:
# any answer, 404 included, has warmed the connection and the client.
WARM_UP_NAME = ".modelfs-warm-up-probe"
WARM_UP_DIRS = 16  # the root's directories listed at mount: a few requests, in parallel

# A sequential reader that read within this many seconds is streaming: a whole-object fetch
# waits for it (see prefetch.py). Long enough to span the kernel's gaps between requests.
STREAMING_IDLE = 0.2
INTERNAL_FH = 0  # the handle of drop-behind's own opens; `_new_fh` starts at 1
_RENAME_NOREPLACE = 1  # renameat2 flags, as the kernel passes them
_RENAME_EXCHANGE = 2
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
    warm_up: bool = False  # list the root and warm the store's connection when the mount starts
    drop_behind_min: int = 2 << 30  # files this large keep no page cache behind a reader; 0: off


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
    prefetcher: HandlePrefetcher | None  # None: the file is staged, reads come from write-back
    memo_index: int = -1
    memo_data: bytes = b""
    staged: WriteHandle | None = None
    last_read: float = -math.inf  # trio.current_time() of the last read
    drop: DropBehind | None = None  # a huge file's pages are dropped behind its reader

    def streaming(self, now: float) -> bool:
        """Reading sequentially, and recently: its readahead is fetching for it."""
        prefetcher = self.prefetcher
        recent = now - self.last_read < STREAMING_IDLE
        return prefetcher is not None and prefetcher.sequential and recent


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
    dropped_behind: int  # bytes of page cache dropped behind readers (see pagecache.py)


class Filesystem:
    def __init__(
        self,
        namespace: Namespace,
        fetcher: BlockFetcher,
        options: FsOptions,
        *,
        writeback: WriteBack | None = None,
        trimmer: PageCacheTrimmer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.writeback = writeback
        self.trimmer = trimmer
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
            if self.writeback is not None:
                nursery.start_soon(self.writeback.run)
            self._nursery = nursery
            if self.options.warm_up:
                nursery.start_soon(self._warm_up)
            task_status.started()
            await trio.sleep_forever()

    async def _warm_up(self) -> None:
        """Pay the mount's first-request costs before the app asks: the root's listing, a
        connection in the pool and the client's first-call setup of a GET, then the listings
        of the root's first `WARM_UP_DIRS` directories (`cache_hub/`, `checkpoints/`: where an
        app's first model file is). An app started right after the mount then finds its first
        lookups in memory.

        Every listing is delimited (one request per directory, however big the bucket): a
        lookup arriving meanwhile waits for it. `ls -lR` loses nothing: a directory it opens
        whose subdirectories are not cached still lists its whole subtree (see namespace)."""
        try:
            root = await self.namespace.listing("")
            await self.fetcher.warm_up(self.namespace.dir_prefix("") + WARM_UP_NAME)
            async with trio.open_nursery() as nursery:
                for name in sorted(root.dirs)[:WARM_UP_DIRS]:
                    nursery.start_soon(self._warm_up_directory, name)
        except ModelfsError as exc:  # the app's own requests will report it
            log.debug("warm-up failed: %s", exc)

    async def _warm_up_directory(self, path: str) -> None:
        with contextlib.suppress(ModelfsError):
            await self.namespace.listing(path)

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

    def _staged_info(self, path: str) -> ObjectInfo | None:
        """What write-back holds for `path` (it overrides the bucket), as an ObjectInfo whose
        ETag is empty: staged content is never read through the block cache."""
        if self.writeback is None:
            return None
        key = self.namespace.key_of(path)
        staged = self.writeback.staged(key)
        return None if staged is None else ObjectInfo(key, staged.size, "", staged.mtime)

    async def _resolve(self, parent: Node, name: str) -> Node:
        if not parent.is_dir:
            raise NotADirectory(parent.path)
        path = keys.join(parent.path, name)
        staged = self._staged_info(path)
        if staged is not None:
            return self.inodes.upsert(path, False, staged)
        listing = await self.namespace.listing(parent.path)
        if name in listing.dirs or self._staged_dir(path):
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
        """Bring `node.info` up to date with write-back, or the (TTL-cached) listing of its
        directory."""
        staged = None if node.is_dir else self._staged_info(node.path)
        if staged is not None:
            node.info = staged
            return
        listing = await self.namespace.listing(keys.parent_of(node.path))
        name = keys.name_of(node.path)
        if node.is_dir:
            if name not in listing.dirs and not self._staged_dir(node.path):
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
        listing = await self.namespace.listing(node.path, subtree=True)
        files: dict[str, ObjectInfo | None] = dict(listing.files)
        files.update(dict.fromkeys(listing.dirs))
        files.update(self._staged_children(node.path))
        handle = DirHandle(self._new_fh())
        for name in sorted(files):
            path = keys.join(node.path, name)
            info = files[name]
            child = self.inodes.upsert(path, info is None, info)
            handle.entries.append(DirEntry(name, self.attr_of(child)))
        self._dirs[handle.fh] = handle
        return handle.fh

    def _staged_children(self, path: str) -> dict[str, ObjectInfo | None]:
        """Staged files directly in directory `path` (info) and directories that only staged
        files below them make (None)."""
        if self.writeback is None:
            return {}
        prefix = self.namespace.dir_prefix(path)
        children: dict[str, ObjectInfo | None] = {}
        for staged in self.writeback.staged_under(prefix):
            name, sep, _ = staged.key[len(prefix) :].partition("/")
            if not keys.valid_segment(name):
                continue
            if sep:
                children.setdefault(name, None)
            else:
                children[name] = ObjectInfo(staged.key, staged.size, "", staged.mtime)
        return children

    def _staged_dir(self, path: str) -> bool:
        """A directory that exists only because staged files are below it."""
        if self.writeback is None:
            return False
        return bool(self.writeback.staged_under(self.namespace.dir_prefix(path)))

    def readdir(self, fh: int, start: int) -> list[DirEntry]:
        """Entries from index `start` on (the adapter passes index+1 as the next offset)."""
        return self._dirs[fh].entries[start:]

    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def _burst_small_siblings(self, node: Node, opened: ObjectInfo) -> None:
        """The first open of a small file fetches its directory's other small files at once:
        apps read a tokenizer or config directory file by file, each a cold GET otherwise.
        Listing alone fetches nothing (an `ls -lR` must not download the bucket).

        The opened file goes first, as a demand fetch; its siblings follow in listing order
        starting after it (the order in which `ls`, `os.walk` and most apps read them)."""
        directory = keys.parent_of(node.path)
        if directory in self._burst_dirs:
            return
        self._burst_dirs[directory] = True
        self.fetcher.start_fetch(opened, 0, 1, prefetch=False)
        listing = await self.namespace.listing(directory)
        small = [i for i in listing.files.values() if 0 < i.size <= self.options.small_file_max]
        after = [i for i in small if i.key > opened.key]
        before = [i for i in small if i.key < opened.key]
        assert self._nursery is not None
        self._nursery.start_soon(
            self._fetch_in_order, (after + before)[: self.options.small_burst_max_files]
        )

    async def _fetch_in_order(self, infos: list[ObjectInfo]) -> None:
        for info in infos:
            self.fetcher.start_fetch(info, 0, 1, prefetch=True)
            # Trio may start the tasks spawned in one scheduling batch in any order (it even
            # reverses batches on purpose); one per batch keeps them queueing for the
            # prefetch slots in listing order. Measured: when a batch of 200 ran reversed,
            # the first file read in the directory waited 0.6 s for the whole burst.
            await trio.lowlevel.checkpoint()

    # -- files ---------------------------------------------------------------------------------

    async def open(self, ino: int, flags: int, pid: int = 0) -> tuple[int, bool]:
        """Open a file for the thread `pid`; returns (fh, keep_cache)."""
        if self.trimmer is not None and self.trimmer.is_own(pid):
            return INTERNAL_FH, True  # drop-behind's descriptor: never read, keeps the cache
        node = self.inodes.get(ino)
        if node.is_dir:
            raise IsADirectory(node.path)
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC))
        if writing:
            return await self._open_for_write(node, flags), False
        await self._refresh(node)
        assert node.info is not None
        info = node.info
        if info.etag == "":  # staged: read what write-back holds, pinned while open
            assert self.writeback is not None
            # No checkpoint between `_refresh` finding it staged and this call, so write-back
            # still holds it: open() must never stage a new empty file in its place.
            assert self.writeback.staged(info.key) is not None
            staged = await self.writeback.open(info.key, None)
            return self._add_handle(node, info, None, staged), False
        keep_cache = node.last_open_etag == info.etag
        node.last_open_etag = info.etag
        policy = ReadaheadPolicy(
            self.options.part_size,
            self.options.readahead_max,
            tolerance=self.options.part_size,
        )
        prefetcher = HandlePrefetcher(
            self.fetcher, info, policy, self.options.part_size, self.options.transfers
        )
        fh = self._add_handle(node, info, prefetcher, None)
        if self.trimmer is not None and 0 < self.options.drop_behind_min <= info.size:
            self._files[fh].drop = DropBehind()
        self._maybe_fetch_whole(info)
        if self.options.prefetch_small and info.size <= self.options.small_file_max:
            await self._burst_small_siblings(node, info)
        return fh, keep_cache

    def _add_handle(
        self,
        node: Node,
        info: ObjectInfo,
        prefetcher: HandlePrefetcher | None,
        staged: WriteHandle | None,
    ) -> int:
        node.opens += 1
        handle = FileHandle(self._new_fh(), node, info, prefetcher, staged=staged)
        self._files[handle.fh] = handle
        return handle.fh

    def _maybe_fetch_whole(self, info: ObjectInfo) -> None:
        options = self.options
        if not info.key.endswith(options.model_suffixes):
            return
        if not options.model_min_size <= info.size <= options.whole_fetch_max:
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
            reader_streaming=functools.partial(self._streaming_reader, info.id),
        )
        self._whole[info.id] = fetch
        assert self._nursery is not None
        self._nursery.start_soon(fetch.run)

    def _streaming_reader(self, obj: ObjectId) -> bool:
        now = trio.current_time()
        return any(h.info.id == obj and h.streaming(now) for h in self._files.values())

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._files[fh]
        handle.last_read = trio.current_time()
        if handle.staged is not None:
            assert self.writeback is not None
            self._reads += 1
            return self.writeback.read(handle.staged, offset, size)
        assert handle.prefetcher is not None
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
            base = index * block_size
            lo, hi = max(offset, base) - base, min(end, base + block_size) - base
            if hi - lo < block_size and handle.memo_index != index:
                # Part of a block: a cached block serves just the range (random reads).
                part = self.fetcher.cached_range(info, index, lo, hi - lo)
                if part is not None:
                    pieces.append(part)
                    continue
            data = await self._block(handle, index, run - (index - first))
            hi = min(hi, len(data))
            if hi == len(data):
                self.fetcher.done_with(info.id, index)
            pieces.append(data if lo == 0 and hi == len(data) else data[lo:hi])
        self._bytes_read += end - offset
        self._maybe_drop_behind(handle, offset, end)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _maybe_drop_behind(self, handle: FileHandle, offset: int, end: int) -> None:
        drop = handle.drop
        if drop is None:
            return
        due = drop.on_read(offset, end)
        # Only for the file's one reader: another one may still need the pages behind this one.
        if due is None or handle.node.opens != 1:
            return
        drop.pending = trio.Event()
        assert self._nursery is not None
        self._nursery.start_soon(self._drop_behind, handle.node.path, drop, *due)

    async def _drop_behind(self, path: str, drop: DropBehind, start: int, stop: int) -> None:
        assert self.trimmer is not None
        try:
            await self.trimmer.drop(path, start, stop)
        finally:
            drop.finished(start, stop)

    async def flush(self, fh: int) -> None:
        """close(2) waits for this: no descriptor of ours on the file outlives it."""
        handle = self._files.get(fh)
        if handle is not None and handle.drop is not None:
            await handle.drop.settled()

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
        if handle.prefetcher is not None:
            handle.prefetcher.close()
        if handle.staged is not None and self.writeback is not None:
            self.writeback.release(handle.staged)
        self.inodes.release(handle.node)

    # -- writing (see writeback.py; refused with EROFS on a read-only mount) -----------------

    def _writable(self, what: str) -> WriteBack:
        if self.writeback is None or self.options.read_only:
            raise ReadOnly(f"{what}: the mount is read-only")
        return self.writeback

    async def _bucket_info(self, path: str) -> ObjectInfo | None:
        """The bucket's current object at `path` (from the TTL-cached listing)."""
        listing = await self.namespace.listing(keys.parent_of(path))
        return listing.files.get(keys.name_of(path))

    async def _open_for_write(self, node: Node, flags: int) -> int:
        writeback = self._writable(node.path)
        staged = self._staged_info(node.path)
        base = None if staged is not None else await self._bucket_info(node.path)
        handle = await writeback.open(
            self.namespace.key_of(node.path),
            base,
            truncate=bool(flags & os.O_TRUNC),
            append=bool(flags & os.O_APPEND),
        )
        info = self._staged_info(node.path)
        assert info is not None
        node.info = info
        return self._add_handle(node, info, None, handle)

    async def create(self, parent_ino: int, name: str, flags: int) -> tuple[int, Attr]:
        parent = self.inodes.get(parent_ino)
        path = keys.join(parent.path, name)
        writeback = self._writable(path)
        if not parent.is_dir:
            raise NotADirectory(parent.path)
        if not keys.valid_segment(name):
            raise InvalidArgument(f"{name!r} cannot be an object name")
        base = None if self._staged_info(path) else await self._bucket_info(path)
        handle = await writeback.open(
            self.namespace.key_of(path), base, truncate=True, append=bool(flags & os.O_APPEND)
        )
        info = self._staged_info(path)
        assert info is not None
        node = self.inodes.upsert(path, False, info)
        node.lookups += 1
        fh = self._add_handle(node, info, None, handle)
        return fh, self.attr_of(node)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._files[fh]
        if handle.staged is None:
            raise ReadOnly(f"{handle.node.path}: not open for writing")
        writeback = self._writable(handle.node.path)
        written = writeback.write(handle.staged, offset, data)
        self._refresh_staged(handle.node)
        return written

    def _refresh_staged(self, node: Node) -> None:
        info = self._staged_info(node.path)
        if info is not None:
            node.info = info

    async def set_size(self, ino: int, size: int, fh: int | None) -> Attr:
        node = self.inodes.get(ino)
        if node.is_dir:
            raise IsADirectory(node.path)
        writeback = self._writable(node.path)
        handle = self._files.get(fh) if fh is not None else None
        if handle is not None and handle.staged is not None:
            await writeback.truncate(handle.staged, size)
        else:
            staged = self._staged_info(node.path)
            base = None if staged is not None else await self._bucket_info(node.path)
            await writeback.truncate(self.namespace.key_of(node.path), size, base)
        self._refresh_staged(node)
        return self.attr_of(node)

    async def fsync(self, fh: int) -> None:
        handle = self._files.get(fh)
        if handle is not None and handle.staged is not None and self.writeback is not None:
            await self.writeback.fsync(handle.staged)

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self.inodes.get(parent_ino)
        path = keys.join(parent.path, name)
        writeback = self._writable(path)
        node = await self._resolve(parent, name)
        if node.is_dir:
            raise IsADirectory(path)
        await writeback.unlink(self.namespace.key_of(path))
        self.inodes.remove_path(path)
        self.namespace.invalidate(parent.path)

    async def rename(
        self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str, flags: int
    ) -> None:
        old_parent = self.inodes.get(old_parent_ino)
        new_parent = self.inodes.get(new_parent_ino)
        old_path = keys.join(old_parent.path, old_name)
        new_path = keys.join(new_parent.path, new_name)
        writeback = self._writable(old_path)
        if flags & _RENAME_EXCHANGE:
            raise NotSupported("rename with RENAME_EXCHANGE is not supported on an object store")
        node = await self._resolve(old_parent, old_name)
        if node.is_dir:
            # Renaming a prefix means copying every object below it; `mv` does that itself
            # (file by file, through the mount) when told the rename crosses devices.
            raise CrossDevice(f"{old_path}: directories are moved by copying (EXDEV)")
        if not keys.valid_segment(new_name):
            raise InvalidArgument(f"{new_name!r} cannot be an object name")
        replaced = None if self._staged_info(new_path) else await self._bucket_info(new_path)
        target_exists = replaced is not None or self._staged_info(new_path) is not None
        if flags & _RENAME_NOREPLACE and target_exists:
            raise AlreadyExists(new_path)
        await writeback.rename(
            self.namespace.key_of(old_path), self.namespace.key_of(new_path), replaced=replaced
        )
        self.inodes.move(old_path, new_path)
        self.namespace.invalidate(old_parent.path)
        self.namespace.invalidate(new_parent.path)
        self._refresh_staged(node)

    async def mkdir(self, parent_ino: int, name: str) -> Attr:
        """A directory is a marker object `name/`, so it exists for every client at once."""
        parent = self.inodes.get(parent_ino)
        path = keys.join(parent.path, name)
        self._writable(path)
        if not keys.valid_segment(name):
            raise InvalidArgument(f"{name!r} cannot be an object name")
        listing = await self.namespace.listing(parent.path)
        if name in listing.dirs or name in listing.files or self._staged_info(path):
            raise AlreadyExists(path)
        await self.namespace.create_directory(path)
        self.namespace.invalidate(parent.path)
        node = self.inodes.upsert(path, True, None)
        node.lookups += 1
        return self.attr_of(node)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self.inodes.get(parent_ino)
        path = keys.join(parent.path, name)
        self._writable(path)
        node = await self._resolve(parent, name)
        if not node.is_dir:
            raise NotADirectory(path)
        self.namespace.invalidate(path)
        listing = await self.namespace.listing(path)
        if listing.files or listing.dirs or self._staged_dir(path):
            raise NotEmpty(path)
        await self.namespace.remove_directory(path)
        self.inodes.remove_path(path)
        self.namespace.invalidate(parent.path)

    # -- what write-back tells us -------------------------------------------------------------

    def uploaded(self, key: str, info: ObjectInfo) -> None:
        """`key` landed in the bucket: the cached listing of its directory is out of date."""
        self._invalidate_key(key)

    def conflicted(self, key: str, conflict_key: str, remote: ObjectInfo) -> None:
        self._invalidate_key(key)
        self._invalidate_key(conflict_key)

    def _invalidate_key(self, key: str) -> None:
        prefix = self.namespace.dir_prefix("")
        if key.startswith(prefix):
            relative = key[len(prefix) :]
            self.namespace.invalidate(keys.parent_of(relative))

    # -- misc ----------------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def statistics(self) -> FsStatistics:
        running = sum(1 for f in self._whole.values() if not f.done.is_set())
        dropped = self.trimmer.dropped if self.trimmer is not None else 0
        return FsStatistics(
            len(self.inodes), len(self._files), running, self._reads, self._bytes_read, dropped
        )
