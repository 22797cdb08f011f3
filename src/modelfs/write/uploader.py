"""One upload attempt of one staging file: conflict check, then PUT or multipart.

Owns the protocol with the bucket for a single attempt; scheduling, retries and what the result
means for local state belong to `queue`. An attempt works on a *snapshot* `(fd, size)` of
a staging file that may still be written to: the engine lowers a low-water mark on every write
below `size`, and `hooks.intact()` says whether any did. Bytes are only committed to the bucket
(PUT sent, multipart completed) while the snapshot is intact, so the bucket never holds a mix of
two generations; a torn attempt returns `Torn` and is simply tried again. Appends past `size`
(a log being written) never tear a snapshot.

Algorithm of `upload_once`:
1. Leftovers: a multipart upload recorded in the journal by an earlier attempt or process is
   aborted (id '' means the process died while creating it: abort every upload of that exact
   key; the journal records the key too, since a conflict copy uploads under another key).
2. Conflict check (HEAD): the bucket must still hold `base_etag` (or nothing, for a new file).
   If it holds something else and that is byte-for-byte our snapshot (same S3 ETag: a previous
   attempt completed but its answer was lost, or the process died before journaling it), the
   work is done (`Uploaded`). If it holds `ours`, the ETag an earlier attempt of ours was about
   to commit (journaled before the request), that attempt landed unrecorded and the file has
   changed since: the bucket holds our own older bytes, which we replace. Otherwise it is a
   conflict: the remote version stays, ours goes to `KEY.conflict-<UTC timestamp>`
   (`Conflicted`). An object deleted remotely is no conflict: there is nothing to overwrite, so
   ours is uploaded to KEY.
3. PUT in one request up to `part_size`, else multipart with the id journaled before any part
   is sent (so recovery can abort it) and cleared after completion; on any failure or
   cancellation the upload is aborted (shielded), never left billing. Before the PUT (or the
   completion) is sent, the staging file is made durable with its synced state journaled
   (`hooks.make_durable`; for a multipart upload, while the parts are sent), then the ETag that
   request will give the key is journaled as `ours`. So an upload of ours that landed is never
   newer than what recovery after a power loss finds synced (see `durable`).
The PUT (or the completion) carries what the HEAD found as its condition (`Expect`: that ETag,
or no object), so a change made in the bucket between HEAD and PUT is not overwritten: the
store refuses the write, the attempt returns `Raced` and the next one starts again from the
HEAD (which then finds the change: a conflict). On a store that refuses conditional writes
the PUT goes through unconditioned, and such a change is overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, TypeVarTuple

import trio

from modelfs.errors import NotFound, StaleObject
from modelfs.memory import MemoryBudget
from modelfs.objects import ObjectInfo
from modelfs.store.etag import from_md5, multipart_etag, same_etag
from modelfs.store.protocol import Expect, ObjectStore, PendingUpload, UploadedPart
from modelfs.write.staging import content_etag, is_multipart, part_size_for, read_at
from modelfs.write.threads import ThreadRunner

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")

CREATING_UPLOAD = ""  # upload id in the journal: create_multipart sent, its id not known yet


@dataclass(frozen=True, slots=True)
class Snapshot:
    key: str
    fd: int
    size: int
    base_etag: str | None
    leftover_upload: PendingUpload | None
    ours: str | None = None  # the ETag an earlier attempt was committing (see the docstring)


class UploadHooks(Protocol):
    def intact(self) -> bool:
        """No byte below the snapshot size changed since the snapshot was taken."""

    def record_upload(self, upload: PendingUpload | None) -> None:
        """Journal the multipart upload in flight (None: there is none any more)."""

    async def sync_journal(self) -> None:
        """Make the journal durable against power loss."""

    def expect_ours(self, etag: str) -> None:
        """Journal the ETag the request about to be sent gives the snapshot's key."""

    async def make_durable(self) -> bool:
        """The staging file on the cache disk, its synced state journaled; False if it was
        rewritten meanwhile (nothing recorded: the attempt must not commit)."""


@dataclass(frozen=True, slots=True)
class Uploaded:
    info: ObjectInfo


@dataclass(frozen=True, slots=True)
class Conflicted:
    conflict_key: str
    remote: ObjectInfo
    info: ObjectInfo


