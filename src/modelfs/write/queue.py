"""The upload queue: when each dirty file goes to the bucket, and what its result means.

Owns scheduling, the uploader loop, retries, `drain` and the statistics (with the deletes a
rename left to do: `deletes`). One attempt at one file is `uploader.Uploader.upload_once`; the
files themselves are `files.StagedFiles`.

The queue owns its scheduling state: each staged file has a `_QueueItem` (due early, backoff,
attempts, the upload in flight, its heap token), as rclone keeps it in its write-back item and
not on the file. Due time of a dirty file (a heap ordered by it; stale heap items are skipped by
token):
- closed: `upload_delay` after its last release, but never later than `flush_interval` after
  it became dirty (a file reopened every second is still uploaded);
- open: `flush_interval` after it became dirty, so a log held open for days is uploaded at
  least that often while it changes (an append-only snapshot of it; see `files`);
- recovered from the journal, or being drained: now (-inf: before anything else);
- after a failure: not before the backoff (1 s doubling to 60 s), for as long as the failure
  may pass (the store down, 5xx, throttling); the error shows in `statistics().last_error`
  until an upload succeeds;
- after a permanent failure (`ModelfsError.permanent`: access denied, key too long, bucket
  gone): never on its own. The file stays staged and journaled (data is never dropped) and
  the error shows in `statistics().failures` until `drain` (`modelfs sync`, unmount) or
  `retry_failed` (new keys) tries it once more, or the next mount does. `drain` ends with
  `UploadFailed` once only such files (and deletes that failed so) are left, not waiting.
At most `transfers` files upload at once; the limiter bounds the threads (and parts) of all.

Durability (see `durable`): an attempt commits nothing the cache disk does not hold with its
synced state journaled (`UploadHooksOf.make_durable`, called by the uploader). A retry first
does the same and syncs the journal, whatever the store answers: a file whose uploads kept
failing until a power cut (a store down at the time) is then trusted after the reboot.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from heapq import heappop, heappush
from typing import Protocol

import trio

from modelfs.errors import ModelfsError, UploadFailed
from modelfs.objects import ObjectInfo
from modelfs.store.protocol import ObjectStore
from modelfs.store.s3errors import error_code
from modelfs.write.deletes import PendingDeletes, backoff
from modelfs.write.files import NOTHING_WRITTEN, StagedFile, StagedFiles, UploadHooksOf
from modelfs.write.threads import ThreadRunner
from modelfs.write.uploader import Conflicted, Raced, Snapshot, Torn, Uploaded, Uploader

log = logging.getLogger(__name__)

TORN_RETRY_MIN = 1.0  # seconds: a file rewritten nonstop is not re-read in a tight loop


@dataclass(frozen=True, slots=True)
class WriteBackStatistics:
    files: int  # dirty files: queued, uploading, or open with changes
    bytes: int  # their total size
    oldest_age: float  # seconds since the oldest of them became dirty (0 if none)
    uploading: int
    deletes: int  # bucket keys a rename still has to delete
    last_error: str | None  # of the most recent failure, until a later upload succeeds
    uploaded_files: int
    uploaded_bytes: int
    conflicts: int
    retries: int
    errors: dict[str, int]  # failed upload attempts by error code (`store.s3errors`)
    failed: int = 0  # files not uploaded for good (a permanent error), waiting for a drain
    failures: tuple[str, ...] = ()  # "key: error" of each, and of deletes that failed so


@dataclass(eq=False)
class Upload:
    """The upload of one staged file in flight; unlink and rename cancel it and wait."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class _QueueItem:
    """The queue's state of one staged file."""

    expedite: bool = False  # due now (recovered, or drain)
    not_before: float = -math.inf  # backoff after a failed attempt
    attempts: int = 0
    upload: Upload | None = None
    heap_token: int = -1  # matches the newest heap entry for the file
    failure: str | None = None  # a permanent error: not due until a drain clears it


class WriteBackListener(Protocol):
    """How the filesystem core hears about the bucket changing under a staged key."""

    def uploaded(self, key: str, info: ObjectInfo) -> None:
        """`key` is now `info` in the bucket (refresh cached metadata of the key)."""

    def conflicted(self, key: str, conflict_key: str, remote: ObjectInfo) -> None:
        """`key` shows the bucket's version `remote` again; our bytes went to `conflict_key`."""


