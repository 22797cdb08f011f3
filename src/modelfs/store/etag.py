"""ETags: how they are written, compared, and computed for content we upload.

modelfs keeps ETags unquoted everywhere; they are quoted only on the way out to S3 (`quote`)
and unquoted on the way in (`unquote`), and compared with `same_etag`, which ignores quotes
some servers and clients keep.

For content we upload ourselves, S3's ETag is known in advance: the MD5 of the body for a
single PUT (`from_md5`, `md5_etag`), and for a multipart upload the MD5 of the parts' MD5
digests joined, with "-N" for N parts (`multipart_etag`). Write-back uses that to tell "the
bucket already has exactly our bytes" from a change by someone else without reading back.
"""

from __future__ import annotations

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
