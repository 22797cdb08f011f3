"""`replay` requests: an app's start profile fetched ahead of it, and this start recorded.

`modelfs run` sends `{"cmd": "replay", "name": NAME, "quiet": SECONDS, "max_bytes": N}` just
before it starts the app (`run.replay`). The mount starts recording (step 4) and answers at
once, so the app starts; beside it, in order, it
1. reads the profile `.modelfs/profiles/NAME.json` under its root (`read.profile` has the
   format), through the namespace (one LIST, often answered by the mount's warm-up) and one
   GET; there may be none yet;
2. checks its object versions against the bucket now (the listings of their directories,
   which the app needs anyway): a file whose ETag or size differs, or that is gone, is
   skipped, with one log line; a profile of which no file is left is ignored, with a log line;
3. fetches the ranges left, in the profile's order, at most `max_bytes` (and at most half the
   cache), in the background (`read.ranges.RangeFetch`), in parts of at most `part_size` and
   small enough to keep every one of `transfers` GETs busy;
4. records the app's reads meanwhile (a `read.profile.Recorder` set on the read policy), from
   the first read until `quiet` seconds pass without a read of a block not yet recorded, or
   until `max_bytes` are recorded;
5. saves the recording as profile NAME (one PUT) if there was none, if some of its files had
   changed, or if the app read blocks it did not list; never on a read-only mount.
One recording at a time: a `replay` while one runs fetches, but does not record. On unmount a
recording still running ends and is saved (an app that exits right after its start).
Everything here runs on the trio thread; store calls go to worker threads.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from modelfs.config.units import format_size
from modelfs.core import paths
from modelfs.core.namespace import DirListing, Namespace
from modelfs.daemon.control_server import Send
from modelfs.errors import ModelfsError
from modelfs.objects import ObjectInfo
from modelfs.read.policy import ReadPolicy
from modelfs.read.profile import Profile, ProfileError, Recorder
from modelfs.read.ranges import Range, RangeFetch
from modelfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)

PROFILE_DIR = ".modelfs/profiles"
DEFAULT_QUIET = 10.0  # seconds without a new read that end a start
DEFAULT_MAX_BYTES = 8 << 30
_MAX_DOCUMENT = 64 << 20  # a profile larger than this is not one of ours
_CHECK_WAIT = 10.0  # seconds an ending recording waits for the stored profile's check
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

Block = tuple[str, str, int]  # (key, etag, block index)


@dataclass
class _Recording:
    name: str
    key: str
    recorder: Recorder
    # What the stored profile held, once `checked` is set:
    stored: bool = False  # a profile was found and used
    changed: int = 0  # its files that had changed
    listed: set[Block] = field(default_factory=set)  # its blocks, of the files still the same
    checked: trio.Event = field(default_factory=trio.Event)
    started: float = field(default_factory=time.monotonic)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class Replays:
    """Answers `replay` requests for one mount."""

    def __init__(
        self,
        store: ObjectStore,
        namespace: Namespace,
        reads: ReadPolicy,
        *,
        read_only: bool,
        max_bytes: int,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._reads = reads
        self._read_only = read_only
        self._max_bytes = max_bytes
        self._nursery: trio.Nursery | None = None
        self._recording: _Recording | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the replays' fetches and recordings until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def handle(self, request: dict[str, Any], send: Send) -> dict[str, Any]:
        name = str(request.get("name", ""))
        if not _NAME.fullmatch(name):
            return {"ok": False, "error": f"invalid profile name {name!r}", "bad_input": True}
        try:
            quiet = float(request.get("quiet") or DEFAULT_QUIET)
            limit = min(int(request.get("max_bytes") or DEFAULT_MAX_BYTES), self._max_bytes)
        except (TypeError, ValueError) as exc:
            return {"ok": False, "error": f"invalid replay request: {exc}", "bad_input": True}
        path = f"{PROFILE_DIR}/{name}.json"
        entry = None
        if self._recording is None:  # recorded from now: the app starts once we answer
            recorder = Recorder(self._reads.fetcher.block_size, limit, quiet)
            entry = _Recording(name, self._namespace.key_of(path), recorder)
            self._recording = entry
            self._reads.recorder = recorder
            self._background().start_soon(self._record, entry)
        self._background().start_soon(self._replay, name, path, limit, entry)
        return {"ok": True, "profile": path, "recording": entry is not None}

    async def finish(self) -> None:
        """The mount is going: end a recording still running, and save it."""
        entry = self._recording
        if entry is not None:
            entry.scope.cancel()
            await self._finish(entry)

    # -- the stored profile ----------------------------------------------------------------

    async def _load(self, path: str) -> Profile | None:
        try:
            listing = await self._namespace.listing(paths.parent_of(path))
            info = listing.files.get(paths.name_of(path))
            if info is None:
                log.info("replay: no profile %s yet", path)
                return None
            if info.size > _MAX_DOCUMENT:
                raise ProfileError(f"{format_size(info.size)} is too large for a profile")
            data = await trio.to_thread.run_sync(self._store.get_range, info.id, 0, info.size)
            return Profile.parse(data)
        except ModelfsError as exc:
            log.warning("replay: profile %s ignored: %s", path, exc)
            return None

    async def _check(self, profile: Profile) -> tuple[list[Range], list[str]]:
        """The profile's ranges of files that are still the versions it names, and the keys
        of those that are not."""
        where = [self._namespace.path_of(file.key) for file in profile.files]
        directories = {paths.parent_of(path) for path in where if path is not None}
        listings: dict[str, DirListing] = {}

        async def list_one(directory: str) -> None:
            try:
                listings[directory] = await self._namespace.listing(directory)
            except ModelfsError as exc:
                log.info("replay: cannot list %s: %s", directory or "/", exc)

        async with trio.open_nursery() as nursery:
            for directory in sorted(directories):
                nursery.start_soon(list_one, directory)
        current: list[ObjectInfo | None] = []
        for file, path in zip(profile.files, where, strict=True):
            listing = None if path is None else listings.get(paths.parent_of(path))
            info = (
                None if listing is None or path is None else listing.files.get(paths.name_of(path))
            )
            same = info is not None and (info.etag, info.size) == (file.etag, file.size)
            current.append(info if same else None)
        changed = [f.key for f, info in zip(profile.files, current, strict=True) if info is None]
        ranges: list[Range] = []
        for number, offset, length in profile.reads:
            info = current[number]
            if info is not None:
                ranges.append((info, offset, length))
        return ranges, changed

    # -- fetching ahead, recording ---------------------------------------------------------

    async def _replay(self, name: str, path: str, limit: int, entry: _Recording | None) -> None:
        """Steps 1-3 of the module docstring, beside the app's start."""
        ranges: list[Range] = []
        try:
            stored = await self._load(path)
            if stored is not None:
                ranges, changed = await self._check(stored)
                _log_changed(name, stored, changed)
                if entry is not None:
                    entry.stored, entry.changed = True, len(changed)
                    entry.listed = _blocks(ranges, self._reads.fetcher.block_size)
        finally:
            if entry is not None:
                entry.checked.set()
        ranges = _capped(ranges, limit)
        if not ranges:
            return
        total = format_size(sum(length for _, _, length in ranges))
        log.info("replay %s: fetching %s in %d range(s) ahead of the app", name, total, len(ranges))
        options = self._reads.options
        # Parts small enough for every GET slot to be busy: a profile of a few large ranges
        # would otherwise be a few 8 MiB GETs, each at one connection's rate.
        spread = -(-sum(length for _, _, length in ranges) // options.transfers)
        part_size = max(self._reads.fetcher.block_size, min(options.part_size, spread))
        fetch = RangeFetch(
            self._reads.fetcher, ranges, part_size=part_size, parallel=options.transfers
        )
        started = time.monotonic()
        await fetch.run()
        log.info(
            "replay %s: fetched %s ahead of the app, %s was there already, %d part(s) failed, "
            "in %.1fs",
            name,
            format_size(fetch.fetched),
            format_size(fetch.present),
            fetch.failed,
            time.monotonic() - started,
        )

    async def _record(self, entry: _Recording) -> None:
        with entry.scope:
            await entry.recorder.wait()
        await self._finish(entry)

    async def _finish(self, entry: _Recording) -> None:
        if self._recording is not entry:
            return  # finished already
        self._recording = None
        self._reads.recorder = None
        with trio.move_on_after(_CHECK_WAIT):  # what the profile held, to compare
            await entry.checked.wait()
        recorder = entry.recorder
        took = time.monotonic() - entry.started
        read = recorder.blocks()
        what = f"{format_size(recorder.bytes)} of {len(recorder.files)} file(s) in {took:.1f}s"
        if not read:
            log.info("replay %s: the app read nothing through the mount; nothing saved", entry.name)
        elif entry.stored and not entry.changed and read <= entry.listed:
            log.info("replay %s: the app read %s, all in its profile (kept)", entry.name, what)
        elif self._read_only:
            log.info("replay %s: recorded %s; not saved: the mount is read-only", entry.name, what)
        else:
            await self._save(entry, what)

    async def _save(self, entry: _Recording, what: str) -> None:
        data = entry.recorder.profile(entry.name).dump()
        try:
            info = await trio.to_thread.run_sync(self._store.put_bytes, entry.key, data)
        except ModelfsError as exc:
            log.warning(
                "replay %s: recorded %s; cannot save %s: %s", entry.name, what, entry.key, exc
            )
            return
        self._namespace.uploaded(entry.key, info)
        log.info("replay %s: recorded %s; saved as %s", entry.name, what, entry.key)

    def _background(self) -> trio.Nursery:
        assert self._nursery is not None, "Replays.run() is not running"
        return self._nursery


def _log_changed(name: str, profile: Profile, changed: list[str]) -> None:
    if not changed:
        return
    first = ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
    if len(changed) == len(profile.files):
        log.warning(
            "replay %s: ignored, recorded for other versions of its files (%s)", name, first
        )
        return
    log.warning(
        "replay %s: %d of %d file(s) changed since it was recorded (%s): their ranges skipped",
        name,
        len(changed),
        len(profile.files),
        first,
    )


def _blocks(ranges: Iterable[Range], block_size: int) -> set[Block]:
    return {
        (info.key, info.etag, index)
        for info, offset, length in ranges
        for index in range(offset // block_size, -(-(offset + length) // block_size))
    }


def _capped(ranges: list[Range], limit: int) -> list[Range]:
    """The first ranges, up to `limit` bytes in all."""
    kept: list[Range] = []
    left = limit
    for info, offset, length in ranges:
        if left <= 0:
            break
        kept.append((info, offset, min(length, left)))
        left -= length
    return kept
