"""The deletes a rename still owes the bucket, and the retry backoff (with jitter) of write-back.

A rename of a file the bucket has uploads it under its new key and must delete the old one.
The delete is queued in the journal in the same transaction as the rename (so a crash cannot
forget it), tried at once, and retried in the background with backoff until it succeeds, or
until it fails for good (`ModelfsError.permanent`, e.g. access denied): then it stays
journaled, in `failed`, until a drain (`retry_failed`) or the next mount tries it again. A key
that is staged again meanwhile needs no delete: its upload replaces the object.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from modelfs.errors import ModelfsError
from modelfs.store.protocol import ObjectStore
from modelfs.write.files import StagedFiles
from modelfs.write.threads import ThreadRunner

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0  # seconds; a 503 burst usually clears within a second or two
BACKOFF_MAX = 60.0  # a bucket down for an hour is retried every minute, not hammered
_BACKOFF_DOUBLINGS = 6  # 2**6 s > BACKOFF_MAX: no need for bigger powers


def backoff(attempts: int, jitter: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the `attempts`-th failure in a row: 1, 2, 4, ... capped at 60,
    each scaled at random into [1/2, 1] of itself ("equal jitter"): files that failed together
    (a store that went down under many uploads, or many mounts) do not retry in lockstep."""
    doublings = min(max(attempts - 1, 0), _BACKOFF_DOUBLINGS)
    delay = min(BACKOFF_FIRST * (1 << doublings), BACKOFF_MAX)
    return delay * (0.5 + 0.5 * jitter())


class PendingDeletes:
    def __init__(
        self,
        files: StagedFiles,
        store: ObjectStore,
        *,
        run_sync: ThreadRunner,
        limiter: trio.CapacityLimiter,
        on_progress: Callable[[], None],
    ) -> None:
        self._files = files
        self._store = store
        self._run_sync = run_sync
        self._limiter = limiter
        self._on_progress = on_progress
        self.pending: set[str] = set(files.journal.deletes())
        self.failed: dict[str, str] = {}  # pending keys whose delete failed for good: why
        self.last_error: str | None = None
        self._queued = trio.Event()

    async def delete_now(self, key: str) -> None:
        """Delete `key` (already queued in the journal); on failure `run` retries it."""
        self.pending.add(key)
        if not await self._try(key):
            log.warning(
                "write-back: could not delete %s after a rename (will retry): %s",
                key,
                self.last_error,
            )
            self._queued.set()

    @property
    def waiting(self) -> set[str]:
        """Pending deletes that will be tried again on their own."""
        return self.pending - self.failed.keys()

    def retry_failed(self) -> None:
        """Try the deletes that failed for good once more (a drain)."""
        if self.failed:
            self.failed.clear()
            self._queued.set()

    async def run(self) -> None:
        attempts = 0
        while True:
            if not self.waiting:
                self._queued = trio.Event()
                await self._queued.wait()
            failed = False
            for key in sorted(self.waiting):
                failed = not await self._try(key) or failed
            attempts = attempts + 1 if failed else 0
            if failed:
                await trio.sleep(backoff(attempts))

    def take(self, key: str) -> bool:
        """`key` is staged again: its upload replaces the object a rename meant to delete, so
        the delete is dropped. True if there was one."""
        if key not in self.pending:
            return False
        self._forget(key)
        return True

    async def _try(self, key: str) -> bool:
        """One try; True once the delete is done (or moot: the key was staged again)."""
        if key not in self._files.by_key:
            try:
                await self._run_sync(self._store.delete, key, limiter=self._limiter)
            except Exception as exc:
                self.last_error = f"delete {key}: {exc}"
                if isinstance(exc, ModelfsError) and exc.permanent:
                    self.failed[key] = self.last_error
                    self._on_progress()
                return False
        self.last_error = None
        self._forget(key)
        return True

    def _forget(self, key: str) -> None:
        self.pending.discard(key)
        self.failed.pop(key, None)
        self._files.journal.forget_delete(key)
        self._on_progress()
