"""Staged files: every file the mount is writing, by key, and the journal rows behind them.

A `StagedFile` is one file's local state: its staging file (full content, see `staging`), the
bucket version its changes start from, counters saying what the bucket has, and the handles
open on it. `StagedFiles` is the table of them and the only code that changes their journal
rows once the engine runs (before, `recovery` rebuilds the table from them), so the rule "a
dirty file has a row" lives in one place. `make_durable` is the one place a row's synced state
is recorded (its invariant is in `durable`).

States of a staged file:
- clean: the bucket has its bytes (or it was fetched and not written yet); no journal row;
- dirty: `generation > uploaded_generation`; a journal row exists, inserted before the first
  changed byte reaches the staging file, so kill -9 right after a write loses nothing (the
  bytes are in the kernel's page cache and the row names the file);
- detached: unlinked or replaced by a rename while open: `key is None`, no row, never
  uploaded, its staging file removed on the last release.

Invariants: `by_key[k].key == k`; a key has at most one staged file; a staged file leaves the
table only when clean (or detached), closed and not uploading, and its staging file goes with
it. Only the trio thread touches this table.

`low_water` is how an upload knows its snapshot is intact: the upload resets it to "nothing
written" when it takes `(generation, size)`, every change lowers it to the lowest offset it
touched, and the snapshot is intact while `low_water >= size` (appends never tear it).

Lock order: `StagedFile.sync_lock` (one `make_durable` of a file at a time) is the only lock.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from modelfs.errors import NoSpace
from modelfs.store.protocol import PendingUpload
from modelfs.write import staging
from modelfs.write.durable import Digests
from modelfs.write.journal import Journal, JournalRow, Synced
from modelfs.write.staging import StagingArea
from modelfs.write.threads import ThreadRunner

log = logging.getLogger(__name__)

NOTHING_WRITTEN = sys.maxsize  # low-water mark: no change since the snapshot


@dataclass(frozen=True, slots=True)
class StagedInfo:
    """What the mount shows for a staged key, overriding the bucket's metadata."""

    key: str
    size: int
    mtime: float  # wall-clock time of the last change
    dirty: bool  # holds bytes the bucket does not have yet


@dataclass(eq=False)
class StagedFile:
    staging: str
    fd: int
    key: str | None
    base_etag: str | None  # the bucket version our changes start from; None: absent
    size: int
    mtime: float
    generation: int = 0
    uploaded_generation: int = 0
    journaled: bool = False
    dirty_wall: float = 0.0  # wall-clock time the current dirty cycle began
    dirty_since: float = math.inf  # trio time of the same; -inf for recovered files
    open_count: int = 0
    released_at: float = -math.inf  # trio time of the last release
    leftover_upload: PendingUpload | None = None  # of an earlier attempt: abort it first
    # The ETag our upload in flight gives the key once it lands (journaled before the request
    # that commits it): a bucket holding it holds our own earlier bytes, not someone else's.
    ours: str | None = None
    low_water: int = NOTHING_WRITTEN
    dir_synced: bool = False
    digests: Digests = field(default_factory=Digests)  # of the staging file, for fsyncs
    synced_generation: int = -1  # the generation whose synced state the row records
    sync_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def dirty(self) -> bool:
        return self.generation > self.uploaded_generation

    def info(self) -> StagedInfo:
        assert self.key is not None
        return StagedInfo(self.key, self.size, self.mtime, self.dirty)


@dataclass(eq=False)
class WriteHandle:
    """One open-for-write handle. Follows its file across rename; after unlink it keeps
    reading and writing a detached copy that is never uploaded."""

    file: StagedFile
    append: bool
    closed: bool = False

    @property
    def key(self) -> str | None:
        """The key the handle's bytes go to; None once unlinked."""
        return self.file.key


