"""ETags: how they are written, compared, and computed for content we upload.

modelfs keeps ETags unquoted everywhere; they are quoted only on the way out to S3 (`quote`)
and unquoted on the way in (`unquote`), and compared with `same_etag`, which ignores quotes
some servers and clients keep.

For content we upload ourselves, S3's ETag is known in advance: the MD5 of the body for a
single PUT (`from_md5`, `md5_etag`), and for a multipart upload the MD5 of the parts' MD5
digests joined, with "-N" for N parts (`multipart_etag`). Write-back uses that to tell "the
bucket already has exactly our bytes" from a change by someone else without reading back.

Every body we send carries its MD5 (`content_md5`, the Content-MD5 header), so the store refuses
a body that did not arrive whole instead of keeping it: SeaweedFS keeps an EMPTY object for a PUT
whose connection died right after its headers, even with the payload's SHA-256 signed, and a
retry's If-None-Match then fails on it (the data would go to a conflict key).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence


def quote(etag: str) -> str:
    return f'"{etag}"'


def unquote(etag: str) -> str:
    return etag.strip('"')


def same_etag(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and unquote(a) == unquote(b)


def from_md5(digest: bytes) -> str:
    """The ETag of a single-part upload whose body has MD5 `digest`."""
    return digest.hex()


def md5_etag(data: bytes) -> str:
    """The ETag of a single-part upload of `data`."""
    return from_md5(hashlib.md5(data, usedforsecurity=False).digest())


def multipart_etag(part_digests: Sequence[bytes]) -> str:
    """The ETag of a multipart upload whose parts have these MD5 digests, in order."""
    joined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f"{joined}-{len(part_digests)}"


def content_md5(data: bytes | bytearray | memoryview) -> str:
    """The Content-MD5 header of a body: its MD5 digest, base64."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