class UploadQueue:
    def __init__(
        self,
        files: StagedFiles,
        store: ObjectStore,
        uploader: Uploader,
        *,
        run_sync: ThreadRunner,
        limiter: trio.CapacityLimiter,
        transfers: int,
        upload_delay: float,
        flush_interval: float,
        listener: WriteBackListener | None,
        wall_clock: Callable[[], float],
    ) -> None:
        self._files = files
        self._store = store
        self._uploader = uploader
        self._run_sync = run_sync
        self._limiter = limiter
        self._slots = trio.Semaphore(transfers)
        self._upload_delay = upload_delay
        self._flush_interval = flush_interval
        self._listener = listener
        self._wall = wall_clock
        self._items: weakref.WeakKeyDictionary[StagedFile, _QueueItem] = weakref.WeakKeyDictionary()
        self._heap: list[tuple[float, int, StagedFile]] = []
        self._heap_counter = 0
        self._wakeup = trio.Event()
        self._progress = trio.Event()
        self.deletes = PendingDeletes(
            files, store, run_sync=run_sync, limiter=limiter, on_progress=self._note_progress
        )
        self._last_error: str | None = None
        self._uploaded_files = self._uploaded_bytes = self._conflicts = self._retries = 0
        self._errors: dict[str, int] = {}
        files.reschedule = self.reschedule
        files.uploading = self.uploading

    # -- scheduling ----------------------------------------------------------------------------

    def _item(self, file: StagedFile) -> _QueueItem:
        item = self._items.get(file)
        if item is None:
            item = self._items[file] = _QueueItem()
        return item

    def uploading(self, file: StagedFile) -> bool:
        item = self._items.get(file)
        return item is not None and item.upload is not None

    def expedite(self, file: StagedFile) -> None:
        """Make `file` due before anything else (recovered after a crash, or drained)."""
        item = self._item(file)
        item.expedite = True
        item.not_before = -math.inf
        item.failure = None
        self.reschedule(file)

    def reschedule(self, file: StagedFile) -> None:
        item = self._item(file)
        due = self._due(file, item)
        if due == math.inf:
            item.heap_token = -1
            return
        self._heap_counter += 1
        item.heap_token = self._heap_counter
        heappush(self._heap, (due, self._heap_counter, file))
        self._wakeup.set()

    def _due(self, file: StagedFile, item: _QueueItem) -> float:
        if not self._files.is_live(file) or not file.dirty or item.upload is not None:
            return math.inf
        if item.failure is not None:
            return math.inf
        if item.expedite:
            due = -math.inf
        else:
            due = file.dirty_since + self._flush_interval
            if file.open_count == 0:
                due = min(due, file.released_at + self._upload_delay)
        return max(due, item.not_before)

    def _current(self, entry: tuple[float, int, StagedFile]) -> bool:
        """A heap entry not superseded by a later reschedule of its file."""
        item = self._items.get(entry[2])
        return item is not None and item.heap_token == entry[1]

    async def _next_due(self) -> StagedFile:
        while True:
            while self._heap and not self._current(self._heap[0]):
                heappop(self._heap)
            due = self._heap[0][0] if self._heap else math.inf
            if due <= trio.current_time():
                file = heappop(self._heap)[2]
                self._item(file).heap_token = -1
                return file
            self._wakeup = trio.Event()
            with trio.move_on_at(due):
                await self._wakeup.wait()

    async def stop_upload(self, file: StagedFile) -> bool:
        """Take `file` off the queue; cancel its upload and wait until it has ended (a request
        already sent completes first). True if an upload was running."""
        item = self._item(file)
        item.heap_token = -1
        upload = item.upload
        if upload is None:
            return False
        upload.scope.cancel()
        await upload.done.wait()
        return True

    # -- uploading -----------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.deletes.run)
            while True:
                await self._slots.acquire()
                file = await self._next_due()
                self._item(file).upload = Upload()
                nursery.start_soon(self._upload_task, file)

    async def _upload_task(self, file: StagedFile) -> None:
        item = self._item(file)
        upload = item.upload
        assert upload is not None
        try:
            with upload.scope:
                await self._attempt(file, item)
        finally:
            item.upload = None
            upload.done.set()
            self._slots.release()
            self._files.forget_if_idle(file)
            self.reschedule(file)
            self._note_progress()

    async def _attempt(self, file: StagedFile, item: _QueueItem) -> None:
        key = file.key
        assert key is not None
        generation, size = file.generation, file.size
        item.expedite = False
        file.low_water = NOTHING_WRITTEN
        snapshot = Snapshot(key, file.fd, size, file.base_etag, file.leftover_upload, file.ours)
        started = trio.current_time()
        try:
            hooks = UploadHooksOf(self._files, file, size, self._run_sync)
            if item.attempts:  # a retry: durable first, whatever the store answers
                await hooks.make_durable()
                await hooks.sync_journal()
            outcome = await self._uploader.upload_once(snapshot, hooks)
            if not self._files.is_live(file):
                return  # unlinked or renamed meanwhile: they clean up the bucket
            if isinstance(outcome, Torn | Raced):
                where = "locally" if isinstance(outcome, Torn) else "in the bucket"
                log.info("write-back: %s changed %s during its upload; trying again", key, where)
                item.not_before = trio.current_time() + max(self._upload_delay, TORN_RETRY_MIN)
                return
            if isinstance(outcome, Uploaded):
                self._uploaded(file, key, generation, started, outcome.info)
            else:
                self._conflicted(file, key, generation, started, outcome)
            item.not_before, item.attempts = -math.inf, 0
        except Exception as exc:  # the loop must outlive any one file; nothing is dropped
            self._failed(item, key, exc)

    def _uploaded(
        self, file: StagedFile, key: str, generation: int, started: float, info: ObjectInfo
    ) -> None:
        self._files.settle(file, generation, started, info.etag)
        self._last_error = None
        self._uploaded_files += 1
        self._uploaded_bytes += info.size
        log.debug("write-back: uploaded %s (%d bytes)", key, info.size)
        if self._listener is not None:
            self._listener.uploaded(key, info)

    def _conflicted(
        self, file: StagedFile, key: str, generation: int, started: float, outcome: Conflicted
    ) -> None:
        # The bucket's version keeps the key; handles still open write on into the copy.
        conflict_key, etag = outcome.conflict_key, outcome.info.etag
        self._files.move(file, conflict_key, etag, dirty=False)
        self._files.settle(file, generation, started, etag)
        self._conflicts += 1
        self._uploaded_files += 1
        self._uploaded_bytes += outcome.info.size
        if self._listener is not None:
            self._listener.conflicted(key, conflict_key, outcome.remote)
            self._listener.uploaded(conflict_key, outcome.info)

    def _failed(self, item: _QueueItem, key: str, exc: Exception) -> None:
        item.attempts += 1
        self._retries += 1
        self._last_error = f"{key}: {exc}"
        code = error_code(exc)
        self._errors[code] = self._errors.get(code, 0) + 1
        if isinstance(exc, ModelfsError) and exc.permanent:
            item.failure = self._last_error
            log.error(
                "write-back: upload of %s failed for good: %s; it stays staged: once the cause "
                "is fixed, `modelfs sync` (or the next mount) tries again",
                key,
                exc,
            )
            return
        delay = backoff(item.attempts)
        item.not_before = trio.current_time() + delay
        expected = isinstance(exc, ModelfsError | OSError)
        log.log(
            logging.WARNING if expected else logging.ERROR,
            "write-back: upload of %s failed (attempt %d, retry in %.0fs): %s",
            key,
            item.attempts,
            delay,
            exc,
            exc_info=not expected,
        )

    # -- waiting and reporting -----------------------------------------------------------------

    async def drain(
        self, progress: Callable[[WriteBackStatistics], None] | None, interval: float
    ) -> None:
        """Upload every dirty file now (one more try for those that failed for good) and
        return once the bucket has them all; UploadFailed once only permanent failures are
        left (their files stay staged)."""
        targets = [(file, file.generation) for file in self._files.by_key.values() if file.dirty]
        for file, _ in targets:
            self.expedite(file)
        self.deletes.retry_failed()
        while True:
            pending = [
                file
                for file, generation in targets
                if self._files.is_live(file) and file.uploaded_generation < generation
            ]
            waiting = [file for file in pending if self._item(file).failure is None]
            if not waiting and not self.deletes.waiting:
                if pending or self.deletes.failed:
                    raise UploadFailed(self._failure_message())
                return
            with trio.move_on_after(interval) as waited:
                await self._progress.wait()
            if waited.cancelled_caught and progress is not None:
                progress(self.statistics())

    def retry_failed(self) -> None:
        """Make the files and deletes that failed for good due now, once more."""
        for file in [file for file, item in self._items.items() if item.failure is not None]:
            self.expedite(file)
        self.deletes.retry_failed()

    def _failure_message(self) -> str:
        failures = self._failures()
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        return (
            f"{len(failures)} written file(s) or delete(s) cannot reach the bucket: "
            f"{failures[0]}{more}; they stay staged"
        )

    def _failures(self) -> tuple[str, ...]:
        return (*self._file_failures(), *self.deletes.failed.values())

    def _file_failures(self) -> list[str]:
        items = (self._items.get(file) for file in self._files.by_key.values())
        return [item.failure for item in items if item is not None and item.failure is not None]

    def _note_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def statistics(self) -> WriteBackStatistics:
        files = list(self._files.by_key.values())
        dirty = [file for file in files if file.dirty]
        oldest = min((file.dirty_wall for file in dirty), default=None)
        return WriteBackStatistics(
            files=len(dirty),
            bytes=sum(file.size for file in dirty),
            oldest_age=0.0 if oldest is None else max(0.0, self._wall() - oldest),
            uploading=sum(1 for file in files if self.uploading(file)),
            deletes=len(self.deletes.pending),
            last_error=self._last_error or self.deletes.last_error,
            uploaded_files=self._uploaded_files,
            uploaded_bytes=self._uploaded_bytes,
            conflicts=self._conflicts,
            retries=self._retries,
            errors=dict(self._errors),
            failed=len(self._file_failures()),
            failures=self._failures(),
        )
