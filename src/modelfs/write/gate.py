"""`GatedWriter`: a writable mount's writer that stays read-only until it is opened.

A mount that starts while its store is unreachable serves a snapshot of old listings; a change
made on top of them could silently undo what others wrote meanwhile, so it refuses changes
(EROFS, like a read-only mount) until the store answers, and the daemon then calls `open`.
Everything that reads (staged files of an earlier run, their bytes, statistics) and the
lifecycle (`run`, `drain`, `close`) go to the wrapped writer from the start: files an earlier
process left staged are still shown, and uploaded once the store answers.
"""

from __future__ import annotations

from collections.abc import Callable

from modelfs.errors import ReadOnly
from modelfs.objects import ObjectInfo
from modelfs.write.files import StagedInfo, WriteHandle
from modelfs.write.protocol import Writer
from modelfs.write.queue import WriteBackStatistics


class GatedWriter:
    """See the module docstring."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self.read_only = True

    def open_for_writes(self) -> None:
        self.read_only = False

    def _check(self, what: str) -> None:
        if self.read_only:
            raise ReadOnly(f"{what}: read-only until the store answers (started offline)")

    # -- reads, passed through -----------------------------------------------------------

    def staged(self, key: str) -> StagedInfo | None:
        return self._writer.staged(key)

    def staged_under(self, prefix: str) -> list[StagedInfo]:
        return self._writer.staged_under(prefix)

    def read(self, target: str | WriteHandle, offset: int, size: int) -> bytes:
        return self._writer.read(target, offset, size)

    async def fsync(self, handle: WriteHandle) -> None:
        await self._writer.fsync(handle)

    async def fsync_names(self) -> None:
        await self._writer.fsync_names()

    def release(self, handle: WriteHandle) -> None:
        self._writer.release(handle)

    # -- changes, refused until opened ---------------------------------------------------

    async def open(
        self, key: str, base: ObjectInfo | None, *, truncate: bool = False, append: bool = False
    ) -> WriteHandle:
        # A staged file opened to read goes through: the core opens those with no flags.
        if self.read_only and (truncate or append or self._writer.staged(key) is None):
            self._check(key)
        return await self._writer.open(key, base, truncate=truncate, append=append)

    def write(self, handle: WriteHandle, offset: int, data: bytes) -> int:
        self._check(handle.key or "file")
        return self._writer.write(handle, offset, data)

    async def truncate(
        self, target: str | WriteHandle, size: int, base: ObjectInfo | None = None
    ) -> None:
        self._check(target if isinstance(target, str) else target.key or "file")
        await self._writer.truncate(target, size, base)

    async def unlink(self, key: str) -> None:
        self._check(key)
        await self._writer.unlink(key)

    async def rename(self, old: str, new: str, *, replaced: ObjectInfo | None = None) -> None:
        self._check(old)
        await self._writer.rename(old, new, replaced=replaced)

    async def make_directory(self, marker: str) -> None:
        self._check(marker)
        await self._writer.make_directory(marker)

    async def remove_directory(self, marker: str) -> None:
        self._check(marker)
        await self._writer.remove_directory(marker)

    # -- the lifecycle, passed through ---------------------------------------------------

    async def run(self) -> None:
        await self._writer.run()

    async def drain(
        self,
        progress: Callable[[WriteBackStatistics], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        await self._writer.drain(progress, interval)

    def retry_failed(self) -> None:
        self._writer.retry_failed()

    def statistics(self) -> WriteBackStatistics | None:
        return self._writer.statistics()

    def close(self) -> None:
        self._writer.close()
