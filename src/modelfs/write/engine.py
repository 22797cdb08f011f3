"""Write-back: files written on the mount land in the bucket, and survive the death of modelfs.

`WriteBack` is the `Writer` of a writable mount (see `protocol`); the filesystem core forwards
FUSE-shaped calls here (this package never imports pyfuse3):

    core: lookup/getattr -> staged(key)     readdir -> staged_under(prefix)
          open for write -> open(key, base)  write/read/truncate/fsync/release -> same names
          fsyncdir -> fsync_names
          unlink/rename of files -> unlink/rename (staged or not; the bucket side included)
          mkdir/rmdir -> make_directory/remove_directory (marker objects)
    daemon: run() for the life of the mount; drain() on unmount/SIGTERM/`modelfs sync`;
          statistics(); close()

Parts, one module each:
- `staging`: the staging area on disk (layout drawn there) and byte-level helpers;
- `journal`: the SQLite journal of dirty keys (why SQLite, durability argument);
- `files`: the table of staged files and their states (clean, dirty, detached), and handles;
- `durable`, `recovery`: what an fsync made durable, and what startup trusts after a reboot;
- `queue`: when each file is uploaded, retries, drain, statistics;
- `uploader`: one upload attempt (conflict check, PUT or multipart, abort on failure).

This module holds the operations that span them: opening (copying an existing object into its
staging file first, from the block cache when the mount gives a `source`), fsync, and
unlink/rename, which must cancel and wait for an upload in flight so it can never resurrect an
unlinked file or land under an old name.

Durability promise (docs/writeback.md): a write() returns once its bytes are in the staging
file and the file's journal row exists, so kill -9 loses nothing; fsync() returns once both
are on disk, with the file's size and digest in the row, so after a power loss the key gets
exactly what was fsynced, and anything a power loss may have torn goes to a conflict copy
(`recovery`), never over the object; fsync of a directory (fsync_names) makes the renames and
unlinks before it durable; nothing is dropped after failures.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import trio

from modelfs.errors import NoSpace, NotFound, StaleObject
from modelfs.host import private
from modelfs.host.boot import current_boot
from modelfs.memory import MemoryBudget
from modelfs.objects import ObjectInfo
from modelfs.store.protocol import ObjectStore
from modelfs.write import staging
from modelfs.write.files import StagedFile, StagedFiles, StagedInfo, WriteHandle
from modelfs.write.journal import Journal
from modelfs.write.names import NameChanges
from modelfs.write.queue import UploadQueue, WriteBackListener, WriteBackStatistics
from modelfs.write.recovery import recover
from modelfs.write.staging import StagingArea
from modelfs.write.threads import ThreadRunner, to_thread
from modelfs.write.uploader import Uploader

__all__ = [
    "Source",
    "StagedInfo",
    "WriteBack",
    "WriteBackListener",
    "WriteBackStatistics",
    "WriteHandle",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")

Source = Callable[[ObjectInfo], AsyncGenerator[bytes, None]]
"""Bytes [0, info.size) of exactly version `info`, as consecutive chunks (StaleObject if it
changed). A mount passes the block cache's (`BlockFetcher.chunks`)."""