class StagedFiles:
    """The table of staged files (see the module docstring)."""

    def __init__(self, area: StagingArea, journal: Journal, wall_clock: Callable[[], float]):
        self.area = area
        self.journal = journal
        self.by_key: dict[str, StagedFile] = {}
        self.detached: set[StagedFile] = set()
        self._wall = wall_clock
        # Set by the upload queue: called whenever a file's due time may have changed, and
        # asked whether a file is being uploaded (it must then stay).
        self.reschedule: Callable[[StagedFile], None] = lambda _: None
        self.uploading: Callable[[StagedFile], bool] = lambda _: False
        # Set by the engine from the mount: frees at least N bytes of the cache disk (the
        # block cache gives blocks back) and says how many it freed; None: nothing to give.
        self.make_room: Callable[[int], int] | None = None

    def add(self, file: StagedFile) -> None:
        assert file.key is not None
        assert file.key not in self.by_key
        self.by_key[file.key] = file

    def is_live(self, file: StagedFile) -> bool:
        return file.key is not None and self.by_key.get(file.key) is file

    # -- changes -------------------------------------------------------------------------------

    def room_made(self, needed: int) -> bool:
        """On a full cache disk: whether `make_room` freed space for `needed` more bytes."""
        return self.make_room is not None and self.make_room(needed) > 0

    def write(self, file: StagedFile, offset: int, data: bytes) -> int:
        self.mark_dirty(file)
        try:
            written = staging.write_at(file.fd, offset, data)
        except NoSpace:
            if not self.room_made(len(data)):
                raise
            written = staging.write_at(file.fd, offset, data)
        if written < len(data) and self.room_made(len(data) - written):
            with contextlib.suppress(NoSpace):
                written += staging.write_at(file.fd, offset + written, data[written:])
        file.size = max(file.size, offset + written)
        self.changed(file, offset)
        return written

    def resize(self, file: StagedFile, size: int) -> None:
        self.mark_dirty(file)
        staging.resize(file.fd, size)
        low = min(file.size, size)
        file.size = size
        self.changed(file, low)

    def mark_dirty(self, file: StagedFile) -> None:
        """Journal the file before its first changed byte lands (no-op if already journaled)."""
        if file.journaled or file.key is None:
            return
        wall = self._wall()
        row = JournalRow(
            file.staging, file.key, file.base_etag, file.leftover_upload, wall, file.ours
        )
        try:
            self.journal.insert(row)
        except NoSpace:
            if not self.room_made(len(row.key) * 4 + 4096):  # a row, with room to spare
                raise
            self.journal.insert(row)
        file.journaled = True
        file.dirty_wall = wall

    def changed(self, file: StagedFile, low: int) -> None:
        file.generation += 1
        file.low_water = min(file.low_water, low)
        file.digests.changed(low)
        file.mtime = self._wall()
        if file.dirty_since == math.inf:
            file.dirty_since = trio.current_time()
            self.reschedule(file)

    # -- durability ----------------------------------------------------------------------------

    async def make_durable(self, file: StagedFile, run_sync: ThreadRunner) -> bool:
        """fsync `file`'s staging file (and once, its directory entry); if it has a journal
        row, record there what is now durable (size and digest), to be synced with the journal.
        False if a change below its size landed meanwhile: then nothing is recorded (the older
        state stays, which the file no longer matches: after a reboot it goes aside)."""
        async with file.sync_lock:
            if not file.journaled:
                await self._fsync(file, run_sync)  # clean: the bucket has it; nothing to record
                return True
            if file.synced_generation == file.generation:
                return True  # recorded, and nothing changed since
            generation, size, start = file.generation, file.size, file.digests.begin()
            digest = await run_sync(file.digests.update, file.fd, start, size)
            await self._fsync(file, run_sync)
            if file.digests.low < size:
                return False
            if file.journaled:
                self.journal.set_synced(file.staging, Synced(size, digest))
                file.synced_generation = generation
            return True

    async def _fsync(self, file: StagedFile, run_sync: ThreadRunner) -> None:
        await run_sync(os.fsync, file.fd)
        if not file.dir_synced:
            await run_sync(self.area.fsync_dir)
            file.dir_synced = True

    # -- after an upload -----------------------------------------------------------------------

    def settle(self, file: StagedFile, generation: int, started: float, etag: str) -> None:
        """The bucket has `generation` of `file` as `etag`: journal the new base, or drop the
        row if nothing changed since (journal first: if that fails, memory is untouched)."""
        if file.generation > generation:
            self.journal.set_base(file.staging, etag)
            file.dirty_since = started  # the writes since came after the upload began
        else:
            self.journal.delete(file.staging)
            file.journaled = False
            file.dirty_since = math.inf
        file.base_etag = etag
        file.ours = None
        file.uploaded_generation = generation

    def expect_ours(self, file: StagedFile, etag: str | None) -> None:
        """Journal the ETag the upload about to be committed gives the key (None: none)."""
        file.ours = etag
        if file.journaled:
            self.journal.set_ours(file.staging, etag)

    def move(
        self,
        file: StagedFile,
        key: str,
        base_etag: str | None,
        *,
        dirty: bool,
        delete_key: str | None = None,
        replacing: StagedFile | None = None,
    ) -> None:
        """Give `file` the key `key` (rename; conflict copy): first in one journal transaction,
        which also drops the row of the file it `replacing` and queues `delete_key` for the
        bucket, then in memory. `dirty`: the bucket does not have it under `key` yet."""
        since = file.dirty_wall if file.journaled else self._wall()
        row = JournalRow(file.staging, key, base_etag, file.leftover_upload, since)
        self.journal.move(row, delete_key=delete_key)
        if replacing is not None:
            replacing.journaled = False  # its row went in the same transaction
            self.detach(replacing)
        if file.key is not None and self.by_key.get(file.key) is file:
            del self.by_key[file.key]
        file.key, file.base_etag, file.ours = key, base_etag, None
        file.journaled, file.dirty_wall = True, since
        self.by_key[key] = file
        if dirty:
            self.changed(file, 0)
        self.reschedule(file)

    # -- leaving the table ---------------------------------------------------------------------

    def detach(self, file: StagedFile) -> None:
        """`file` lost its key (unlink, replaced): never upload it; free it once closed."""
        if file.journaled:
            self.journal.delete(file.staging)
            file.journaled = False
        if file.key is not None and self.by_key.get(file.key) is file:
            del self.by_key[file.key]
        file.key = None
        self.detached.add(file)
        self.forget_if_idle(file)

    def restore(self, key: str, file: StagedFile) -> None:
        """Undo an interrupted unlink or rename: `file` is `key` again."""
        self.by_key.setdefault(key, file)
        self.reschedule(file)

    def forget_if_idle(self, file: StagedFile) -> None:
        """Free a clean (or detached), closed, idle file and its staging file."""
        if file.open_count or self.uploading(file):
            return
        if file.key is not None:
            if file.dirty or file.journaled or self.by_key.get(file.key) is not file:
                return
            del self.by_key[file.key]
        self.detached.discard(file)
        os.close(file.fd)
        self.area.remove(file.staging)
        if self.journal.reserve_used:
            self.journal.restore_reserve()

    def close(self) -> None:
        """Close every fd (pending work stays journaled) and the journal."""
        for file in [*self.by_key.values(), *self.detached]:
            os.close(file.fd)
        self.by_key.clear()
        self.detached.clear()
        self.journal.close()


@dataclass(eq=False)
class UploadHooksOf:
    """What one upload attempt of `file` may ask about it (`uploader.UploadHooks`): whether
    its snapshot of `size` bytes is intact, and the journal bookkeeping of the attempt."""

    files: StagedFiles
    file: StagedFile
    size: int
    run_sync: ThreadRunner

    def intact(self) -> bool:
        return self.file.low_water >= self.size

    def record_upload(self, upload: PendingUpload | None) -> None:
        self.file.leftover_upload = upload
        if self.file.journaled:
            self.files.journal.set_upload(self.file.staging, upload)

    def expect_ours(self, etag: str) -> None:
        self.files.expect_ours(self.file, etag)

    async def sync_journal(self) -> None:
        await self.run_sync(self.files.journal.sync)

    async def make_durable(self) -> bool:
        return await self.files.make_durable(self.file, self.run_sync)
