"""A ListObjectsV2 answer (XML) read into a `ListPage`, for the lean lane's LIST.

botocore's generic XML shape parser spends CPU on every key of a page (the shape walk, a
datetime per key through dateutil, the url-decoding hook), enough to be most of a cold
`ls -lR` of a model tree; ElementTree reads the same page for a small fraction of that (see
docs/performance.md).

Only what modelfs uses is read: each object's key, size, ETag and LastModified, the common
prefixes, and the continuation token. Keys come url-encoded (`encoding-type=url` is asked
for, as botocore does, so that keys with characters XML 1.0 cannot carry still list) and are
decoded the way botocore decodes them. Anything unexpected (another root element, a missing
field, a date that does not parse) makes `parse_list_page` return None, and the caller sends
the request again through botocore, whose parser and error messages then apply.

Pure functions, no state: thread safe.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from datetime import datetime
from urllib.parse import unquote_plus

from modelfs.objects import ListPage, ObjectInfo
from modelfs.store.etag import unquote

_S3_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def parse_list_page(body: bytes, prefix: str) -> ListPage | None:
    """The page in `body`, an answer to a ListObjectsV2 of `prefix`; None if it is not one."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None
    namespace = _namespace_of(root.tag)
    if namespace is None:
        return None
    try:
        return _read_page(root, namespace, prefix)
    except (AttributeError, TypeError, ValueError):
        return None


def _namespace_of(tag: str) -> str | None:
    """'{ns}' for a ListBucketResult root (with S3's namespace or none), else None."""
    if tag == "ListBucketResult":
        return ""
    if tag == _S3_NAMESPACE + "ListBucketResult":
        return _S3_NAMESPACE
    return None


def _read_page(root: ElementTree.Element, ns: str, prefix: str) -> ListPage | None:
    encoded = root.findtext(f"{ns}EncodingType") == "url"

    def decoded(text: str | None) -> str:
        if text is None:
            raise ValueError("missing field")
        return unquote_plus(text) if encoded else text

    answered_prefix = root.findtext(f"{ns}Prefix") or ""
    if decoded(answered_prefix) != prefix:
        return None  # an answer to another request: never list the wrong directory
    objects = tuple(
        ObjectInfo(
            key=decoded(item.findtext(f"{ns}Key")),
            size=int(item.findtext(f"{ns}Size") or ""),
            etag=_etag(item.findtext(f"{ns}ETag")),
            mtime=_timestamp(item.findtext(f"{ns}LastModified")),
        )
        for item in root.iterfind(f"{ns}Contents")
    )
    prefixes = tuple(
        decoded(item.findtext(f"{ns}Prefix")) for item in root.iterfind(f"{ns}CommonPrefixes")
    )
    truncated = root.findtext(f"{ns}IsTruncated") == "true"
    next_token = root.findtext(f"{ns}NextContinuationToken") if truncated else None
    if truncated and not next_token:
        return None
    return ListPage(objects=objects, prefixes=prefixes, next_token=next_token)


def _etag(text: str | None) -> str:
    etag = unquote(text or "")
    if not etag:
        raise ValueError("missing ETag")
    return etag


def _timestamp(text: str | None) -> float:
    """Seconds since the epoch of an ISO 8601 LastModified ('2026-11-22T04:40:00.000Z')."""
    if not text:
        raise ValueError("missing LastModified")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("LastModified without a time zone")
    return moment.timestamp()