class WriteBack:
    """The write-back engine. Create it (which recovers what an earlier process left: see
    `recovered`), run `run()` in a nursery for the life of the mount, `drain()` before exit,
    then `close()`. All methods run on the trio thread."""

    read_only = False

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
        source: Source | None = None,
        identity: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        run_sync: ThreadRunner = to_thread,
        budget: MemoryBudget | None = None,
        make_room: Callable[[int], int] | None = None,
    ) -> None:
        """`make_room(n)`: on a full cache disk, free at least n bytes (a mount passes its
        block cache's `give_back`) and return how many; a staging write that failed with
        ENOSPC is then tried once more."""
        self._store = store
        self._limiter = limiter or trio.CapacityLimiter(transfers)
        self._run_sync = run_sync
        self._source = source or self._chunks_from_store
        self._wall = wall_clock
        self._listener = listener
        self._opening: dict[str, trio.Event] = {}
        private.make_dirs(root)
        area = StagingArea(root)
        try:
            journal = Journal(root, identity=identity)
        except BaseException:
            area.close()
            raise
        self._files = StagedFiles(area, journal, wall_clock)
        self._files.make_room = make_room
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
        self._names = NameChanges(self._files, self._queue, store, self._store_call, listener)
        area.fsync_tree()
        recovered = recover(self._files, current_boot(), wall_clock)
        for file in recovered:
            self._queue.expedite(file)
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
            if base is None and self._queue.deletes.take(key):
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
        file = handle.file
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
            self._files.resize(handle.file, size)
        finally:
            self.release(handle)

    async def fsync(self, handle: WriteHandle) -> None:
        """Return once the handle's bytes and journal row, with what is now durable, survive a
        power loss."""
        file = handle.file
        await self._files.make_durable(file, self._run_sync)
        if file.journaled:
            await self._run_sync(self._files.journal.sync)

    async def fsync_names(self) -> None:
        """Return once every create, rename and unlink so far survives a power loss: names
        are journal rows (a rename moves a row, and queues the old key's delete, in one
        transaction), and staging files are entries of the staging directory."""
        await self._run_sync(self._files.area.fsync_dir)
        await self._run_sync(self._files.journal.sync)

    def release(self, handle: WriteHandle) -> None:
        """Close a handle (never raises). A dirty file is due `upload_delay` later."""
        if handle.closed:
            return
        handle.closed = True
        file = handle.file
        file.open_count -= 1
        if file.open_count == 0:
            file.released_at = trio.current_time()
        self._files.forget_if_idle(file)
        self._queue.reschedule(file)

    # -- namespace changes ---------------------------------------------------------------------

    async def unlink(self, key: str) -> None:
        """Remove `key`, staged or not (see `names.NameChanges.unlink`)."""
        await self._names.unlink(key)

    async def rename(self, old: str, new: str, *, replaced: ObjectInfo | None = None) -> None:
        """Rename a file, staged or not (see `names.NameChanges.rename`)."""
        await self._names.rename(old, new, replaced=replaced)

    async def make_directory(self, marker: str) -> None:
        """A directory exists for every client at once as its marker object `marker`."""
        await self._store_call(self._store.put_bytes, marker, b"")

    async def remove_directory(self, marker: str) -> None:
        """Remove directory marker `marker` (there may be none)."""
        await self._store_call(self._store.delete, marker)

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

    def retry_failed(self) -> None:
        """Try every upload and delete that failed for good once more, now, without waiting
        (the store takes our credentials again). What fails again stays failed."""
        self._queue.retry_failed()

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
        """Copy `base` into `fd`; if it changed since the caller looked, copy the new version;
        on a full disk, once more after the block cache gave room back."""
        try:
            await self._copy(base, fd)
        except NoSpace:
            if not self._files.room_made(base.size):
                raise
            staging.resize(fd, 0)
            await self._copy(base, fd)
        except StaleObject:
            base = await self._store_call(self._store.head, base.key)
            staging.resize(fd, 0)
            await self._copy(base, fd)
        return base

    async def _copy(self, info: ObjectInfo, fd: int) -> None:
        await staging.copy_object(self._source(info), info, fd, self._run_sync)

    def _chunks_from_store(self, info: ObjectInfo) -> AsyncGenerator[bytes, None]:
        return staging.store_chunks(self._store, info, self._run_sync, self._limiter)

    async def _etag_in_bucket(self, key: str) -> str | None:
        """The ETag of what the bucket holds at `key` now (None: nothing). A new file over the
        leftover of a rename whose delete is still pending must replace it, not conflict."""
        try:
            return (await self._store_call(self._store.head, key)).etag
        except NotFound:
            return None

    def _file_of(self, target: str | WriteHandle) -> StagedFile:
        if isinstance(target, WriteHandle):
            return target.file
        file = self._files.by_key.get(target)
        if file is None:
            raise NotFound(f"{target} is not staged")
        return file

    async def _store_call(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        return await self._run_sync(fn, *args, limiter=self._limiter)
