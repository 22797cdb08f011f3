"""`MemoryStore`: an in-memory `ObjectStore` for unit tests of logic above the store.

It behaves like S3 as the contract tests pin it down (same errors, same If-Match rule, same
listing order and paging, same multipart rules), and adds what a test needs to look inside:

- `ops`: how many requests of each kind were made (`ops["get_range"]`), the in-memory
  equivalent of counting GETs at the server;
- `replace_behind_back(key, data)` / `remove_behind_back(key)`: another client changed the
  bucket, without counting as an operation of the code under test;
- `fail_next(op, exc, times)`: the next `times` calls of `op` raise `exc`; the op
  "iter_range.chunk" fails in the middle of a stream, like a connection reset;
- `delay`: a callable run with the op name before each operation (outside the lock), e.g.
  to block a fetch on an Event while a test looks at concurrent callers;
- `conditional_writes = False`: a store without conditional writes (an `Expect` is ignored).

Op names are the method names. Calls that would send nothing to S3 (an empty range) are not
counted. One lock guards all state; data is snapshotted under it, and chunks of `iter_range`
are yielded outside it, so a slow consumer never blocks other threads.

ETags are md5 hex digests of the content, as S3 computes them for single-part uploads; a
completed multipart upload gets S3's "md5-of-part-md5s-N" form.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from modelfs.errors import BucketNotFound, InvalidArgument, NotFound, StaleObject
from modelfs.objects import ListPage, ObjectId, ObjectInfo
from modelfs.store import etag
from modelfs.store.etag import md5_etag
from modelfs.store.protocol import Expect, PendingUpload, UploadedPart

# S3's rule: every part but the last of a multipart upload is at least 5 MiB.
MIN_PART_SIZE = 5 << 20


@dataclass(slots=True)
class _Stored:
    data: bytes
    etag: str
    mtime: float


@dataclass(slots=True)
class _Upload:
    key: str
    parts: dict[int, bytes] = field(default_factory=dict)


def multipart_etag(parts: list[bytes]) -> str:
    """The ETag of a multipart upload of these part bodies (the rule is `store.etag`'s)."""
    digests = [hashlib.md5(part, usedforsecurity=False).digest() for part in parts]
    return etag.multipart_etag(digests)


class MemoryStore:
    """An in-memory bucket (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        delay: Callable[[str], None] | None = None,
        min_part_size: int = MIN_PART_SIZE,
        name: str = "memory",
    ) -> None:
        self.ops: collections.Counter[str] = collections.Counter()
        self.delay = delay
        self.bucket_exists = True
        # False: like a store that refuses If-Match / If-None-Match on writes (writes unchecked).
        self.conditional_writes = True
        self.name = name
        self._clock = clock
        self._min_part_size = min_part_size
        self._lock = threading.Lock()
        self._objects: dict[str, _Stored] = {}
        self._uploads: dict[str, _Upload] = {}
        self._faults: dict[str, collections.deque[BaseException]] = collections.defaultdict(
            collections.deque
        )
        self._upload_ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r}, {len(self._objects)} objects)"

    # -- test helpers (not operations: never counted, never faulted) --------------------------

    def fail_next(self, op: str, exc: BaseException, times: int = 1) -> None:
        """The next `times` calls of `op` raise `exc` (before touching any state)."""
        with self._lock:
            self._faults[op].extend([exc] * times)

    def replace_behind_back(self, key: str, data: bytes) -> ObjectInfo:
        """Another client writes `key`: its ETag changes (unless the bytes are the same)."""
        with self._lock:
            return self._store_locked(key, data, md5_etag(data))

    def remove_behind_back(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def data_of(self, key: str) -> bytes:
        """Current content of `key` (KeyError if absent)."""
        with self._lock:
            return self._objects[key].data

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)

    # -- the ObjectStore protocol ------------------------------------------------------------

    def check_bucket(self) -> None:
        self._begin("check_bucket")
        if not self.bucket_exists:
            raise BucketNotFound(f"bucket {self.name!r} does not exist")

    def head(self, key: str) -> ObjectInfo:
        self._begin("head")
        with self._lock:
            return self._info_locked(key, self._get_locked(key))

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
        self._begin("list_page")
        with self._lock:
            if recursive:
                return self._recursive_page_locked(prefix, token, max_keys)
            entries = self._delimited_entries_locked(prefix)
            start = bisect.bisect_right(entries, token) if token is not None else 0
            page = entries[start : start + max_keys]
            objects = tuple(
                self._info_locked(name, self._objects[name])
                for name in page
                if name in self._objects and not _is_common_prefix(name, prefix)
            )
        prefixes = tuple(name for name in page if _is_common_prefix(name, prefix))
        more = start + max_keys < len(entries)
        return ListPage(objects=objects, prefixes=prefixes, next_token=page[-1] if more else None)

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        self._begin("get_range")
        with self._lock:
            return self._matching_data_locked(obj, start)[start:end]

    def warm_up(self, key: str) -> None:
        self._begin("warm_up")

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        if chunk <= 0:
            raise InvalidArgument(f"iter_range chunk must be positive, not {chunk}")
        if end <= start:
            return
        self._begin("iter_range")
        with self._lock:
            data = self._matching_data_locked(obj, start)
        view = memoryview(data)[start:end]
        for offset in range(0, len(view), chunk):
            self._begin("iter_range.chunk", count=False)
            yield bytes(view[offset : offset + chunk])

    def put_bytes(self, key: str, data: bytes, expect: Expect | None = None) -> ObjectInfo:
        self._begin("put_bytes")
        with self._lock:
            self._check_expected_locked(key, expect)
            return self._store_locked(key, bytes(data), md5_etag(data))

    def delete(self, key: str) -> None:
        self._begin("delete")
        with self._lock:
            self._objects.pop(key, None)

    def copy(self, source_key: str, dest_key: str) -> ObjectInfo:
        self._begin("copy")
        with self._lock:
            data = self._get_locked(source_key).data
            return self._store_locked(dest_key, data, md5_etag(data))

    def create_multipart(self, key: str) -> str:
        self._begin("create_multipart")
        with self._lock:
            upload_id = f"upload-{next(self._upload_ids)}"
            self._uploads[upload_id] = _Upload(key)
        return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        if not 1 <= number <= 10000:  # S3's part number range
            raise InvalidArgument(f"part number {number} outside 1-10000")
        self._begin("upload_part")
        with self._lock:
            self._upload_locked(key, upload_id).parts[number] = bytes(data)
        return UploadedPart(number, md5_etag(data))

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[UploadedPart], expect: Expect | None = None
    ) -> ObjectInfo:
        self._begin("complete_multipart")
        with self._lock:
            upload = self._upload_locked(key, upload_id)
            chosen = self._chosen_parts_locked(upload, parts)
            self._check_expected_locked(key, expect)
            del self._uploads[upload_id]
            return self._store_locked(key, b"".join(chosen), multipart_etag(chosen))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._begin("abort_multipart")
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is not None and upload.key == key:
                del self._uploads[upload_id]

    def list_multipart(self, prefix: str) -> list[PendingUpload]:
        self._begin("list_multipart")
        with self._lock:
            found = [
                PendingUpload(key=upload.key, upload_id=upload_id)
                for upload_id, upload in self._uploads.items()
                if upload.key.startswith(prefix)
            ]
        return sorted(found, key=lambda pending: (pending.key, pending.upload_id))

    # -- internals ---------------------------------------------------------------------------

    def _begin(self, op: str, *, count: bool = True) -> None:
        """Count `op`, run the delay hook, and raise an injected fault if one is due."""
        with self._lock:
            if count:
                self.ops[op] += 1
            faults = self._faults.get(op)
            fault = faults.popleft() if faults else None
        if self.delay is not None:
            self.delay(op)
        if fault is not None:
            raise fault

    def _get_locked(self, key: str) -> _Stored:
        if not self.bucket_exists:
            raise BucketNotFound(f"bucket {self.name!r} does not exist")
        stored = self._objects.get(key)
        if stored is None:
            raise NotFound(f"{self.name}/{key} not found")
        return stored

    def _check_expected_locked(self, key: str, expect: Expect | None) -> None:
        """S3's conditional write: StaleObject unless `key` holds what `expect` says."""
        if expect is None or not self.conditional_writes:
            return
        stored = self._objects.get(key)
        if expect.etag is None and stored is not None:
            raise StaleObject(f"{self.name}/{key} exists (expected no object)")
        if expect.etag is not None and (stored is None or stored.etag != expect.etag):
            found = "no object" if stored is None else f"ETag {stored.etag}"
            raise StaleObject(f"{self.name}/{key} holds {found} (expected {expect.etag})")

    def _matching_data_locked(self, obj: ObjectId, start: int) -> bytes:
        """The data of `obj` if its ETag still matches (If-Match); S3's 416 past the end."""
        stored = self._get_locked(obj.key)
        if stored.etag != obj.etag:
            raise StaleObject(f"{self.name}/{obj.key} changed since it was opened")
        if start >= len(stored.data):
            raise InvalidArgument(
                f"range start {start} beyond the end of {obj.key} ({len(stored.data)} bytes)"
            )
        return stored.data

    def _info_locked(self, key: str, stored: _Stored) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(stored.data), etag=stored.etag, mtime=stored.mtime)

    def _store_locked(self, key: str, data: bytes, etag: str) -> ObjectInfo:
        if not self.bucket_exists:
            raise BucketNotFound(f"bucket {self.name!r} does not exist")
        stored = _Stored(data=data, etag=etag, mtime=self._clock())
        self._objects[key] = stored
        return self._info_locked(key, stored)

    def _recursive_page_locked(self, prefix: str, token: str | None, max_keys: int) -> ListPage:
        if not self.bucket_exists:
            raise BucketNotFound(f"bucket {self.name!r} does not exist")
        keys = sorted(key for key in self._objects if key.startswith(prefix))
        start = bisect.bisect_right(keys, token) if token is not None else 0
        page = keys[start : start + max_keys]
        objects = tuple(self._info_locked(key, self._objects[key]) for key in page)
        more = start + max_keys < len(keys)
        return ListPage(objects=objects, prefixes=(), next_token=page[-1] if more else None)

    def _delimited_entries_locked(self, prefix: str) -> list[str]:
        """Sorted keys directly under `prefix` plus its common prefixes (ending '/'), like a
        ListObjectsV2 with Delimiter='/'. Both count against max_keys, as in S3."""
        if not self.bucket_exists:
            raise BucketNotFound(f"bucket {self.name!r} does not exist")
        entries: set[str] = set()
        for key in self._objects:
            if not key.startswith(prefix):
                continue
            slash = key.find("/", len(prefix))
            entries.add(key if slash < 0 else key[: slash + 1])
        return sorted(entries)

    def _upload_locked(self, key: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise NotFound(f"multipart upload {upload_id} of {self.name}/{key} does not exist")
        return upload

    def _chosen_parts_locked(self, upload: _Upload, parts: list[UploadedPart]) -> list[bytes]:
        """Validate the completion list like S3: ascending, known, matching, big enough."""
        if not parts:
            raise InvalidArgument(f"multipart upload of {upload.key} completed with no parts")
        numbers = [part.number for part in parts]
        if numbers != sorted(set(numbers)):
            raise InvalidArgument(
                f"parts of {upload.key} not in ascending order (InvalidPartOrder)"
            )
        chosen = []
        for part in parts:
            data = upload.parts.get(part.number)
            if data is None or md5_etag(data) != part.etag:
                raise InvalidArgument(f"part {part.number} of {upload.key} unknown (InvalidPart)")
            chosen.append(data)
        if any(len(data) < self._min_part_size for data in chosen[:-1]):
            raise InvalidArgument(f"a part of {upload.key} is too small (EntityTooSmall)")
        return chosen


def _is_common_prefix(entry: str, prefix: str) -> bool:
    return entry.endswith("/") and len(entry) > len(prefix)
