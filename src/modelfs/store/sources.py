"""`SourceList`: one object readable from several sources, by priority, with fallback.

A model can be fetched from a CDN, a backup bucket, a site cache or signed links. A
`SourceList` reads an object's bytes from the first source that has it, and when that source
fails part way (an expired link's 403, a 404, 5xx after retries, a connection that stays down,
a stall, or a rate below `min_rate` for `rate_window` seconds) it moves the rest of the range
to the next source, from the next byte: ranges from different sources end up mixed, which is
why a pull checks the whole file's sha256 at the end.

Identity: an object is named by its logical key (the manifest path or the key under the
remote's prefix) and the size it must have (`expect`). A source whose copy has another size
holds another version of the object: it is skipped for that object, never mixed in. Each
source's copy is read with its own ETag (If-Match), found with `head` on first use, or known
beforehand (`seed`: a listing already said). A source with `lookup=False` (a pull with a
manifest, whose sha256 decides in the end) is read without a lookup and without If-Match: one
request less per file, which is most of the cost of a tree of small files.

Thread safety: `iter_range` runs in many worker threads at once; the per-source lookups and
the statistics are guarded by one lock (never held across a request).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from modelfs.errors import InvalidArgument, ModelfsError, NotFound, StaleObject, StoreUnavailable
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)

# The piece read from a source at a time: small enough that a trickling source is noticed
# between pieces, large enough that a healthy stream pays little per piece.
PIECE = 256 << 10


@dataclass(frozen=True)
class Source:
    name: str  # as the user wrote it, for logs and the summary ("backup:bucket/models")
    store: ObjectStore
    key_of: Callable[[str], str]  # logical key -> this store's key
    lookup: bool = True  # find each copy's size and ETag with `head` before reading it


@dataclass(frozen=True, slots=True)
class SourceStatistics:
    bytes_by_source: dict[str, int]
    fallbacks: int


class _Slow(Exception):
    """A source delivered below the rate floor for the whole window."""


class SourceList:
    def __init__(
        self,
        sources: Sequence[Source],
        *,
        min_rate: float = 0.0,  # bytes/s; 0: no floor
        rate_window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sources:
            raise InvalidArgument("no source to read from")
        self.sources = tuple(sources)
        self._min_rate = min_rate
        self._window = rate_window
        self._clock = clock
        self._lock = threading.Lock()
        self._expected: dict[str, int] = {}
        self._copies: dict[tuple[str, str], ObjectInfo | None] = {}  # (source, key) -> copy
        self._failed: dict[str, set[str]] = {}  # key -> sources that failed it
        self._used: dict[str, set[str]] = {}  # key -> sources that delivered bytes of it
        self._bytes = {source.name: 0 for source in self.sources}
        self._fallbacks = 0

    def expect(self, key: str, size: int) -> None:
        """`key` must be `size` bytes in every source used for it."""
        with self._lock:
            self._expected[key] = size

    def seed(self, source_name: str, key: str, copy: ObjectInfo) -> None:
        """`source_name` holds `key` as `copy` (its own key, size and ETag): no lookup."""
        with self._lock:
            self._copies[(source_name, key)] = copy

    def exclude(self, key: str, source_name: str) -> None:
        """Do not read `key` from that source again (its bytes failed a check)."""
        with self._lock:
            self._failed.setdefault(key, set()).add(source_name)

    def used_for(self, key: str) -> set[str]:
        """The sources that delivered bytes of `key` since `forget_use`."""
        with self._lock:
            return set(self._used.get(key, ()))

    def forget_use(self, key: str) -> None:
        with self._lock:
            self._used.pop(key, None)

    def usable(self, key: str) -> list[Source]:
        with self._lock:
            failed = self._failed.get(key, set())
        return [source for source in self.sources if source.name not in failed]

    def statistics(self) -> SourceStatistics:
        with self._lock:
            return SourceStatistics(dict(self._bytes), self._fallbacks)

    # -- reading -------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        """What the first source that has `key` says of it (under the logical key)."""
        error: ModelfsError = NotFound(f"{key}: no source has it")
        for source in self.usable(key):
            try:
                copy = self._copy(source, key)
            except ModelfsError as exc:
                error = exc
                continue
            if copy is not None:
                return ObjectInfo(key, copy.size, copy.etag, copy.mtime)
        raise error

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        """Bytes [start, end) of `obj.key` in pieces of `chunk`, source after source."""
        position = start
        pending = _Pieces(chunk)
        error: ModelfsError | None = None
        for source in self.usable(obj.key):
            try:
                copy = self._copy(source, obj.key)
                if copy is None:
                    continue
                piece_size = min(PIECE, chunk) if self._min_rate else chunk
                for piece in self._read(source, obj.key, copy, position, end, piece_size):
                    position += len(piece)
                    yield from pending.add(piece)
                yield from pending.rest()
                return
            except (ModelfsError, _Slow) as exc:
                error = exc if isinstance(exc, ModelfsError) else StoreUnavailable(str(exc))
                self._fell_back(source, obj.key, position, end, error)
        if error is None:
            error = NotFound(f"{obj.key}: no source holds it at the expected size")
        raise error

    def warm_up(self, key: str) -> None:
        self.sources[0].store.warm_up(self.sources[0].key_of(key))

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        return b"".join(self.iter_range(obj, start, end, max(1, end - start)))

    def _read(
        self, source: Source, key: str, copy: ObjectInfo, start: int, end: int, piece_size: int
    ) -> Iterator[bytes]:
        """`copy`'s bytes [start, end) from `source`, checked against the rate floor."""
        version = ObjectId(copy.key, copy.etag)
        window_start, window_bytes = self._clock(), 0
        for piece in source.store.iter_range(version, start, end, piece_size):
            with self._lock:
                self._bytes[source.name] += len(piece)
                self._used.setdefault(key, set()).add(source.name)
            yield piece
            window_bytes += len(piece)
            elapsed = self._clock() - window_start
            if self._min_rate and elapsed >= self._window:
                if window_bytes / elapsed < self._min_rate:
                    rate = window_bytes / elapsed / 1e6
                    raise _Slow(f"{source.name}: {rate:.2f} MB/s, below the floor")
                window_start, window_bytes = self._clock(), 0

    def _copy(self, source: Source, key: str) -> ObjectInfo | None:
        """`source`'s copy of `key` (None: it holds another version), looked up once."""
        with self._lock:
            if (source.name, key) in self._copies:
                return self._copies[(source.name, key)]
            expected = self._expected.get(key)
        if not source.lookup and expected is not None:
            return ObjectInfo(source.key_of(key), expected, "", 0.0)  # no If-Match
        copy: ObjectInfo | None = source.store.head(source.key_of(key))
        if copy is not None and expected is not None and copy.size != expected:
            log.warning(
                "source %s: %s is %d bytes, not %d: another version, not used for it",
                source.name,
                key,
                copy.size,
                expected,
            )
            copy = None
        with self._lock:
            self._copies[(source.name, key)] = copy
        return copy

    def _fell_back(
        self, source: Source, key: str, position: int, end: int, error: ModelfsError
    ) -> None:
        with self._lock:
            self._fallbacks += 1
            self._failed.setdefault(key, set()).add(source.name)
            if isinstance(error, StaleObject):
                self._copies.pop((source.name, key), None)
        log.warning(
            "source %s failed for %s at byte %d of %d (%s); trying the next source",
            source.name,
            key,
            position,
            end,
            error,
        )


class _Pieces:
    """Pieces joined into chunks of `chunk` bytes (one copy per chunk, none if they fit)."""

    def __init__(self, chunk: int) -> None:
        self._chunk = chunk
        self._pieces: list[bytes] = []
        self._size = 0

    def add(self, piece: bytes) -> Iterator[bytes]:
        if not self._pieces and len(piece) == self._chunk:
            yield piece
            return
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size >= self._chunk:
            joined = b"".join(self._pieces)
            cut = len(joined) - len(joined) % self._chunk
            for offset in range(0, cut, self._chunk):
                yield joined[offset : offset + self._chunk]
            rest = joined[cut:]
            self._pieces, self._size = ([rest] if rest else []), len(rest)

    def rest(self) -> Iterator[bytes]:
        if self._pieces:
            yield b"".join(self._pieces)
        self._pieces, self._size = [], 0
