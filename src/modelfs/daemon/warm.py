"""`modelfs warm` inside the mount: files fetched into the block cache, pinned or unpinned.

(Not the mount-time warm-up of connections and listings: that is `warmup`.)

The command sends `{"cmd": "warm", "paths": [...], "pin": bool, "unpin": bool}` over the
control socket, with paths relative to the mount root; the mount does the work with its own
engine and answers when done. Order of a warm:
1. resolve the paths through the namespace: a file is itself, a directory all files below it;
   a path that is not in the bucket fails the request before anything is fetched;
2. with `pin`, pin every file's version (`DiskBlockCache.pin`, under the cache's ledger) before
   fetching, so no block fetched is evicted before it is pinned; pins that would not fit in
   `--cache-max-size` fail the request, one line, nothing pinned and nothing fetched;
3. fetch each file whole (`ReadPolicy.fetch_whole`: the whole-object fetch a model file gets
   on open, with the prefetch limiter, so the apps' own reads go first), `PARALLEL_FILES` at a
   time; a file already cached costs no request;
4. answer what is in the cache now, and what failed.
Meanwhile a progress line goes out every `PROGRESS_INTERVAL`: bytes of the files present so
far, of the total. A client that goes away (Ctrl-C) ends the warm: its next progress line
cannot be sent, and the fetches are cancelled. `unpin` releases pins and fetches nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from modelfs.cache.disk import DiskBlockCache
from modelfs.cache.pins import PinsTooLarge
from modelfs.config.units import format_size
from modelfs.core import paths
from modelfs.core.namespace import Namespace
from modelfs.daemon.control_server import Send
from modelfs.errors import ModelfsError, NotFound, UsageError
from modelfs.objects import ObjectInfo
from modelfs.read.policy import ReadPolicy
from modelfs.read.whole import WholeObjectFetch

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5  # seconds between two progress lines (and the client's heartbeat)
PARALLEL_FILES = 8  # files fetched at once; the prefetch limiter bounds the GETs


@dataclass
class _Progress:
    total: int = 0
    files: int = 0
    done_files: int = 0
    finished: int = 0  # bytes of files done
    running: list[WholeObjectFetch] = field(default_factory=list)
    gone: bool = False  # the command went away: the warm stops

    def line(self) -> dict[str, Any]:
        done = self.finished + sum(fetch.fetched for fetch in self.running)
        return {
            "progress": {
                "bytes": min(done, self.total),
                "total": self.total,
                "files": self.done_files,
                "of": self.files,
            }
        }


class Warmer:
    """Answers `warm` requests for one mount."""

    def __init__(self, namespace: Namespace, reads: ReadPolicy, cache: DiskBlockCache) -> None:
        self._namespace = namespace
        self._reads = reads
        self._cache = cache

    async def handle(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        wanted = [str(path).strip("/") for path in request.get("paths", [])]
        try:
            if request.get("unpin"):
                return await self._unpin(wanted)
            return await self._warm(wanted, pin=bool(request.get("pin")), send=send)
        except ModelfsError as exc:
            return {"ok": False, "error": str(exc), "bad_input": exc.bad_input}

    async def _unpin(self, wanted: list[str]) -> dict[str, Any]:
        keys = [self._namespace.key_of(path) for path in wanted if path]
        prefixes = [self._namespace.dir_prefix(path) for path in wanted]
        removed = await trio.to_thread.run_sync(self._cache.unpin, keys, prefixes)
        log.info("warm: unpinned %d file(s), %s", len(removed), _paths(wanted))
        return {"ok": True, "unpinned": len(removed), "bytes": sum(p.size for p in removed)}

    async def _warm(self, wanted: list[str], *, pin: bool, send: Send) -> dict[str, Any]:
        progress = _Progress()
        failed: ModelfsError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_report, progress, send, nursery.cancel_scope)
            try:
                files = await self._resolve(wanted)
                if pin:
                    await self._pin(files)
                progress.files, progress.total = len(files), sum(info.size for info in files)
                errors = await self._fetch(files, progress)
            except ModelfsError as exc:  # one line for the command, not a nursery's group
                failed = exc
            finally:
                nursery.cancel_scope.cancel()
        if progress.gone:
            log.info("warm: stopped, the command went away (%s)", _paths(wanted))
            raise trio.BrokenResourceError("the command went away")
        if failed is not None:
            raise failed
        await send(progress.line())  # the last one: all done
        cached = sum(self._cached_bytes(info) for info in files)
        log.info(
            "warm: %d file(s), %s, %s in the cache%s",
            len(files),
            format_size(progress.total),
            format_size(cached),
            " (pinned)" if pin else "",
        )
        return {
            "ok": True,
            "files": len(files),
            "bytes": progress.total,
            "cached": cached,
            "pinned": pin,
            "errors": errors,
            "cache_max": self._cache.max_bytes,
        }

    async def _resolve(self, wanted: Iterable[str]) -> list[ObjectInfo]:
        found: dict[str, ObjectInfo] = {}
        for path in wanted:
            if path:
                listing = await self._namespace.listing(paths.parent_of(path))
                info = listing.files.get(paths.name_of(path))
                if info is not None:
                    found[info.key] = info
                    continue
                if paths.name_of(path) not in listing.dirs:
                    raise NotFound(f"{path}: not in the bucket (only its files can be warmed)")
            await self._walk(path, found)
        return sorted(found.values(), key=lambda info: info.key)

    async def _walk(self, directory: str, found: dict[str, ObjectInfo]) -> None:
        listing = await self._namespace.listing(directory, subtree=True)
        for info in listing.files.values():
            found[info.key] = info
        for name in sorted(listing.dirs):
            await self._walk(paths.join(directory, name), found)

    async def _pin(self, files: list[ObjectInfo]) -> None:
        versions = [(info.id, info.size) for info in files]
        try:
            await trio.to_thread.run_sync(self._cache.pin, versions)
        except PinsTooLarge as exc:
            raise UsageError(
                f"cannot pin {format_size(exc.adding)} more: pinned files would take "
                f"{format_size(exc.total)} of the {format_size(exc.max_bytes)} cache "
                "(--cache-max-size); unpin some (modelfs warm --unpin PATH) or raise it"
            ) from exc

    async def _fetch(self, files: list[ObjectInfo], progress: _Progress) -> list[str]:
        errors: list[str] = []
        slots = trio.Semaphore(PARALLEL_FILES)

        async def one(info: ObjectInfo) -> None:
            async with slots:
                fetch = await self._reads.fetch_whole(info, progress.running.append)
                progress.running.remove(fetch)
                progress.finished += info.size
                progress.done_files += 1
                if fetch.error is not None:
                    errors.append(f"{info.key}: {fetch.error}")

        async with trio.open_nursery() as nursery:
            for info in files:
                nursery.start_soon(one, info)
        return errors

    def _cached_bytes(self, info: ObjectInfo) -> int:
        size, block = info.size, self._cache.block_size
        count = -(-size // block)
        return sum(
            min(block, size - index * block)
            for index in range(count)
            if self._cache.contains(info.id, index)
        )


async def _report(progress: _Progress, send: Send, warm: trio.CancelScope) -> None:
    """A progress line every interval, until cancelled; if nobody listens any more (Ctrl-C),
    the warm is cancelled."""
    while True:
        try:
            await send(progress.line())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            progress.gone = True
            warm.cancel()
            return
        await trio.sleep(PROGRESS_INTERVAL)


def _paths(wanted: list[str]) -> str:
    return ", ".join(path or "/" for path in wanted[:3]) + (" ..." if len(wanted) > 3 else "")
