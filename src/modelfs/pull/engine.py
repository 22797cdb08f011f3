"""The pull: files onto local disk with the mount's engine, verified, resumable, with fallback.

Every file of a pull goes through the mount's read engine: one `BlockFetcher` over the pull's
`SourceList`, whose blocks land in the destination's partial files (`PartFiles`, the pull's
`DataCache`), fetched in parallel parts by a `WholeObjectFetch` per file, with the same part
size, parallel GETs, retries and memory budget as a mount, and the same probe of how many of
those GETs pay (`read.concurrency`: a few on loopback, more on a WAN link that caps each
connection, up to `transfers`). For each file:

1. complete already (`PullState`)? skipped, without a request;
2. its partial file is opened: blocks an earlier, interrupted pull wrote of the same version
   are not fetched again (after a power loss, those its last checkpoint synced: `partfiles`);
3. the missing blocks are fetched (falling back from source to source, see `SourceList`),
   while the file's sha256 is computed in order as the blocks arrive, from memory (blocks a
   resumed pull already had are read back from the partial file: local, not the network);
4. the sha256 (or, without a manifest, the size) is checked before an atomic rename into
   place, made durable and recorded at the next checkpoint (see `state`); a mismatch throws
   the partial file away and tries again from the sources that did not deliver the bad bytes;
   with no source left, the error names the file, the expected hash and the hash received.

Files of one block or less (tokenizers, configs, a tree of thousands of small files) take a
lane of their own through the same sources and memory budget: `files_at_once` worker threads,
each taking the next file as it finishes one, with one GET per file, hashed and written in the
same thread and no partial file (its resume unit is the whole file, one request), and no round
trip through trio per file. The lane runs beside the larger files, whose GETs are bounded by
`transfers` (and at most `files_at_once` of them are in flight).
Progress is reported through `PullEvents`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from modelfs.config.units import format_size
from modelfs.errors import ModelfsError, NoSpace, StaleObject
from modelfs.memory import MemoryBudget
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.pull.partfiles import PartFiles, recorded_bytes
from modelfs.pull.state import Checkpoints, PullState
from modelfs.read.concurrency import adapt_background_gets
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.whole import WholeObjectFetch
from modelfs.store.sources import SourceList

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20  # as the mount's: one block per largest FUSE read, one record per block
SPACE_MARGIN = 64 << 20  # left free beyond what a pull needs (or 1% of it, if more)
CHECKPOINT_INTERVAL = 5.0  # seconds between two syncs of DEST that make finished files durable


@dataclass(frozen=True, slots=True)
class PullFile:
    path: str  # under DEST, '/'-separated; also the key the sources know it by
    size: int
    sha256: str | None = None  # from a manifest
    etag: str | None = None  # from the bucket's listing (a pull without a manifest)


@dataclass(frozen=True, slots=True)
class PullOptions:
    transfers: int  # the most ranged GETs at once; how many pay is probed (`concurrency`)
    part_size: int
    max_memory: int
    files_at_once: int  # small files in flight at once (one GET each)


@dataclass
class PullResult:
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line each


class PullEvents(Protocol):
    """What a pull reports while it runs (see `progress`), from any of its threads."""

    def file_started(self, file: PullFile, present: int) -> None: ...

    def written(self, nbytes: int) -> None: ...

    def file_done(self, file: PullFile, skipped: bool) -> None: ...

    def file_failed(self, file: PullFile, error: str) -> None: ...


def version_of(file: PullFile) -> str:
    """Which version of `file` a pull wants: the manifest's sha256, else the listing's ETag
    ("" where the source gives neither: whatever is there)."""
    return file.sha256 or file.etag or ""


def bytes_to_fetch(dest: Path, files: Sequence[PullFile]) -> int:
    """What `files` still need from the network (a resumed pull has some on disk; a file of
    one block or less never has: it is fetched whole)."""
    return sum(
        file.size
        - (
            recorded_bytes(dest, BLOCK_SIZE, file.path, file.size, version_of(file))
            if file.size > BLOCK_SIZE
            else 0
        )
        for file in files
    )


def check_space(dest: Path, files: Sequence[PullFile]) -> None:
    """NoSpace, before any request, if `dest` cannot hold what is still to come."""
    needed = bytes_to_fetch(dest, files)
    stats = os.statvfs(dest)
    free = stats.f_bavail * stats.f_frsize
    margin = max(SPACE_MARGIN, needed // 100)
    if needed + margin > free:
        raise NoSpace(
            f"not enough space in {dest}: {format_size(needed)} to fetch "
            f"(+{format_size(margin)} margin), {format_size(free)} free"
        )


class Puller:
    def __init__(
        self, sources: SourceList, dest: Path, options: PullOptions, events: PullEvents
    ) -> None:
        self.sources = sources
        self.dest = dest
        self.options = options
        self.events = events
        self.state = PullState(dest)
        self.parts = PartFiles(dest, BLOCK_SIZE, on_written=events.written)
        self.checkpoints = Checkpoints(self.state, dest, self.parts)
        self.budget = MemoryBudget(options.max_memory)
        self.fetcher = BlockFetcher(
            sources,
            self.parts,
            demand_limiter=trio.CapacityLimiter(options.transfers),
            prefetch_limiter=trio.CapacityLimiter(options.transfers),
            budget=self.budget,
        )

    async def pull(self, files: Sequence[PullFile], skipped: Sequence[PullFile]) -> PullResult:
        result = PullResult(skipped=[file.path for file in skipped])
        for file in skipped:
            self.events.file_done(file, skipped=True)
        for file in files:
            self.sources.expect(file.path, file.size)
        small = [file for file in files if file.size <= BLOCK_SIZE]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.fetcher.run)
                nursery.start_soon(adapt_background_gets(self.fetcher, self.options.transfers).run)
                nursery.start_soon(self._checkpoint_every, CHECKPOINT_INTERVAL)
                slots = trio.Semaphore(self.options.files_at_once)
                async with trio.open_nursery() as pulls:
                    if small:
                        pulls.start_soon(self._small_lane, small, result)
                    for file in files:
                        if file.size > BLOCK_SIZE:
                            await slots.acquire()
                            pulls.start_soon(self._pull_file, file, slots, result)
                nursery.cancel_scope.cancel()
        finally:
            try:  # an interrupted pull's partial files are marked durable too
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.checkpoints.sync)
            finally:
                self.parts.close()
        return result

    async def _pull_file(self, file: PullFile, slots: trio.Semaphore, result: PullResult) -> None:
        try:
            error = await self._attempts(file)
        finally:
            slots.release()
        self._report(file, error, result)

    def _report(self, file: PullFile, error: str | None, result: PullResult) -> None:
        if error is None:
            result.fetched.append(file.path)
            self.events.file_done(file, skipped=False)
        else:
            result.failed.append(error)
            self.events.file_failed(file, error)

    async def _attempts(self, file: PullFile) -> str | None:
        """Pull `file`, source after source until its bytes check out; None, or the error."""
        while True:
            self.sources.forget_use(file.path)
            try:
                digest = await self._fetch(file)
                if file.sha256 is None or digest == file.sha256:
                    await trio.to_thread.run_sync(self._finish, file, digest)
                    return None
            except ModelfsError as exc:
                return f"{file.path}: {exc}"
            except OSError as exc:
                return self._unwritable(file, exc)
            self.parts.discard(file.path)
            error = self._reject(file, digest)
            if error is not None:
                return error

    def _unwritable(self, file: PullFile, error: OSError) -> str:
        return f"{file.path}: could not be written to {self.dest}: {error.strerror or error}"

    def _reject(self, file: PullFile, digest: str) -> str | None:
        """`file`'s bytes hashed to `digest`, not its sha256: the sources that delivered them
        are not used for it again. The error if no other source is left, else None."""
        bad = self.sources.used_for(file.path)
        for name in bad:
            self.sources.exclude(file.path, name)
        log.warning(
            "%s: sha256 %s, not the manifest's %s (bytes from %s); trying other sources",
            file.path,
            digest,
            file.sha256,
            ", ".join(sorted(bad)),
        )
        if self.sources.usable(file.path):
            return None
        return (
            f"{file.path}: sha256 mismatch: expected {file.sha256}, got {digest} "
            f"(from {', '.join(sorted(bad))}); no other source left"
        )

    # -- files of one block or less ------------------------------------------------------------

    async def _small_lane(self, files: Sequence[PullFile], result: PullResult) -> None:
        """`files_at_once` worker threads take the next file of `files` until none is left.
        Cancelled (Ctrl-C), each finishes the file it is on and takes no other."""
        queue = deque(files)
        stop = threading.Event()
        workers = min(self.options.files_at_once, len(files))
        limiter = trio.CapacityLimiter(workers)  # not trio's default limiter's threads

        async def worker() -> None:
            await trio.to_thread.run_sync(self._small_worker, queue, stop, result, limiter=limiter)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_when_cancelled, stop)
            async with trio.open_nursery() as threads:
                for _ in range(workers):
                    threads.start_soon(worker)
            nursery.cancel_scope.cancel()

    def _small_worker(
        self, queue: deque[PullFile], stop: threading.Event, result: PullResult
    ) -> None:
        while not stop.is_set():
            try:
                file = queue.popleft()
            except IndexError:
                return
            self.events.file_started(file, 0)
            try:
                error = self._small_attempts(file, stop)
            except _Stopped:
                return
            self._report(file, error, result)

    def _small_attempts(self, file: PullFile, stop: threading.Event) -> str | None:
        """As `_attempts`, for a file of one block or less (in a worker thread)."""
        while True:
            self.sources.forget_use(file.path)
            try:
                digest = self._fetch_small(file, stop)
            except ModelfsError as exc:
                return f"{file.path}: {exc}"
            except OSError as exc:
                return self._unwritable(file, exc)
            if file.sha256 is None or digest == file.sha256:
                return None
            error = self._reject(file, digest)
            if error is not None:
                return error

    def _fetch_small(self, file: PullFile, stop: threading.Event) -> str:
        """One GET under the memory budget, hashed, and (if its bytes check out) written and
        renamed into place; the sha256 of its bytes. A pull killed meanwhile fetches the file
        again: it is one request."""
        if not self.budget.acquire(file.size, cancelled=stop):
            raise _Stopped
        try:
            version = ObjectId(file.path, version_of(file))
            data = self.sources.get_range(version, 0, file.size) if file.size else b""
            if len(data) != file.size:
                raise StaleObject(f"got {len(data)} of {file.size} bytes")
            digest = hashlib.sha256(data).hexdigest()
            if file.sha256 is None or digest == file.sha256:
                self.parts.write_whole(file.path, data, self.dest / file.path)
                self.checkpoints.finished(file.path, file.size, digest, file.etag)
                self.events.written(file.size)
            return digest
        finally:
            self.budget.release(file.size)

    # -- larger files ----------------------------------------------------------------------------

    async def _fetch(self, file: PullFile) -> str:
        """Fill the file's partial file and return the sha256 of its bytes, in order."""
        present = self.parts.open(file.path, version_of(file))
        self.events.file_started(file, len(present) * BLOCK_SIZE)
        info = ObjectInfo(file.path, file.size, version_of(file), 0.0)
        count = self.fetcher.block_count(info)
        whole = WholeObjectFetch(
            self.fetcher, info, part_size=self.options.part_size, parallel=self.options.transfers
        )
        digest = hashlib.sha256()
        failure: ModelfsError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(whole.run)
            try:
                for index in range(count):
                    data = await self.fetcher.block(info, index)
                    await trio.to_thread.run_sync(digest.update, data)
                    self.fetcher.done_with(info.id, index)
            except ModelfsError as exc:
                failure = exc
                nursery.cancel_scope.cancel()
        if failure is None and whole.error is not None:
            error = whole.error
            failure = error if isinstance(error, ModelfsError) else ModelfsError(str(error))
        if failure is not None:
            raise failure
        await self.fetcher.settle(info.id)  # every block written (or failed to be)
        missing = self.parts.missing(file.path, count)
        if missing:
            cause = self.parts.last_error(file.path)
            raise NoSpace(
                f"{missing} block(s) could not be written to {self.dest}"
                + (f": {cause.strerror}" if cause is not None else "")
            )
        return digest.hexdigest()

    def _finish(self, file: PullFile, digest: str) -> None:
        self.parts.finish(file.path, file.size, self.dest / file.path)
        self.checkpoints.finished(file.path, file.size, digest, file.etag)

    async def _checkpoint_every(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            await trio.to_thread.run_sync(self.checkpoints.sync)


class _Stopped(Exception):
    """The small-file lane was stopped while a worker waited for the memory budget."""


async def _set_when_cancelled(event: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        event.set()
