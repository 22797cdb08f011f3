"""`ManifestStore`: a manifest's files as a read-only `ObjectStore` (`modelfs mount URL`).

A manifest fetched from a URL (a link service's, or any static host's) names each file, its
size and its sha256; the bytes come from the manifest's sources with fallback, exactly as a
pull reads them (`plan.make_plan`: per-file links renewed when refused, base URLs, remotes).

Invariants:
- keys are the manifest's paths; listings and `head` are answered from the manifest, never by a
  request, so a mount of it lists as fast as memory;
- a file's ETag is its sha256: the block cache keys blocks by content, and a manifest that
  gives a path another sha256 makes its cached blocks another version, never mixed in;
- every read asks for exactly the manifest's size of each file (`SourceList.expect`), and the
  mount verifies each file's sha256 as it fills (`read.verify`);
- the manifest is read once, when the store is made: a new version is a new mount;
- every write raises `ReadOnly` (EROFS at the FUSE edge).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence

from modelfs.errors import InvalidArgument, NotFound
from modelfs.objects import ListPage, ObjectId, ObjectInfo
from modelfs.pull.manifest import Manifest
from modelfs.pull.plan import make_plan
from modelfs.store.readonly import RefusesWrites
from modelfs.store.sources import SourceList
from modelfs.store.sourcespec import SourceSettings


class ManifestStore(RefusesWrites):
    def __init__(self, manifest: Manifest, sources: SourceList, name: str) -> None:
        self.name = name
        self.manifest = manifest
        self.sources = sources
        self._files = manifest.by_path()
        self._keys = sorted(self._files)
        self._mtime = time.time()
        for file in manifest.files:
            sources.expect(file.path, file.size)

    def __repr__(self) -> str:
        return f"ManifestStore({self.name!r})"

    # -- reads -------------------------------------------------------------------------------

    def check_bucket(self) -> None:
        return None

    def head(self, key: str) -> ObjectInfo:
        file = self._files.get(key)
        if file is None:
            raise NotFound(f"{key}: not in the manifest {self.name}")
        return ObjectInfo(key, file.size, file.sha256, self._mtime)

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        if obj.key not in self._files:
            raise NotFound(f"{obj.key}: not in the manifest {self.name}")
        return self.sources.iter_range(ObjectId(obj.key, ""), start, end, chunk)

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        return b"".join(self.iter_range(obj, start, end, max(1, end - start)))

    def warm_up(self, key: str) -> None:
        return None

    def list_page(
        self,
        prefix: str,
        token: str | None = None,
        max_keys: int = 1000,
        *,
        recursive: bool = False,
    ) -> ListPage:
        if max_keys < 1:
            raise InvalidArgument(f"max_keys must be at least 1, not {max_keys}")
        names = self._under(prefix) if recursive else self._delimited(prefix)
        first = bisect.bisect_right(names, token) if token is not None else 0
        page = names[first : first + max_keys]
        objects = tuple(self.head(name) for name in page if not name.endswith("/"))
        prefixes = tuple(name for name in page if name.endswith("/"))
        more = first + max_keys < len(names)
        return ListPage(objects, prefixes, page[-1] if more else None)

    def _under(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self._keys, prefix)
        found = []
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            found.append(key)
        return found

    def _delimited(self, prefix: str) -> list[str]:
        """Keys directly under `prefix`, and one `prefix + NAME/` per deeper directory."""
        names: set[str] = set()
        for key in self._under(prefix):
            slash = key.find("/", len(prefix))
            names.add(key if slash < 0 else key[: slash + 1])
        return sorted(names)

    def expectations(self) -> dict[str, tuple[int, str]]:
        """(size, sha256) by key, for the mount's verify-while-fill."""
        return {file.path: (file.size, file.sha256) for file in self.manifest.files}


def manifest_store(
    url: str,
    config: str | None,
    settings: SourceSettings,
    extra_sources: Sequence[str] = (),
) -> ManifestStore:
    """The store of the manifest at `url` (fetched now; its sources as a pull uses them)."""
    plan = make_plan(url, config, settings, extra_sources)
    assert plan.manifest is not None  # a manifest URL always yields its manifest
    return ManifestStore(plan.manifest, plan.sources, plan.description)
