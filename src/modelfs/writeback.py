"""Write-back: files written on the mount land in the bucket, and survive the death of modelfs.

The filesystem core forwards FUSE-shaped calls here (this package never imports pyfuse3):

    fs: lookup/getattr -> staged(key)     readdir -> staged_under(prefix)
        open for write -> open(key, base)  write/read/truncate/fsync/release -> same names
        unlink/rename of files -> unlink/rename (staged or not; the bucket side included)
    mount: run() in the fs nursery; drain() on unmount/SIGTERM/`modelfs sync`; statistics()

Parts, one module each:
- `staging`: the staging area on disk (layout drawn there) and byte-level helpers;
- `journal`: the SQLite journal of dirty keys (why SQLite, durability argument);
- `staged`: the table of staged files and their states (clean, dirty, detached);
- `upload_queue`: when each file is uploaded, retries, drain, statistics;
- `uploader`: one upload attempt (conflict check, PUT or multipart, abort on failure).

This module holds the operations that span them: opening (fetching an existing object into
its staging file first), handles, fsync, and unlink/rename, which must cancel and wait for an
upload in flight so it can never resurrect an unlinked file or land under an old name.

Durability promise (docs/writeback.md): a write() returns once its bytes are in the staging
file and the file's journal row exists, so kill -9 loses nothing; fsync() returns once both
are on disk, so a power loss after fsync loses nothing; nothing is dropped after failures.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import trio

from . import staging
from .budget import MemoryBudget
from .errors import NoSpace, NotFound, StaleObject
from .journal import Journal
from .staged import StagedFile, StagedFiles, StagedInfo
from .staging import StagingArea
from .store import ObjectStore
from .upload_queue import UploadQueue, WriteBackListener, WriteBackStatistics
from .uploader import ThreadRunner, Uploader, to_thread
from .values import ObjectInfo

__all__ = [
    "StagedInfo",
    "WriteBack",
    "WriteBackListener",
    "WriteBackStatistics",
    "WriteHandle",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")

FETCH_CHUNK = 1 << 20  # bytes per pwrite while copying an object into its staging file

Fetch = Callable[[ObjectInfo, int], Awaitable[None]]
"""Fill the fd with bytes [0, info.size) of exactly version `info` (StaleObject if gone)."""


@dataclass(eq=False)
class WriteHandle:
    """One open-for-write handle. Follows its file across rename; after unlink it keeps
    reading and writing a detached copy that is never uploaded."""

    _file: StagedFile
    append: bool
    closed: bool = False

    @property
    def key(self) -> str | None:
        """The key the handle's bytes go to; None once unlinked."""
        return self._file.key


