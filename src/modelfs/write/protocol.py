"""The `Writer` protocol: what the filesystem core asks of the write side, and its null object.

A writable mount has the write-back engine (`engine.WriteBack`); a read-only mount has
`ReadOnlyWriter`, which holds nothing staged and answers every change with EROFS. So the core
never asks whether there is a writer: there always is one. The writer owns every change to the
bucket a mount makes (files, and directory markers), and its lifecycle belongs to the daemon:
`run` for the life of the mount, `drain` before exit, then `close`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from modelfs.errors import NotFound, ReadOnly
from modelfs.objects import ObjectInfo
from modelfs.write.files import StagedInfo, WriteHandle
from modelfs.write.queue import WriteBackStatistics


class Writer(Protocol):
    read_only: bool

    def staged(self, key: str) -> StagedInfo | None:
        """Size and mtime of a staged key; they override the bucket's."""

    def staged_under(self, prefix: str) -> list[StagedInfo]:
        """Every staged key starting with `prefix` (any depth)."""

    def read(self, target: str | WriteHandle, offset: int, size: int) -> bytes: ...

    async def open(
        self, key: str, base: ObjectInfo | None, *, truncate: bool = False, append: bool = False
    ) -> WriteHandle: ...

    def write(self, handle: WriteHandle, offset: int, data: bytes) -> int: ...

    async def truncate(
        self, target: str | WriteHandle, size: int, base: ObjectInfo | None = None
    ) -> None: ...

    async def fsync(self, handle: WriteHandle) -> None: ...

    async def fsync_names(self) -> None:
        """Make every create, rename and unlink so far survive a power loss (fsyncdir)."""

    def release(self, handle: WriteHandle) -> None: ...

    async def unlink(self, key: str) -> None: ...

    async def rename(self, old: str, new: str, *, replaced: ObjectInfo | None = None) -> None: ...

    async def make_directory(self, marker: str) -> None:
        """Create the directory marker object `marker` (a key ending in '/')."""

    async def remove_directory(self, marker: str) -> None: ...

    async def run(self) -> None: ...

    async def drain(
        self,
        progress: Callable[[WriteBackStatistics], None] | None = None,
        interval: float = 1.0,
    ) -> None: ...

    def retry_failed(self) -> None:
        """Try once more, in the background, what failed for good (new credentials)."""

    def statistics(self) -> WriteBackStatistics | None: ...

    def close(self) -> None: ...


class ReadOnlyWriter:
    """The writer of a read-only mount: nothing staged, every change refused with EROFS."""

    read_only = True

    def staged(self, key: str) -> StagedInfo | None:
        return None

    def staged_under(self, prefix: str) -> list[StagedInfo]:
        return []

    def read(self, target: str | WriteHandle, offset: int, size: int) -> bytes:
        raise NotFound(f"{target} is not staged")

    async def open(
        self, key: str, base: ObjectInfo | None, *, truncate: bool = False, append: bool = False
    ) -> WriteHandle:
        raise _refused(key)

    def write(self, handle: WriteHandle, offset: int, data: bytes) -> int:
        raise _refused(handle.key or "file")

    async def truncate(
        self, target: str | WriteHandle, size: int, base: ObjectInfo | None = None
    ) -> None:
        raise _refused(target if isinstance(target, str) else target.key or "file")

    async def fsync(self, handle: WriteHandle) -> None:
        return None

    async def fsync_names(self) -> None:
        return None

    def release(self, handle: WriteHandle) -> None:
        return None

    async def unlink(self, key: str) -> None:
        raise _refused(key)

    async def rename(self, old: str, new: str, *, replaced: ObjectInfo | None = None) -> None:
        raise _refused(old)

    async def make_directory(self, marker: str) -> None:
        raise _refused(marker)

    async def remove_directory(self, marker: str) -> None:
        raise _refused(marker)

    async def run(self) -> None:
        return None

    async def drain(
        self,
        progress: Callable[[WriteBackStatistics], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        return None

    def retry_failed(self) -> None:
        return None

    def statistics(self) -> WriteBackStatistics | None:
        return None

    def close(self) -> None:
        return None


def _refused(what: str) -> ReadOnly:
    return ReadOnly(f"{what}: the mount is read-only")
