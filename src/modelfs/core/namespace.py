"""Directory listings of the bucket under the mount prefix, cached with a TTL.

Owns: turning LIST pages into directories (`DirListing`, one function for delimited and
recursive listings alike), the listing cache (`cachetools.TTLCache`, timer injected so tests
control time), and sharing one LIST among concurrent callers of the same directory. The cache
is written on the trio thread only (cachetools caches are not thread safe): worker threads
send the LIST requests and return what they found. Write-back tells it when a key it uploaded
makes a cached listing stale (`uploaded`, `conflicted`); a LIST in flight at that moment may
have missed the change, so it is sent again, and never cached if overtaken twice.

Rules:
- A listing is authoritative for its TTL: a name absent from it is a cached negative lookup.
- Directory markers (`dir/` objects) make a directory, never a file.
- A name that is both an object and a prefix is shown as the directory (the file is shadowed,
  with a warning), because the directory may hold many files and the object is usually a marker.
- Keys that cannot be paths are skipped (see `paths`).
- When the store cannot be reached (`StoreUnavailable`: connection refused or reset,
  timeouts, 5xx after retries, or the store known to be offline), a directory listed before
  is served from its last known listing, however old; one never listed fails as the store
  did. Refusals (403) and missing buckets are never answered this way. The last known
  listings are kept for as many directories as the cache holds (least recently listed go
  first), survive `invalidate`, and can be saved and restored (`known`, `restore`: the
  mount's metadata snapshot).

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
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import trio
from cachetools import TTLCache

from modelfs.core import paths
from modelfs.errors import StoreUnavailable
from modelfs.objects import ObjectInfo
from modelfs.store.protocol import ObjectStore

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


@dataclass(frozen=True, slots=True)
class NamespaceStatistics:
    cached_dirs: int
    list_requests: int
    hits: int
    known_dirs: int  # last known listings, served while the store cannot be reached
    served_stale: int  # listings served that way


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    result: DirListing | None = None
    error: BaseException | None = None
    overtaken: bool = False  # invalidated while its LIST was in flight


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
        self._known: OrderedDict[str, DirListing] = OrderedDict()  # least recently listed first
        self.generation = 0  # counts changes of the last known listings
        self._list_requests = 0
        self._hits = 0
        self._served_stale = 0

    def key_of(self, path: str) -> str:
        return self._prefix + path

    def path_of(self, key: str) -> str | None:
        """The path of `key` in the mount, or None if it is not under the mount's prefix."""
        return key[len(self._prefix) :] if key.startswith(self._prefix) else None

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
        children = (paths.join(path, name) for name in cached.dirs)
        return any(child not in self._cache and child not in self._pending for child in children)

    async def _fetch(self, path: str, subtree: bool) -> DirListing:
        pending = self._pending[path] = _Pending()
        try:
            for _ in range(2):  # again if a change overtook the LIST: it may have missed it
                pending.overtaken = False
                try:
                    found, requests = await trio.to_thread.run_sync(
                        self._list_dir, path, subtree, limiter=self._limiter
                    )
                except StoreUnavailable:
                    known = self._known.get(path)
                    if known is None:
                        raise
                    self._served_stale += 1
                    pending.result = known
                    return known
                self._list_requests += requests
                if not pending.overtaken:
                    break
            if self._ttl > 0 and not pending.overtaken:
                for directory, listing in found.items():
                    self._cache[directory] = listing
                if subtree:
                    self._subtree_listed[path] = True
            self._remember(found.items())
            pending.result = found[path]
            return found[path]
        except BaseException as exc:
            pending.error = exc
            raise
        finally:
            del self._pending[path]
            pending.done.set()

    def _list_dir(self, path: str, subtree: bool) -> tuple[dict[str, DirListing], int]:
        """Worker thread: the listing of `path`, with every other directory the requests
        covered completely, and how many requests it took. Touches no shared state."""
        prefix = self.dir_prefix(path)
        found: dict[str, DirListing] = {}
        requests = 0
        if subtree:
            infos, cut, requests = self._list_pages(prefix, recursive=True, limit=SUBTREE_PAGES)
            found = _build_tree(path, prefix, infos, [], cut)
        if path not in found:
            infos, prefixes, pages = self._list_delimited(prefix)
            requests += pages
            found[path] = _build_tree(path, prefix, infos, prefixes, None)[path]
        return found, requests

    def _list_pages(
        self, prefix: str, *, recursive: bool, limit: int
    ) -> tuple[list[ObjectInfo], str | None, int]:
        """Up to `limit` pages of a recursive listing: (objects, the last key if it was cut
        short, pages read)."""
        infos: list[ObjectInfo] = []
        token: str | None = None
        pages = 0
        while pages < limit:
            pages += 1
            page = self._store.list_page(prefix, token, recursive=recursive)
            infos.extend(page.objects)
            token = page.next_token
            if token is None:
                break
        cut = None if token is None or not infos else infos[-1].key
        return infos, cut, pages

    def _list_delimited(self, prefix: str) -> tuple[list[ObjectInfo], list[str], int]:
        """Every page of a delimited listing: (objects, common prefixes, pages read)."""
        infos: list[ObjectInfo] = []
        prefixes: list[str] = []
        token: str | None = None
        pages = 0
        while True:
            pages += 1
            page = self._store.list_page(prefix, token)
            infos.extend(page.objects)
            prefixes.extend(page.prefixes)
            token = page.next_token
            if token is None:
                return infos, prefixes, pages

    def _remember(self, listings: Iterable[tuple[str, DirListing]]) -> None:
        for directory, listing in listings:
            self._known[directory] = listing
            self._known.move_to_end(directory)
        while len(self._known) > _MAX_CACHED_DIRS:
            self._known.popitem(last=False)
        self.generation += 1

    def known(self) -> list[tuple[str, DirListing]]:
        """The last known listing of every directory remembered, most recently listed last."""
        return list(self._known.items())

    def restore(self, listings: Iterable[tuple[str, DirListing]]) -> None:
        """Take `listings` (a saved `known()`) as the last known ones: a mount that starts
        without its store serves them. Not a change: nothing new to save."""
        generation = self.generation
        self._remember(listings)
        self.generation = generation

    def invalidate(self, path: str) -> None:
        """Forget the listing of `path`, and of every LIST in flight that covers it."""
        self._cache.pop(path, None)
        self._subtree_listed.pop(path, None)
        for listed, pending in self._pending.items():
            if listed == path or not listed or path.startswith(listed + "/"):
                pending.overtaken = True

    # -- what write-back tells us (a `WriteBackListener`) --------------------------------------

    def uploaded(self, key: str, info: ObjectInfo) -> None:
        """`key` landed in the bucket: the cached listing of its directory is out of date."""
        self._invalidate_key(key)

    def conflicted(self, key: str, conflict_key: str, remote: ObjectInfo) -> None:
        self._invalidate_key(key)
        self._invalidate_key(conflict_key)

    def _invalidate_key(self, key: str) -> None:
        path = self.path_of(key)
        if path is not None:
            self.invalidate(paths.parent_of(path))

    def statistics(self) -> NamespaceStatistics:
        return NamespaceStatistics(
            len(self._cache), self._list_requests, self._hits, len(self._known), self._served_stale
        )