@dataclass(frozen=True, slots=True)
class Torn:
    pass


@dataclass(frozen=True, slots=True)
class Raced:
    """The bucket's object changed between the check and the write; nothing was written."""


Outcome = Uploaded | Conflicted | Torn | Raced


@dataclass(frozen=True, slots=True)
class Uploader:
    store: ObjectStore
    limiter: trio.CapacityLimiter
    part_slots: trio.Semaphore
    part_size: int
    run_sync: ThreadRunner
    wall_clock: Callable[[], float] = time.time
    # RAM for bodies read from staging files (a PUT, a part, an ETag check); None: unbounded
    # but for `part_slots`. A mount shares its read budget (`--max-memory`) with uploads.
    budget: MemoryBudget | None = None

    async def upload_once(self, snap: Snapshot, hooks: UploadHooks) -> Outcome:
        if snap.leftover_upload is not None:
            await self._abort_leftover(snap.leftover_upload)
            hooks.record_upload(None)
        remote = await self._head(snap.key)
        if remote is None or same_etag(remote.etag, snap.base_etag):
            if remote is None and snap.base_etag is not None:
                log.warning("%s was deleted in the bucket; uploading the local version", snap.key)
            expect = Expect(None if remote is None else remote.etag)
            return await self._put(snap.key, snap, hooks, expect)
        mine = await self.etag_of(snap.fd, snap.size, limiter=self.limiter)
        if not hooks.intact():
            return Torn()
        if same_etag(remote.etag, mine):
            return Uploaded(remote)
        if same_etag(remote.etag, snap.ours):
            return await self._put(snap.key, snap, hooks, Expect(remote.etag))
        return await self._conflict(snap, remote, hooks)

    async def _conflict(self, snap: Snapshot, remote: ObjectInfo, hooks: UploadHooks) -> Outcome:
        conflict_key = await self._free_conflict_key(snap.key)
        outcome = await self._put(conflict_key, snap, hooks, Expect(None))
        if not isinstance(outcome, Uploaded):
            return outcome
        log.warning(
            "conflict: %s changed in the bucket (ETag %s, expected %s) while it had local "
            "changes; kept the bucket's version, uploaded ours as %s",
            snap.key,
            remote.etag,
            snap.base_etag or "absent",
            conflict_key,
        )
        return Conflicted(conflict_key, remote, outcome.info)

    async def _free_conflict_key(self, key: str) -> str:
        when, number = self.wall_clock(), 1
        candidate = conflict_key(key, when)
        while await self._head(candidate) is not None:
            number += 1
            candidate = conflict_key(key, when, number)
        return candidate

    async def _put(
        self, key: str, snap: Snapshot, hooks: UploadHooks, expect: Expect
    ) -> Uploaded | Torn | Raced:
        if is_multipart(snap.size, self.part_size):
            return await self._multipart(key, snap, hooks, expect)
        async with self._memory(snap.size):
            data, digest = await self._thread(_read_and_digest, snap.fd, 0, snap.size)
            if not await hooks.make_durable() or not hooks.intact():
                return Torn()
            if key == snap.key:
                hooks.expect_ours(from_md5(digest))
            try:
                return Uploaded(await self._thread(self.store.put_bytes, key, data, expect))
            except StaleObject:
                return Raced()

    async def _multipart(
        self, key: str, snap: Snapshot, hooks: UploadHooks, expect: Expect
    ) -> Uploaded | Torn | Raced:
        hooks.record_upload(PendingUpload(key, CREATING_UPLOAD))
        await hooks.sync_journal()
        upload_id = await self._thread(self.store.create_multipart, key)
        hooks.record_upload(PendingUpload(key, upload_id))
        try:
            parts, digests, durable = await self._send_parts(key, upload_id, snap, hooks)
            if not durable or not hooks.intact():
                await self._abort(key, upload_id)
                hooks.record_upload(None)
                return Torn()
            if key == snap.key:
                hooks.expect_ours(multipart_etag(digests))
            try:
                info = await self._thread(
                    self.store.complete_multipart, key, upload_id, parts, expect
                )
            except StaleObject:
                await self._abort(key, upload_id)
                hooks.record_upload(None)
                return Raced()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._abort_quietly(key, upload_id, hooks)
            raise
        hooks.record_upload(None)
        return Uploaded(info)

    async def _send_parts(
        self, key: str, upload_id: str, snap: Snapshot, hooks: UploadHooks
    ) -> tuple[list[UploadedPart], list[bytes], bool]:
        """The parts sent, the MD5 digest of each (in order), and whether the staging file was
        made durable meanwhile (`hooks.make_durable`, run alongside the parts)."""
        step = part_size_for(snap.size, self.part_size)
        starts = range(0, snap.size, step)
        parts: list[UploadedPart | None] = [None] * len(starts)
        digests = [b""] * len(starts)

        async def send(index: int, start: int) -> None:
            length = min(step, snap.size - start)
            async with self.part_slots, self._memory(length):  # parts in RAM at once
                data, digests[index] = await self._thread(_read_and_digest, snap.fd, start, length)
                parts[index] = await self._thread(
                    self.store.upload_part, key, upload_id, index + 1, data
                )

        durable = [False]

        async def flush() -> None:
            durable[0] = await hooks.make_durable()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flush)
                for index, start in enumerate(starts):
                    nursery.start_soon(send, index, start)
        except ExceptionGroup as group:
            raise _first_leaf(group) from group  # callers handle one error, as for a PUT
        return [part for part in parts if part is not None], digests, durable[0]

    async def _abort_quietly(self, key: str, upload_id: str, hooks: UploadHooks) -> None:
        """Abort after a failure; if even that fails, the journal keeps the id for later."""
        try:
            await self._abort(key, upload_id)
        except Exception as exc:
            log.warning("could not abort multipart upload of %s (will retry): %s", key, exc)
            return
        hooks.record_upload(None)

    async def _abort_leftover(self, leftover: PendingUpload) -> None:
        key = leftover.key
        if leftover.upload_id != CREATING_UPLOAD:
            await self._abort(key, leftover.upload_id)
            log.info("aborted multipart upload of %s left by an earlier attempt", key)
            return
        pending = await self._thread(self.store.list_multipart, key)
        for upload in pending:
            if upload.key == key:  # the listing is by prefix
                await self._abort(key, upload.upload_id)
                log.info("aborted multipart upload %s of %s left by a crash", upload.upload_id, key)

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._thread(self.store.abort_multipart, key, upload_id)
        except NotFound:
            pass  # already completed or aborted: either way nothing is left billing

    async def _head(self, key: str) -> ObjectInfo | None:
        try:
            return await self._thread(self.store.head, key)
        except NotFound:
            return None

    async def etag_of(self, fd: int, size: int, *, limiter: trio.CapacityLimiter | None) -> str:
        """The ETag our upload of the first `size` bytes of `fd` gets, worked out in a thread
        (under `limiter`) one part in RAM at a time, within the budget."""
        async with self._memory(min(size, part_size_for(size, self.part_size))):
            return await self.run_sync(content_etag, fd, size, self.part_size, limiter=limiter)

    @contextlib.asynccontextmanager
    async def _memory(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes of the budget while a body of that size is in RAM."""
        if self.budget is None:
            yield
            return
        await self.budget.acquire_async(size)
        try:
            yield
        finally:
            self.budget.release(size)

    async def _thread(self, fn: Callable[[*Args], T], *args: *Args) -> T:
        """Run a blocking call (boto3, large file I/O) off the trio thread, within the limiter."""
        return await self.run_sync(fn, *args, limiter=self.limiter)


def conflict_key(key: str, when: float, number: int = 1) -> str:
    """The name of a conflict copy of `key` made at wall-clock time `when`: the `number`-th
    of that second (`KEY.conflict-YYYYMMDDTHHMMSSZ`, then `-2`, `-3`, ...)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    return f"{key}.conflict-{stamp}" + (f"-{number}" if number > 1 else "")


def _read_and_digest(fd: int, start: int, length: int) -> tuple[bytes, bytes]:
    """Worker thread: bytes [start, start + length) of `fd` and their MD5 digest."""
    data = read_at(fd, start, length)
    return data, hashlib.md5(data, usedforsecurity=False).digest()


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
