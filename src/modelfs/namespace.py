"""Directory listings of the bucket under the mount prefix, cached with a TTL.

Owns: turning '/'-delimited LIST pages into directories (`DirListing`), the listing cache
(`cachetools.TTLCache`, timer injected so tests control time), and sharing one LIST among
concurrent callers of the same directory.

Rules:
- A listing is authoritative for its TTL: a name absent from it is a cached negative lookup.
- Directory markers (`dir/` objects) make a directory, never a file.
- A name that is both an object and a prefix is shown as the directory (the file is shadowed,
  with a warning), because the directory may hold many files and the object is usually a marker.
- Keys that cannot be paths are skipped (see `keys`).

Reading a directory first asks for its whole subtree, without a delimiter, for at most
`SUBTREE_PAGES` pages: model trees are small, and one request then answers every directory
below (`ls -lR`, deep lookups) instead of one request per directory. If the subtree is larger,
the directories that the pages did cover completely are still cached (keys come in order, so a
directory is complete once a key outside it follows), and the directory itself is listed with a
delimiter as usual. A directory already listed by a lookup (or the mount's warm-up), whose
subdirectories are not cached, still gets its subtree listing when it is read, once per TTL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio
from cachetools import TTLCache

from . import keys
from .store import ObjectStore
from .values import ObjectInfo

log = logging.getLogger(__name__)

# Enough directories for a large model tree; each entry is one directory's listing.
_MAX_CACHED_DIRS = 16_384
# A subtree of up to 5,000 keys is listed in one go: a typical cache_hub with tokenizers and
# voices, at the cost of at most 4 extra requests the first time a huge directory is listed.
SUBTREE_PAGES = 5


@dataclass(frozen=True, slots=True)
class DirListing:
    files: Mapping[str, ObjectInfo]
    dirs: frozenset[str]

    def names(self) -> list[str]:
        return sorted(set(self.files) | self.dirs)


@dataclass(frozen=True, slots=True)
class NamespaceStatistics:
    cached_dirs: int
    list_requests: int
    hits: int


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    result: DirListing | None = None
    error: BaseException | None = None


class Namespace:
    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        *,
        ttl: float,
        limiter: trio.CapacityLimiter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._limiter = limiter
        self._cache: TTLCache[str, DirListing] = TTLCache(
            maxsize=_MAX_CACHED_DIRS, ttl=max(ttl, 1e-9), timer=clock
        )
        self._ttl = ttl
        # Directories whose subtree was listed within the TTL (complete or not): not again.
        self._subtree_listed: TTLCache[str, bool] = TTLCache(
            maxsize=_MAX_CACHED_DIRS, ttl=max(ttl, 1e-9), timer=clock
        )
        self._pending: dict[str, _Pending] = {}
        self._list_requests = 0
        self._hits = 0

    def key_of(self, path: str) -> str:
        return self._prefix + path

    def dir_prefix(self, path: str) -> str:
        return self._prefix + path + "/" if path else self._prefix

    async def listing(self, path: str, *, subtree: bool = False) -> DirListing:
        """The listing of directory `path` (relative to the mount root). With `subtree` (a
        directory being read, as `ls -lR` does), a miss lists the whole subtree if it is small;
        a lookup lists only the directory, which is cheaper for the first byte of a file. A
        cached listing whose subdirectories are not cached (it came from a lookup) counts as a
        miss for `subtree`, once per TTL: `ls -lR` would otherwise list them one by one."""
        if self._ttl > 0:
            cached = self._cache.get(path)
            if cached is not None and not (subtree and self._subtree_wanted(path, cached)):
                self._hits += 1
                return cached
        pending = self._pending.get(path)
        if pending is not None:
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            assert pending.result is not None
            return pending.result
        return await self._fetch(path, subtree)

    def _subtree_wanted(self, path: str, cached: DirListing) -> bool:
        """Whether reading `path` should list its subtree: some subdirectory is neither cached
        nor being listed (by the mount's warm-up, say), and no subtree listing ran yet."""
        if path in self._subtree_listed:
            return False
        children = (keys.join(path, name) for name in cached.dirs)
        return any(child not in self._cache and child not in self._pending for child in children)

    async def _fetch(self, path: str, subtree: bool) -> DirListing:
        pending = self._pending[path] = _Pending()
        try:
            listing = await trio.to_thread.run_sync(
                self._list_dir, path, subtree, limiter=self._limiter
            )
            if subtree and self._ttl > 0:
                self._subtree_listed[path] = True
            pending.result = listing
            return listing
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            del self._pending[path]
            pending.done.set()

    def _list_dir(self, path: str, subtree: bool) -> DirListing:
        """Worker thread: the listing of `path`, caching every directory learnt on the way."""
        complete = self._list_subtree(path) if subtree else {}
        listing = complete.get(path)
        if listing is None:
            listing = self._list_all_pages(self.dir_prefix(path))
            complete[path] = listing
        if self._ttl > 0:
            for directory, found in complete.items():
                self._cache[directory] = found
        return listing

    def _list_subtree(self, path: str) -> dict[str, DirListing]:
        """Listings of the directories in `path`'s subtree that a recursive LIST of at most
        `SUBTREE_PAGES` pages covered completely (all of them if the subtree fit)."""
        prefix = self.dir_prefix(path)
        infos: list[ObjectInfo] = []
        token: str | None = None
        for _ in range(SUBTREE_PAGES):
            self._list_requests += 1
            page = self._store.list_page(prefix, token, recursive=True)
            infos.extend(page.objects)
            token = page.next_token
            if token is None:
                break
        last_key = None if token is None or not infos else infos[-1].key
        return _build_tree(path, prefix, infos, last_key)

    async def create_directory(self, path: str) -> None:
        """Make directory `path` exist for every client: a marker object `path/`."""
        marker = self.dir_prefix(path)
        await trio.to_thread.run_sync(self._store.put_bytes, marker, b"", limiter=self._limiter)

    async def remove_directory(self, path: str) -> None:
        """Remove the marker of directory `path` (there may be none)."""
        marker = self.dir_prefix(path)
        await trio.to_thread.run_sync(self._store.delete, marker, limiter=self._limiter)

    def invalidate(self, path: str) -> None:
        self._cache.pop(path, None)
        self._subtree_listed.pop(path, None)

    def invalidate_all(self) -> None:
        self._cache.clear()
        self._subtree_listed.clear()

    def cached(self, path: str) -> DirListing | None:
        return self._cache.get(path)

    def statistics(self) -> NamespaceStatistics:
        return NamespaceStatistics(len(self._cache), self._list_requests, self._hits)

    def _list_all_pages(self, prefix: str) -> DirListing:
        """A delimited listing of one directory, all pages."""
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        token: str | None = None
        while True:
            self._list_requests += 1
            page = self._store.list_page(prefix, token)
            for info in page.objects:
                self._add_object(prefix, info, files, dirs)
            for sub in page.prefixes:
                name = sub[len(prefix) :].rstrip("/")
                if keys.valid_segment(name):
                    dirs.add(name)
                else:
                    keys.warn_skipped(sub)
            token = page.next_token
            if token is None:
                break
        for name in dirs & files.keys():
            log.warning(
                "%r is both an object and a directory; showing the directory", prefix + name
            )
            del files[name]
        return DirListing(files, frozenset(dirs))

    @staticmethod
    def _add_object(
        prefix: str, info: ObjectInfo, files: dict[str, ObjectInfo], dirs: set[str]
    ) -> None:
        name = info.key[len(prefix) :]
        if name == "":
            return  # the directory's own marker object
        if name.endswith("/"):
            # A marker for a subdirectory that LIST reported as an object (some stores do).
            name = name[:-1]
            if keys.valid_segment(name):
                dirs.add(name)
            return
        if keys.valid_segment(name):
            files[name] = info
        else:
            keys.warn_skipped(info.key)


def _build_tree(
    root: str, prefix: str, infos: list[ObjectInfo], last_key: str | None
) -> dict[str, DirListing]:
    """Directory listings from a recursive listing of `prefix` (the directory `root`). With
    `last_key` (the listing was cut there), only directories known to be complete."""
    files: dict[str, dict[str, ObjectInfo]] = {root: {}}
    dirs: dict[str, set[str]] = {root: set()}
    for info in infos:
        relative = info.key[len(prefix) :]
        marker = relative.endswith("/")
        parts = (relative[:-1] if marker else relative).split("/")
        if relative == "" or not all(keys.valid_segment(part) for part in parts):
            if relative:
                keys.warn_skipped(info.key)
            continue
        directory = root
        for index, part in enumerate(parts):
            is_leaf_file = index == len(parts) - 1 and not marker
            if is_leaf_file:
                files[directory][part] = info
                break
            dirs[directory].add(part)
            directory = keys.join(directory, part)
            files.setdefault(directory, {})
            dirs.setdefault(directory, set())
    result: dict[str, DirListing] = {}
    for directory, names in dirs.items():
        if last_key is not None and _may_continue(directory, root, prefix, last_key):
            continue
        found = {name: info for name, info in files[directory].items() if name not in names}
        result[directory] = DirListing(found, frozenset(names))
    return result


def _may_continue(directory: str, root: str, prefix: str, last_key: str) -> bool:
    """Whether keys of `directory` may come after `last_key` (it holds the cut, or is root)."""
    if directory == root:
        return True
    return last_key.startswith(prefix + directory[len(root) :].lstrip("/") + "/")