def _build_tree(
    root: str,
    prefix: str,
    infos: list[ObjectInfo],
    prefixes: list[str],
    last_key: str | None,
) -> dict[str, DirListing]:
    """Directory listings of `root` (listed as `prefix`) and below, from a listing's objects
    and common prefixes. With `last_key` (a recursive listing cut there), only the directories
    known to be complete. A name that is both a file and a directory shows as the directory,
    with a warning; keys that cannot be paths are skipped (see `paths`)."""
    files: dict[str, dict[str, ObjectInfo]] = {root: {}}
    dirs: dict[str, set[str]] = {root: set()}
    for sub in prefixes:
        name = sub[len(prefix) :].rstrip("/")
        if paths.valid_segment(name):
            dirs[root].add(name)
        else:
            paths.warn_skipped(sub)
    for info in infos:
        relative = info.key[len(prefix) :]
        marker = relative.endswith("/")
        parts = (relative[:-1] if marker else relative).split("/")
        if relative == "" or not all(paths.valid_segment(part) for part in parts):
            if relative:
                paths.warn_skipped(info.key)
            continue
        directory = root
        for index, part in enumerate(parts):
            if index == len(parts) - 1 and not marker:
                files[directory][part] = info
                break
            dirs[directory].add(part)
            directory = paths.join(directory, part)
            files.setdefault(directory, {})
            dirs.setdefault(directory, set())
    result: dict[str, DirListing] = {}
    for directory, names in dirs.items():
        if last_key is not None and _may_continue(directory, root, prefix, last_key):
            continue
        for name in names & files[directory].keys():
            log.warning(
                "%r is both an object and a directory; showing the directory",
                prefix + paths.join(directory[len(root) :].lstrip("/"), name),
            )
        found = {name: info for name, info in files[directory].items() if name not in names}
        result[directory] = DirListing(found, frozenset(names))
    return result


def _may_continue(directory: str, root: str, prefix: str, last_key: str) -> bool:
    """Whether keys of `directory` may come after `last_key` (it holds the cut, or is root)."""
    if directory == root:
        return True
    return last_key.startswith(prefix + directory[len(root) :].lstrip("/") + "/")
