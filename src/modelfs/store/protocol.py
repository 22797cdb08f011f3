"""The `ObjectStore` protocol: everything modelfs needs from an object store.

Methods are synchronous and may block (boto3 is synchronous); the trio side calls them through
`trio.to_thread.run_sync` with a `CapacityLimiter`, never from the event loop directly.

Contract (checked by the same tests against `MemoryStore` and the real S3 server):
- keys are full keys in the bucket (the mount prefix is applied by the caller);
- `get_range` and `iter_range` send If-Match with `obj.etag`: a changed object raises
  `StaleObject`, a missing one `NotFound`; they never return bytes of another version;
- `end` is exclusive and clamped to the object size by the caller;
- `put_bytes` and `complete_multipart` with an `Expect` write only if `key` holds what it
  expects (that ETag, or no object), checked by the store in the same request, and raise
  `StaleObject` otherwise; a store that cannot check (it refuses conditional writes) writes
  without the check, as it would without an `Expect`;
- errors are `ModelfsError` subclasses (see `errors`), with the original exception as `__cause__`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from modelfs.objects import ListPage, ObjectId, ObjectInfo


@dataclass(frozen=True, slots=True)
class UploadedPart:
    number: int
    etag: str


@dataclass(frozen=True, slots=True)
class Expect:
    """What a write expects `key` to hold when it lands: the object with ETag `etag`, or no
    object at all (`etag` None). S3's If-Match / If-None-Match: * on PUT and on completion."""

    etag: str | None


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """A multipart upload the store still holds open (found when recovering after a crash)."""

    key: str
    upload_id: str


class RangeReads(Protocol):
    """The reads a block fetcher needs (a store, or a `SourceList` of several)."""

    def warm_up(self, key: str) -> None:
        """GET `key`, which should not exist, ignoring the answer and any error: opens a pooled
        connection and pays the client's first-request setup before a reader needs it."""

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        """Bytes [start, end) of `obj` as consecutive chunks of `chunk` bytes (last may be short),
        streamed from one GET so the caller can use each chunk as soon as it arrives."""


class ObjectStore(RangeReads, Protocol):
    def check_bucket(self) -> None:
        """Raise BucketNotFound / AccessDenied / StoreUnavailable unless the bucket is usable."""

    def head(self, key: str) -> ObjectInfo:
        """Metadata of `key`; NotFound if there is no such object."""

    def list_page(
        self,
        prefix: str,
        token: str | None = None,
        max_keys: int = 1000,
        *,
        recursive: bool = False,
    ) -> ListPage:
        """One page of keys under `prefix`, delimited by '/' (no prefixes, every key below
        `prefix` at any depth, in key order, if `recursive`)."""

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        """Bytes [start, end) of exactly the version `obj`."""

    def put_bytes(self, key: str, data: bytes, expect: Expect | None = None) -> ObjectInfo:
        """Create or replace `key` with `data` in one request (if it holds `expect`)."""

    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    def copy(self, source_key: str, dest_key: str) -> ObjectInfo:
        """Server-side copy (used by rename)."""

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload and return its id."""

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart: ...

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[UploadedPart], expect: Expect | None = None
    ) -> ObjectInfo: ...

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def list_multipart(self, prefix: str) -> list[PendingUpload]: ...
