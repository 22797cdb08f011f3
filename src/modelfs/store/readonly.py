"""`RefusesWrites`: the write half of `ObjectStore` for stores that are read-only by nature.

An HTTP source (`UrlStore`) and a manifest's files (`pull.manifeststore.ManifestStore`) can be
read, never written: each write raises `ReadOnly` naming the store (EROFS at the FUSE edge), and
there are never pending multipart uploads. A subclass sets `name`.
"""

from __future__ import annotations

from modelfs.errors import ReadOnly
from modelfs.objects import ObjectInfo
from modelfs.store.protocol import Expect, PendingUpload, UploadedPart


class RefusesWrites:
    name: str

    def _refuse(self) -> ReadOnly:
        return ReadOnly(f"{self.name} is read-only")

    def put_bytes(self, key: str, data: bytes, expect: Expect | None = None) -> ObjectInfo:
        raise self._refuse()

    def delete(self, key: str) -> None:
        raise self._refuse()

    def copy(self, source_key: str, dest_key: str) -> ObjectInfo:
        raise self._refuse()

    def create_multipart(self, key: str) -> str:
        raise self._refuse()

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        raise self._refuse()

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[UploadedPart], expect: Expect | None = None
    ) -> ObjectInfo:
        raise self._refuse()

    def abort_multipart(self, key: str, upload_id: str) -> None:
        raise self._refuse()

    def list_multipart(self, prefix: str) -> list[PendingUpload]:
        return []