class WriteBack:
    """The write-back engine. Create it (which recovers what an earlier process left: see
    `recovered`), run `run()` in a nursery for the life of the mount, `drain()` before exit,
    then `close()`. All methods run on the trio thread."""

    def __init__(
        self,
        store: ObjectStore,
        root: Path,
        *,
        upload_delay: float = 5.0,
        flush_interval: float = 30.0,
        part_size: int = 16 << 20,
        transfers: int = 4,
        limiter: trio.CapacityLimiter | None = None,
        listener: WriteBackListener | None = None,
        fetch: Fetch | None = None,
        identity: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        run_sync: ThreadRunner = to_thread,
        budget: MemoryBudget | None = None,
    ) -> None:
        self._store = store
        self._limiter = limiter or trio.CapacityLimiter(transfers)
        self._run_sync = run_sync
        self._fetch = fetch or self._fetch_from_store
        self._wall = wall_clock
        self._listener = listener
        self._opening: dict[str, trio.Event] = {}
        root.mkdir(parents=True, exist_ok=True)
        area = StagingArea(root)
        try:
            journal = Journal(root, identity=identity)
        except BaseException:
            area.close()
            raise
        self._files = StagedFiles(area, journal, wall_clock)
        self._uploader = uploader = Uploader(
            store,
            self._limiter,
            trio.Semaphore(transfers),
            part_size,
            run_sync,
            wall_clock,
            budget,
        )
        self._queue = UploadQueue(
            self._files,
            store,
            uploader,
            run_sync=run_sync,
            limiter=self._limiter,
            transfers=transfers,
            upload_delay=upload_delay,
            flush_interval=flush_interval,
            listener=listener,
            wall_clock=wall_clock,
        )
        recovered = self._files.recover()
        for file in recovered:
            self._queue.reschedule(file)
        self.recovered: tuple[str, ...] = tuple(file.key for file in recovered if file.key)
        """Keys an earlier process left dirty; they are uploaded before anything else."""
        if recovered:
            log.info("write-back: %d file(s) from an earlier run queued first", len(recovered))

    # -- what the mount shows ------------------------------------------------------------------

    def staged(self, key: str) -> StagedInfo | None:
        """Size and mtime of a staged key (dirty, queued or open); they override the bucket."""
        file = self._files.by_key.get(key)
        return None if file is None else file.info()

    def staged_under(self, prefix: str) -> list[StagedInfo]:
        """Every staged key starting with `prefix` (any depth), for readdir to merge in."""
        return [file.info() for key, file in self._files.by_key.items() if key.startswith(prefix)]

    def read(self, target: str | WriteHandle, offset: int, size: int) -> bytes:
        """Bytes of the staged content as last written (NotFound if `target` is not staged)."""
        file = self._file_of(target)
        size = max(0, min(size, file.size - offset))
        return staging.read_at(file.fd, offset, size) if size else b""

    # -- writing -------------------------------------------------------------------------------

    async def open(
        self, key: str, base: ObjectInfo | None, *, truncate: bool = False, append: bool = False
    ) -> WriteHandle:
        """Open `key` for writing. `base` is the bucket's current version (None: absent, a new
        file); unless `truncate`, it is first copied into the staging file (if it changed
        since, the newer version is). A staged key keeps its content and base; `base` is then
        ignored. A new or truncated file is dirty at once: `touch x` uploads an empty x."""
        while key in self._opening:
            await self._opening[key].wait()
        file = self._files.by_key.get(key)
        created = file is None
        if file is None:
            file = await self._stage(key, base, fetch=not truncate)
            if base is None and self._queue.take_pending_delete(key):
                file.base_etag = await self._etag_in_bucket(key)
        file.open_count += 1
        handle = WriteHandle(file, append)
        if truncate or (created and base is None):
            try:
                self._files.resize(file, 0)
            except BaseException:
                self.release(handle)
                raise
        return handle

    def write(self, handle: WriteHandle, offset: int, data: bytes) -> int:
        """Write at `offset` (at the end for O_APPEND handles); returns bytes written. On a full
        cache disk raises NoSpace (or writes short); bytes written before stay intact."""
        file = handle._file
        return self._files.write(file, file.size if handle.append else offset, data)

    async def truncate(
        self, target: str | WriteHandle, size: int, base: ObjectInfo | None = None
    ) -> None:
        """Set the size of a staged file; a key not staged (setattr without an open handle) is
        staged first from `base`, its bucket version."""
        if isinstance(target, WriteHandle) or target in self._files.by_key:
            self._files.resize(self._file_of(target), size)
            return
        handle = await self.open(target, base, truncate=size == 0)
        try:
            self._files.resize(handle._file, size)
        finally:
            self.release(handle)

    async def fsync(self, handle: WriteHandle) -> None:
        """Return once the handle's bytes and journal row survive a power loss."""
        file = handle._file
        await self._run_sync(os.fsync, file.fd)
        if not file.dir_synced:
            await self._run_sync(self._files.area.fsync_dir)
            file.dir_synced = True
        if file.journaled:
            await self._run_sync(self._files.journal.sync)

    def release(self, handle: WriteHandle) -> None:
        """Close a handle (never raises). A dirty file is due `upload_delay` later."""
        if handle.closed:
            return
        handle.closed = True
        file = handle._file
        file.open_count -= 1
        if file.open_count == 0:
            file.released_at = trio.current_time()
        self._files.forget_if_idle(file)
        self._queue.reschedule(file)

    # -- namespace changes ---------------------------------------------------------------------

    async def unlink(self, key: str) -> None:
        """Remove `key`, staged or not: its staged state (open handles keep a detached copy)
        and the bucket's object. Returns once the bucket no longer has it."""
        file = self._files.by_key.pop(key, None)
        if file is None:
            await self._store_call(self._store.delete, key)
            return
        try:
            was_uploading = await self._queue.stop_upload(file)
            if was_uploading or file.base_etag is not None:
                await self._store_call(self._store.delete, key)
        except BaseException:
            self._files.restore(key, file)
            raise
        self._files.detach(file)

    async def rename(self, old: str, new: str, *, replaced: ObjectInfo | None = None) -> None:
        """Rename a file, staged or not. `replaced` is the bucket's object at `new` that the
        rename overwrites (its ETag is the base of the upload to `new`).

        A staged file is renamed locally and uploaded under `new`. The bucket's copy of `old`
        (if it may have one) is queued for deletion in the same journal transaction, then
        deleted at once, or retried in the background if that fails."""
        if old == new:
            return
        file = self._files.by_key.get(old)
        if file is None:
            await self._rename_in_bucket(old, new)
            return
        del self._files.by_key[old]
        target = self._files.by_key.pop(new, None)
        try:
            was_uploading = await self._queue.stop_upload(file)
            old_in_bucket = was_uploading or file.base_etag is not None
            if target is None:
                base = replaced.etag if replaced else None
            elif await self._queue.stop_upload(target):
                base = await self._base_after_stopped_upload(new, target)
            else:
                base = target.base_etag
            self._files.move(
                file,
                new,
                base,
                dirty=True,
                replacing=target,
                delete_key=old if old_in_bucket else None,
            )
        except BaseException:
            self._files.restore(old, file)
            if target is not None:
                self._files.restore(new, target)
            raise
        if old_in_bucket:
            await self._queue.delete_now(old)

    async def _base_after_stopped_upload(self, key: str, target: StagedFile) -> str | None:
        """The bucket version a rename onto staged `target` replaces, after stopping its
        upload: a request already sent may have landed without its answer being recorded
        (cancelled, or the process died), and our own upload is no conflict."""
        try:
            remote: ObjectInfo | None = await self._store_call(self._store.head, key)
        except NotFound:
            remote = None
        if remote is None or staging.same_etag(remote.etag, target.base_etag):
            return target.base_etag
        # Not under the upload limiter: this runs on a FUSE request, not behind other uploads.
        ours = await self._uploader.etag_of(target.fd, target.size, limiter=None)
        return remote.etag if staging.same_etag(remote.etag, ours) else target.base_etag

    async def _rename_in_bucket(self, old: str, new: str) -> None:
        """A file only in the bucket: server-side copy, then delete; a staged `new` is
        replaced (and its pending upload dropped) once the copy exists."""
        target = self._files.by_key.pop(new, None)
        try:
            if target is not None:
                await self._queue.stop_upload(target)
            info = await self._store_call(self._store.copy, old, new)
            self._files.journal.replace(
                target.staging if target is not None and target.journaled else None,
                delete_key=old,
            )
        except BaseException:
            if target is not None:
                self._files.restore(new, target)
            raise
        if target is not None:
            target.journaled = False  # its row went in the same transaction
            self._files.detach(target)
        if self._listener is not None:
            self._listener.uploaded(new, info)
        await self._queue.delete_now(old)

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Upload due files until cancelled (run it in the filesystem's nursery)."""
        await self._queue.run()

    async def drain(
        self,
        progress: Callable[[WriteBackStatistics], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        """Upload everything written so far now (open files too), and return once the bucket
        has it all. `progress` gets statistics every `interval` seconds while waiting. Needs
        `run()` running; cancel it to give up: what is pending stays journaled for next time."""
        await self._queue.drain(progress, interval)

    def statistics(self) -> WriteBackStatistics:
        return self._queue.statistics()

    def close(self) -> None:
        """Release fds, the journal and the root's lock; pending work stays journaled."""
        self._files.close()
        self._files.area.close()

    # -- internals -----------------------------------------------------------------------------

    async def _stage(self, key: str, base: ObjectInfo | None, *, fetch: bool) -> StagedFile:
        """A new staged file for `key`, holding the bucket's `base` version if `fetch`."""
        opened = self._opening[key] = trio.Event()
        try:
            name, fd = self._files.area.create()
            try:
                if fetch and base is not None and base.size > 0:
                    base = await self._fetch_fresh(base, fd)
            except BaseException:
                os.close(fd)
                self._files.area.remove(name)
                raise
            size = base.size if fetch and base is not None else 0
            mtime = base.mtime if base is not None else self._wall()
            file = StagedFile(name, fd, key, base.etag if base else None, size, mtime)
            self._files.add(file)
            return file
        finally:
            del self._opening[key]
            opened.set()

    async def _fetch_fresh(self, base: ObjectInfo, fd: int) -> ObjectInfo:
        """Copy `base` into `fd`; if it changed since the caller looked, copy the new version."""
        try:
            await self._fetch(base, fd)
        except StaleObject:
            base = await self._store_call(self._store.head, base.key)
            staging.resize(fd, 0)
            await self._fetch(base, fd)
        return base

    async def _fetch_from_store(self, info: ObjectInfo, fd: int) -> None:
        def copy() -> None:
            offset = 0
            for chunk in self._store.iter_range(info.id, 0, info.size, FETCH_CHUNK):
                if staging.write_at(fd, offset, chunk) < len(chunk):
                    raise NoSpace(f"no space on the cache disk to stage {info.key}")
                offset += len(chunk)
            if offset != info.size:
                raise StaleObject(f"{info.key}: got {offset} of {info.size} bytes")

        await self._run_sync(copy, limiter=self._limiter)

    async def _etag_in_bucket(self, key: str) -> str | None:
        """The ETag of what the bucket holds at `key` now (None: nothing). A new file over the
        leftover of a rename whose delete is still pending must replace it, not conflict."""
        try:
            return (await self._store_call(self._store.head, key)).etag
        except NotFound:
            return None

    def _file_of(self, target: str | WriteHandle) -> StagedFile:
        if isinstance(target, WriteHandle):
            return target._file
        file = self._files.by_key.get(target)
        if file is None:
            raise NotFound(f"{target} is not staged")
        return file

    async def _store_call(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        return await self._run_sync(fn, *args, limiter=self._limiter)
