"""Unlink and rename of files, staged or not, with what they owe the bucket.

Both must stop an upload of the file in flight, and wait for it, before changing names: an
upload that finished afterwards could resurrect an unlinked file or land under an old name.
The bucket may hold a staged file's key even if no upload of it was ever recorded as done: one
of ours may have landed just before a crash or a cancel, which `StagedFile.ours` records. So a
key is deleted from the bucket whenever it may be there (`_may_be_in_bucket`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from modelfs.errors import NotFound
from modelfs.objects import ObjectInfo
from modelfs.store.etag import same_etag
from modelfs.store.protocol import ObjectStore
from modelfs.write.files import StagedFile, StagedFiles
from modelfs.write.queue import UploadQueue, WriteBackListener

StoreCall = Callable[..., Awaitable[Any]]


class NameChanges:
    def __init__(
        self,
        files: StagedFiles,
        queue: UploadQueue,
        store: ObjectStore,
        store_call: StoreCall,
        listener: WriteBackListener | None,
    ) -> None:
        self._files = files
        self._queue = queue
        self._store = store
        self._store_call = store_call
        self._listener = listener

    async def unlink(self, key: str) -> None:
        """Remove `key`, staged or not: its staged state (open handles keep a detached copy)
        and the bucket's object. Returns once the bucket no longer has it."""
        file = self._files.by_key.pop(key, None)
        if file is None:
            await self._store_call(self._store.delete, key)
            return
        try:
            await self._queue.stop_upload(file)
            if _may_be_in_bucket(file):
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
            await self._queue.stop_upload(file)
            old_in_bucket = _may_be_in_bucket(file)
            if target is None:
                base = replaced.etag if replaced else None
            else:
                await self._queue.stop_upload(target)
                base = await self._base_after_stopped_upload(new, target)
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
            await self._queue.deletes.delete_now(old)

    async def _base_after_stopped_upload(self, key: str, target: StagedFile) -> str | None:
        """The bucket version a rename onto staged `target` replaces, after stopping its
        upload: a request already sent may have landed without its answer being recorded
        (cancelled, or the process died), and our own upload is no conflict."""
        if target.ours is None:
            return target.base_etag
        try:
            remote: ObjectInfo | None = await self._store_call(self._store.head, key)
        except NotFound:
            remote = None
        if remote is not None and same_etag(remote.etag, target.ours):
            return remote.etag
        return target.base_etag

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
        await self._queue.deletes.delete_now(old)


def _may_be_in_bucket(file: StagedFile) -> bool:
    """Whether the bucket may hold `file`'s key: it started from an object there, or an
    upload of ours may have landed (even one whose answer was never recorded)."""
    return file.base_etag is not None or file.ours is not None
