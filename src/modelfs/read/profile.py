"""Start profiles: what an app read while it started, in order, so the next start can have it
fetched ahead of the app (`modelfs run`'s replay; the mount's side is `daemon.replay`).

A profile is a small JSON document in the bucket, beside the models, shared by every machine
that starts the app (`<mount root>/.modelfs/profiles/NAME.json`):

    {"version": 1, "name": "index-tts", "recorded": "2026-12-04T15:38:18Z",
     "files": [{"key": "models/gpt.pth", "etag": "9b2c...", "size": 1234567}, ...],
     "reads": [[0, 0, 1048576], [1, 0, 4096], [0, 8388608, 2097152], ...]}

`files` are object versions (full bucket key, ETag, size); `reads` are byte ranges
`[file, offset, length]` in the order the app first read them. The `Recorder` makes them out
of the reads that reach the mount: block-aligned (the cache's unit), each block once (the
first time it is read), and a block that continues the last range extends it.

Invariants
- `Profile.parse` accepts only a document of this shape: every range inside its file, every
  file index in `files`; anything else is `ProfileError` (one line), never a half-read profile.
- A `Recorder` stops recording for good once it holds `limit` bytes; it runs on the trio thread
  (the readers' thread), so it needs no lock.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from modelfs.errors import ModelfsError
from modelfs.objects import ObjectId, ObjectInfo

VERSION = 1
MAX_READS = 1_000_000  # ranges in one profile: far above any app's start, bounded all the same


class ProfileError(ModelfsError):
    """A profile document that is not one (bad JSON, or not of this shape)."""


@dataclass(frozen=True, slots=True)
class ProfileFile:
    key: str
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    recorded: str  # UTC, ISO 8601
    files: tuple[ProfileFile, ...]
    reads: tuple[tuple[int, int, int], ...]  # (file, offset, length), in order

    @property
    def total(self) -> int:
        """Bytes of all its ranges."""
        return sum(length for _, _, length in self.reads)

    def dump(self) -> bytes:
        document = {
            "version": VERSION,
            "name": self.name,
            "recorded": self.recorded,
            "files": [{"key": f.key, "etag": f.etag, "size": f.size} for f in self.files],
            "reads": [list(read) for read in self.reads],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes) -> Profile:
        try:
            document = json.loads(data)
            return cls._checked(document)
        except (ValueError, TypeError, KeyError) as exc:
            raise ProfileError(f"not a start profile: {exc}") from None

    @classmethod
    def _checked(cls, document: dict[str, Any]) -> Profile:
        if document.get("version") != VERSION:
            raise ValueError(f"version {document.get('version')!r}, not {VERSION}")
        files = tuple(
            ProfileFile(_text(f["key"]), _text(f["etag"]), _count(f["size"]))
            for f in document["files"]
        )
        reads = tuple((int(a), int(b), int(c)) for a, b, c in document["reads"])
        if len(reads) > MAX_READS:
            raise ValueError(f"{len(reads)} ranges (at most {MAX_READS})")
        for number, offset, length in reads:
            if not (0 <= number < len(files)) or offset < 0 or length <= 0:
                raise ValueError(f"bad range {[number, offset, length]}")
            if offset + length > files[number].size:
                raise ValueError(f"range {[number, offset, length]} beyond its file")
        return cls(_text(document["name"]), _text(document["recorded"]), files, reads)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _count(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise TypeError(f"{value!r} is not a size")
    return value


@dataclass
class Recorder:
    """The reads of a starting app, as block ranges in the order they were first read.

    Done when `limit` bytes are recorded, or `quiet` seconds passed since the last read of a
    block not recorded yet (counted from the first read: an app that reads nothing yet is
    not quiet, it has not started)."""

    block_size: int
    limit: int
    quiet: float
    files: list[ObjectInfo] = field(default_factory=list)
    runs: list[list[int]] = field(default_factory=list)  # [file, first block, blocks]
    bytes: int = 0
    _numbers: dict[ObjectId, int] = field(default_factory=dict)
    _seen: set[tuple[int, int]] = field(default_factory=set)
    _first: trio.Event = field(default_factory=trio.Event)
    _last_new: float = 0.0
    _full: bool = False

    def note(self, info: ObjectInfo, offset: int, end: int) -> None:
        """A read of [offset, end) of version `info` (end > offset)."""
        if self._full:
            return
        number = self._numbers.setdefault(info.id, len(self.files))
        if number == len(self.files):
            self.files.append(info)
        size, new = self.block_size, False
        for index in range(offset // size, (end - 1) // size + 1):
            if (number, index) in self._seen:
                continue
            new = True
            self._seen.add((number, index))
            self.bytes += min(size, info.size - index * size)
            last = self.runs[-1] if self.runs else None
            if last is not None and last[0] == number and last[1] + last[2] == index:
                last[2] += 1
            else:
                self.runs.append([number, index, 1])
        if new:
            self._first.set()
            self._last_new = trio.current_time()
            self._full = self.bytes >= self.limit

    async def wait(self) -> None:
        """Until the recording is done (quiet, or full)."""
        await self._first.wait()
        while not self._full:
            left = self._last_new + self.quiet - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(left)

    def blocks(self) -> set[tuple[str, str, int]]:
        """(key, etag, block) of every block recorded."""
        return {(self.files[n].key, self.files[n].etag, i) for n, i in self._seen}

    def profile(self, name: str) -> Profile:
        size = self.block_size
        files = tuple(ProfileFile(f.key, f.etag, f.size) for f in self.files)
        reads = tuple(
            (n, first * size, min(count * size, files[n].size - first * size))
            for n, first, count in self.runs
        )
        recorded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return Profile(name, recorded, files, reads)
