"""What a path of the mount is: the writer's staged files laid over the bucket's listing.

A staged file (written on the mount, not yet uploaded, or open for writing) overrides the
bucket's object of the same key: its size and mtime are the writer's, and its bytes are read
from the writer. A directory exists if the bucket lists it or if staged files are below it.
"""

from __future__ import annotations

from modelfs.core import paths
from modelfs.core.namespace import Namespace
from modelfs.objects import ObjectInfo
from modelfs.write.files import StagedInfo
from modelfs.write.protocol import Writer


class Overlay:
    def __init__(self, namespace: Namespace, writer: Writer) -> None:
        self._namespace = namespace
        self._writer = writer

    def staged(self, path: str) -> StagedInfo | None:
        """What the writer holds for `path`: it overrides the bucket."""
        return self._writer.staged(self._namespace.key_of(path))

    def staged_children(self, path: str) -> dict[str, StagedInfo | None]:
        """Staged files directly in directory `path`, and directories (None) that only
        staged files below them make."""
        prefix = self._namespace.dir_prefix(path)
        children: dict[str, StagedInfo | None] = {}
        for staged in self._writer.staged_under(prefix):
            name, sep, _ = staged.key[len(prefix) :].partition("/")
            if not paths.valid_segment(name):
                continue
            if sep:
                children.setdefault(name, None)
            else:
                children[name] = staged
        return children

    def staged_dir(self, path: str) -> bool:
        """A directory that exists only because staged files are below it."""
        return bool(self._writer.staged_under(self._namespace.dir_prefix(path)))

    async def bucket_info(self, path: str) -> ObjectInfo | None:
        """The bucket's current object at `path` (from the TTL-cached listing)."""
        listing = await self._namespace.listing(paths.parent_of(path))
        return listing.files.get(paths.name_of(path))

    async def base(self, path: str) -> ObjectInfo | None:
        """What a change to `path` starts from: nothing if staged (the writer has it), else
        the bucket's object."""
        return None if self.staged(path) is not None else await self.bucket_info(path)
