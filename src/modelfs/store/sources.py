"""`SourceList`: one object readable from several sources, by priority, with fallback.

A model can be fetched from a CDN, a backup bucket, a site cache or signed links. A
`SourceList` reads an object's bytes from the first source that has it, and when that source
fails part way (an expired link's 403, a 404, 5xx after retries, a connection that stays down,
a stall, or a rate below `min_rate` for `rate_window` seconds) it moves the rest of the range
to the next source, from the next byte. Ranges from two sources only ever join for copies
that are the same version (below), and a pull or a mount with a manifest also checks the
whole file's sha256 at the end.

Identity, for a pull (no `primary`): an object is named by its logical key (the manifest path
or the key under the remote's prefix) and the size it must have (`expect`). A source whose
copy has another size holds another version: it is skipped for that object, never mixed in.
Each source's copy is read with its own ETag (If-Match), found with `head` on first use, or
known beforehand (`seed`: a listing already said). A source with `lookup=False` (a pull with a
manifest, whose sha256 decides in the end) is read without a lookup and without If-Match.

Identity, for a mount (`primary` names the source its listings come from): callers name the
primary's version (`ObjectId`: its key and ETag). The primary is read with that ETag, without
a lookup. Another source's copy (`head`, once per version) is that version when its ETag is
the same, or, for a key whose bytes the caller checks against a digest (`verified`: the
manifest's sha256), when it has the manifest's size and is not older than the primary's copy
(a site cache that has not seen the new version yet is older). Otherwise it is skipped for
that version: missing, or another version (a tier that keeps its own ETags, as a SeaweedFS
remote mount does, is only used for files the manifest lists). A copy the source has not
fetched from its own origin yet is waited for, up to `fill_timeout` (`sitefill`), so that a
fleet behind one site cache reads each object from the origin once. A mount forgets failures,
missing copies and other versions after `retry_after` seconds, so a site cache that comes back
or syncs is used again; a source that is unreachable (or slow) is left for every key that long,
one that answers an error (a 5xx after retries) only for that key.

Thread safety: `iter_range` runs in many worker threads at once; the per-source lookups and
the counters are guarded by one lock (never held across a request).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from modelfs.errors import InvalidArgument, ModelfsError, NotFound, StaleObject, StoreUnavailable
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.store import s3errors, sitefill
from modelfs.store.pieces import Pieces
from modelfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)

# The piece read from a source at a time: small enough that a trickling source is noticed
# between pieces, large enough that a healthy stream pays little per piece.
PIECE = 256 << 10
_FILL_POLL = 1.0  # seconds between HEADs of a copy a source is fetching from its origin
COUNTERS = ("bytes", "failures", "missing", "other_version", "slow", "fetch_waits")


@dataclass(frozen=True)
class Source:
    name: str  # as the user wrote it, for logs and the summary ("backup:bucket/models")
    store: ObjectStore
    key_of: Callable[[str], str]  # logical key -> this store's key
    lookup: bool = True  # find each copy's size and ETag with `head` before reading it


@dataclass(frozen=True, slots=True)
class SourceStatistics:
    bytes_by_source: dict[str, int]
    fallbacks: int  # reads moved to the next source part way or at their start
    by_source: dict[str, dict[str, int]]  # name -> COUNTERS


class _Slow(Exception):
    """A source delivered below the rate floor for the whole window."""


class SourceList:
    def __init__(
        self,
        sources: Sequence[Source],
        *,
        min_rate: float = 0.0,  # bytes/s; 0: no floor
        rate_window: float = 10.0,
        primary: str | None = None,  # a mount's: the source whose ETags callers name
        retry_after: float | None = None,  # None: a failed source stays failed for that key
        fill_timeout: float = 0.0,  # a mount's wait for a site's fetch of an object (0: none)
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not sources:
            raise InvalidArgument("no source to read from")
        if primary is not None and primary not in {source.name for source in sources}:
            raise InvalidArgument(f"the primary {primary} is not among the sources")
        self.sources = tuple(sources)
        self.primary = primary
        self._min_rate = min_rate
        self._window = rate_window
        self._forget = math.inf if retry_after is None else retry_after
        self._fill_timeout = fill_timeout
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._expected: dict[str, int] = {}
        self._verified: dict[str, int] = {}  # key -> size, bytes checked against a digest
        self._copies: dict[tuple[str, str], ObjectInfo | None] = {}  # (source, key) -> copy
        # A mount's verdicts: (source, key, primary ETag) -> (copy or None, until when).
        self._verdicts: dict[tuple[str, str, str], tuple[ObjectInfo | None, float]] = {}
        self._lookups: dict[tuple[str, str, str], threading.Event] = {}  # running lookups
        self._failed: dict[str, dict[str, float]] = {}  # key -> source -> failed until
        self._down: dict[str, float] = {}  # source -> left for every key until
        self._used: dict[str, set[str]] = {}  # key -> sources that delivered bytes of it
        self._counts = {source.name: dict.fromkeys(COUNTERS, 0) for source in self.sources}
        self._fallbacks = 0

    def expect(self, key: str, size: int) -> None:
        """`key` must be `size` bytes in every source used for it."""
        with self._lock:
            self._expected[key] = size

    def verified(self, key: str, size: int) -> None:
        """A mount checks `key`'s bytes against a digest for an object of `size` bytes: a copy
        of that size may be read although its ETag is not the primary's (see the docstring)."""
        with self._lock:
            self._verified[key] = size

    def seed(self, source_name: str, key: str, copy: ObjectInfo) -> None:
        """`source_name` holds `key` as `copy` (its own key, size and ETag): no lookup."""
        with self._lock:
            self._copies[(source_name, key)] = copy

    def exclude(self, key: str, source_name: str) -> None:
        """Do not read `key` from that source again (its bytes failed a check)."""
        with self._lock:
            self._failed.setdefault(key, {})[source_name] = math.inf

    def used_for(self, key: str) -> set[str]:
        """The sources that delivered bytes of `key` since `forget_use`."""
        with self._lock:
            return set(self._used.get(key, ()))

    def forget_use(self, key: str) -> None:
        with self._lock:
            self._used.pop(key, None)

    def usable(self, key: str) -> list[Source]:
        """The sources to try for `key`, in order: those not failed for it, by priority, the
        ones left for being down after the others (a last resort, not skipped)."""
        now = self._clock()
        with self._lock:
            failed = self._failed.get(key, {})
            fresh = [s for s in self.sources if failed.get(s.name, -math.inf) <= now]
            down = [s for s in fresh if self._down.get(s.name, -math.inf) > now]
        return [s for s in fresh if s not in down] + down

    def statistics(self) -> SourceStatistics:
        with self._lock:
            counts = {name: dict(values) for name, values in self._counts.items()}
            fallbacks = self._fallbacks
        return SourceStatistics(
            {name: values["bytes"] for name, values in counts.items()}, fallbacks, counts
        )

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
        pending = Pieces(chunk)
        error: ModelfsError | None = None
        for source in self.usable(obj.key):
            try:
                copy = self._copy_for(source, obj)
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
                self._fell_back(source, obj, position, end, error, slow=isinstance(exc, _Slow))
        if error is None:
            error = NotFound(f"{obj.key}: no source holds this version of it")
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
        counts = self._counts[source.name]
        for piece in source.store.iter_range(version, start, end, piece_size):
            with self._lock:
                counts["bytes"] += len(piece)
                self._used.setdefault(key, set()).add(source.name)
            yield piece
            window_bytes += len(piece)
            elapsed = self._clock() - window_start
            if self._min_rate and elapsed >= self._window:
                if window_bytes / elapsed < self._min_rate:
                    rate = window_bytes / elapsed / 1e6
                    raise _Slow(f"{source.name}: {rate:.2f} MB/s, below the floor")
                window_start, window_bytes = self._clock(), 0

    def _copy_for(self, source: Source, obj: ObjectId) -> ObjectInfo | None:
        """The copy of version `obj` to read from `source` (None: it has none to offer)."""
        if self.primary is None:
            return self._copy(source, obj.key)
        if source.name == self.primary:
            return ObjectInfo(source.key_of(obj.key), 0, obj.etag, 0.0)
        return self._alternate(source, obj)

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

    def _alternate(self, source: Source, obj: ObjectId) -> ObjectInfo | None:
        """A mount's: `source`'s copy if it is version `obj` of the primary (see the module
        docstring), remembered; a missing copy or another version for `retry_after`."""
        verdict_key = (source.name, obj.key, obj.etag)
        while True:  # one lookup at a time per verdict: concurrent readers wait for it
            now = self._clock()
            with self._lock:
                known = self._verdicts.get(verdict_key)
                if known is not None and known[1] > now:
                    return known[0]
                running = self._lookups.get(verdict_key)
                if running is None:
                    self._lookups[verdict_key] = threading.Event()
                    break
            running.wait()
        try:
            return self._look_up(source, obj, verdict_key, now)
        finally:
            with self._lock:
                self._lookups.pop(verdict_key).set()

    def _look_up(
        self, source: Source, obj: ObjectId, verdict_key: tuple[str, str, str], now: float
    ) -> ObjectInfo | None:
        counts = self._counts[source.name]
        copy: ObjectInfo | None = None
        try:
            found = source.store.head(source.key_of(obj.key))
        except NotFound:
            why = "missing"
            log.info(
                "source %s does not hold %s: reading it from the next source", source.name, obj.key
            )
        else:
            why = self._disagreement(obj, found)
            if why:
                log.warning("source %s: %s is %s: not used for it", source.name, obj.key, why)
            else:
                copy = self._fetched(source, found)
        with self._lock:
            if copy is None:
                counts["missing" if why == "missing" else "other_version"] += 1
            self._verdicts[verdict_key] = (copy, math.inf if copy else now + self._forget)
        return copy

    def _fetched(self, source: Source, copy: ObjectInfo) -> ObjectInfo:
        """`copy` once `source` holds its bytes (a site cache still fetching it: `sitefill`)."""
        fetched = sitefill.fetched_copy(
            source.store,
            copy,
            name=source.name,
            timeout=self._fill_timeout,
            poll=_FILL_POLL,
            clock=self._clock,
            sleep=self._sleep,
        )
        if fetched is not copy:
            with self._lock:
                self._counts[source.name]["fetch_waits"] += 1
        return fetched

    def _disagreement(self, obj: ObjectId, copy: ObjectInfo) -> str:
        """Why `copy` is not version `obj` ("" if it is)."""
        if copy.etag and copy.etag == obj.etag:
            return ""
        with self._lock:
            size = self._verified.get(obj.key)
        if size is None:
            return f"ETag {copy.etag or '(none)'}, not {obj.etag}, and no manifest lists it"
        if copy.size != size:
            return f"{copy.size} bytes, not the manifest's {size}"
        primary = self._reference(obj)
        if primary is not None and copy.mtime < math.floor(primary.mtime):
            return "older than the primary's copy (not synced yet)"
        return ""

    def _reference(self, obj: ObjectId) -> ObjectInfo | None:
        """The primary's copy of `obj.key` as it is now (None: the primary did not answer)."""
        source = next(s for s in self.sources if s.name == self.primary)
        try:
            return source.store.head(source.key_of(obj.key))
        except ModelfsError as exc:
            log.info("cannot ask %s about %s: %s", source.name, obj.key, exc)
            return None

    def _fell_back(
        self,
        source: Source,
        obj: ObjectId,
        position: int,
        end: int,
        error: ModelfsError,
        *,
        slow: bool = False,
    ) -> None:
        now = self._clock()
        with self._lock:
            self._fallbacks += 1
            self._counts[source.name]["slow" if slow else "failures"] += 1
            stale = isinstance(error, StaleObject)
            if not (stale and self.primary is not None):  # a mount: the version changed,
                # not the source; its next read looks the copy up again
                self._failed.setdefault(obj.key, {})[source.name] = now + self._forget
            # Unreachable, stalled or slow: left for every key; an error answered (a 5xx for
            # this object): for this key alone.
            unreachable = isinstance(error, StoreUnavailable) and not s3errors.answered(error)
            if unreachable and self.primary is not None:
                self._down[source.name] = now + self._forget
            if stale:
                self._copies.pop((source.name, obj.key), None)
                self._verdicts.pop((source.name, obj.key, obj.etag), None)
        log.warning(
            "source %s failed for %s at byte %d of %d (%s); trying the next source",
            source.name,
            obj.key,
            position,
            end,
            error,
        )
