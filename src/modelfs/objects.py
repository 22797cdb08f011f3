"""What the store says about objects: the value types every layer passes around.

`ObjectId` names one *version* of an object (key + ETag): cache keys and If-Match both use it,
so bytes of two versions can never be mixed. `ObjectInfo` is what HEAD or LIST tells about an
object, `ListPage` one page of a listing. ETags are stored unquoted (see `store.etag`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ObjectId:
    """One version of one object: the unit of caching and of If-Match."""

    key: str
    etag: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What HEAD or LIST tells about an object."""

    key: str
    size: int
    etag: str
    mtime: float

    @property
    def id(self) -> ObjectId:
        return ObjectId(self.key, self.etag)


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a delimited listing: objects directly under the prefix and sub-prefixes."""

    objects: tuple[ObjectInfo, ...]
    prefixes: tuple[str, ...]
    next_token: str | None
