"""Verify-while-fill: a model file's sha256, checked as its blocks arrive, before it is trusted.

When the mounted prefix holds a manifest, the whole-object fetch of a model file it lists
runs a `Verification` beside it: the object's blocks, in order, through the fetcher (from RAM
as they arrive, or the cache), into a sha256 computed in a worker thread. The result is kept
per object version for the life of the mount.

What a reader sees (`ObjectReader` asks `check`): reads are served while the verification
runs, except a read of the object's last block, which waits for the verdict; once the
verdict is a mismatch every read of that version fails with EIO (`Corrupt`). So a reader that
reads the whole file (any loader) gets EIO instead of a wrong file, never a wrong file that
looks complete; a reader that stops before the end may have seen unverified bytes. A size
that differs from the manifest's is a mismatch at once. A mismatch is logged once.
"""

from __future__ import annotations

import hashlib
import logging

import trio

from modelfs.errors import Corrupt
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.read.fetcher import BlockFetcher

log = logging.getLogger(__name__)


class Verification:
    def __init__(
        self, fetcher: BlockFetcher, info: ObjectInfo, size: int, sha256: str, run: int = 8
    ) -> None:
        self._fetcher = fetcher
        self._run = run  # blocks per GET if a block is not fetched yet
        self.info = info
        self._size = size
        self._sha256 = sha256
        self.done = trio.Event()
        self.matches: bool | None = None  # None until done
        self.last_block = fetcher.block_count(info) - 1

    async def run(self) -> None:
        try:
            self.matches = await self._compute()
        except Exception as exc:  # a failed fetch: unverified, readers see that error anyway
            log.warning("could not verify %s: %s", self.info.key, exc)
            self.matches = None
        finally:
            self.done.set()
        if self.matches is False:
            log.error(
                "%s does not match the manifest's sha256 %s: reads of it fail with EIO",
                self.info.key,
                self._sha256,
            )

    async def _compute(self) -> bool:
        if self.info.size != self._size:
            return False
        digest = hashlib.sha256()
        for index in range(self.last_block + 1):
            data = await self._fetcher.block(self.info, index, run_blocks=self._run)
            await trio.to_thread.run_sync(digest.update, data)
        return digest.hexdigest() == self._sha256

    async def check(self, first: int, last: int) -> None:
        """Before a read of blocks [first, last]: raise Corrupt if the object failed, and
        wait for the verdict if the read reaches the last block."""
        if last >= self.last_block and not self.done.is_set():
            await self.done.wait()
        if self.matches is False:
            raise Corrupt(f"{self.info.key} does not match the manifest's sha256")


class Verifications:
    """The verifications of a mount, by object version, and what they found."""

    def __init__(self, expected: dict[str, tuple[int, str]]) -> None:
        self._expected = expected  # object key -> (size, sha256), from the manifest
        self._by_version: dict[ObjectId, Verification] = {}

    def listed(self, key: str) -> bool:
        return key in self._expected

    def start(
        self, fetcher: BlockFetcher, info: ObjectInfo, nursery: trio.Nursery, run: int
    ) -> Verification | None:
        """The verification of `info` (started now, or earlier); None if not listed."""
        expected = self._expected.get(info.key)
        if expected is None:
            return None
        verification = self._by_version.get(info.id)
        if verification is None:
            verification = Verification(fetcher, info, *expected, run=run)
            self._by_version[info.id] = verification
            nursery.start_soon(verification.run)
        return verification

    def of(self, obj: ObjectId) -> Verification | None:
        return self._by_version.get(obj)

    def counts(self) -> tuple[int, int]:
        """(versions verified, versions that did not match)."""
        results = [v.matches for v in self._by_version.values()]
        return results.count(True), results.count(False)
