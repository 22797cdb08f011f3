"""`GuardedStore`: an `ObjectStore` that reports every outcome to a `StoreHealth`.

A mount wraps its store in one, so the health knows whether the store answers (see `health`
for the states). Every request asks the health first (`gate`: refused at once while the store
is known to be unreachable), counts as in flight while it runs, and reports its outcome: an
answer, or the domain error it raised. A streamed GET reports each chunk as an answer, so a
long download is never taken for a stall. `check_bucket` is the probe: never refused, and its
outcome decides the state (`StoreHealth.probed`).

Adds no retries and changes no error: what the wrapped store raises is raised unchanged.
Thread safe as the wrapped store is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from modelfs.errors import ModelfsError
from modelfs.objects import ListPage, ObjectId, ObjectInfo
from modelfs.store.health import StoreHealth, StoreState
from modelfs.store.protocol import Expect, ObjectStore, PendingUpload, UploadedPart

T = TypeVar("T")


class GuardedStore:
    def __init__(self, store: ObjectStore, health: StoreHealth) -> None:
        self.store = store
        self.health = health

    def __repr__(self) -> str:
        return f"GuardedStore({self.store!r})"

    def _call(self, call: Callable[[], T]) -> T:
        health = self.health
        health.gate()
        health.started()
        try:
            result = call()
        except ModelfsError as exc:
            health.failed(exc)
            raise
        finally:
            health.finished()
        health.answered()
        return result

    # -- the probe -----------------------------------------------------------------------

    def check_bucket(self) -> None:
        try:
            self.store.check_bucket()
        except ModelfsError as exc:
            self.health.probed(exc)
            raise
        self.health.probed(None)

    # -- reads -----------------------------------------------------------------------------

    def warm_up(self, key: str) -> None:
        if self.health.state is not StoreState.OFFLINE:
            self.store.warm_up(key)  # never raises

    def head(self, key: str) -> ObjectInfo:
        return self._call(lambda: self.store.head(key))

    def list_page(
        self,
        prefix: str,
        token: str | None = None,
        max_keys: int = 1000,
        *,
        recursive: bool = False,
    ) -> ListPage:
        return self._call(
            lambda: self.store.list_page(prefix, token, max_keys, recursive=recursive)
        )

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        return self._call(lambda: self.store.get_range(obj, start, end))

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        health = self.health
        health.gate()
        health.started()
        try:
            for data in self.store.iter_range(obj, start, end, chunk):
                health.answered()
                yield data
        except ModelfsError as exc:
            health.failed(exc)
            raise
        finally:
            health.finished()

    # -- writes ----------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, expect: Expect | None = None) -> ObjectInfo:
        return self._call(lambda: self.store.put_bytes(key, data, expect))

    def delete(self, key: str) -> None:
        self._call(lambda: self.store.delete(key))

    def copy(self, source_key: str, dest_key: str) -> ObjectInfo:
        return self._call(lambda: self.store.copy(source_key, dest_key))

    def create_multipart(self, key: str) -> str:
        return self._call(lambda: self.store.create_multipart(key))

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        return self._call(lambda: self.store.upload_part(key, upload_id, number, data))

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[UploadedPart], expect: Expect | None = None
    ) -> ObjectInfo:
        return self._call(lambda: self.store.complete_multipart(key, upload_id, parts, expect))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._call(lambda: self.store.abort_multipart(key, upload_id))

    def list_multipart(self, prefix: str) -> list[PendingUpload]:
        return self._call(lambda: self.store.list_multipart(prefix))
