"""`UrlStore`: objects behind HTTP(S) URLs, read-only: a static host, a CDN, signed links.

A key is mapped to its URL by `url_of` (a base URL plus the key, or a manifest's per-file
links). Reads follow redirects (the link service answers 302 to a freshly signed URL), with
urllib3, the HTTP client botocore itself is built on:
- `head` is a GET of byte 0 (`Range: bytes=0-0`), not a HEAD: a signed link is signed for
  GET only, and S3 refuses a HEAD on it. The answer's Content-Range gives the size, its ETag
  the version;
- `iter_range` is one ranged GET with `If-Match` when the version is known, streamed in the
  caller's pieces; a connection broken mid-body is resumed from the next byte
  (`store.s3range.RangeReader`), a stall (no byte within `read_timeout`) is not: it is a
  `StoreUnavailable` at once, so the caller can move to another source.
Answers map to domain errors in one table: 401 and 403 are `AccessDenied` (an expired signed
link, or a missing or revoked token), 404 `NotFound`, 412 `StaleObject`, 5xx and transport
failures `StoreUnavailable` (after urllib3's retries). A link that answers 401/403 is
renewed once when the store was given `renew` (a manifest of signed links fetched again): the
request is sent again to the key's new URL. Every header given (an `Authorization`
token for the link service) goes with each request; urllib3 drops it on a redirect to
another host, so a token never reaches the store a link points to. Signatures in URLs never
appear in errors (`redact`).
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import HTTPError, ReadTimeoutError

from modelfs.errors import (
    AccessDenied,
    InvalidArgument,
    ModelfsError,
    NotFound,
    NotSupported,
    StaleObject,
    StoreUnavailable,
)
from modelfs.objects import ListPage, ObjectId, ObjectInfo
from modelfs.store import etag
from modelfs.store.readonly import RefusesWrites
from modelfs.store.s3range import RangeReader

_SECRET_PARAMS = frozenset({"x-amz-signature", "x-amz-credential", "x-amz-security-token"})
_RETRIED_STATUSES = (500, 502, 503, 504)


def redact(url: str) -> str:
    """`url` without the secrets of a signed link (signature, credential, token)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [
        (name, "REDACTED" if name.lower() in _SECRET_PARAMS else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


class _UrlErrors:
    """The one table from answers and transport failures to domain errors."""

    def __init__(self, name: str) -> None:
        self._name = name

    def for_status(self, status: int, url: str, key: str) -> ModelfsError:
        where = f"{key} at {redact(url)}"
        if status in (401, 403):
            return AccessDenied(
                f"{where} answered {status}: the link expired, or the token is missing or "
                "not allowed"
            )
        if status == 404:
            return NotFound(f"{where} not found (404)")
        if status == 412:
            return StaleObject(f"{where} changed since its version was read (412)")
        if status == 416:
            return InvalidArgument(f"{where}: range not satisfiable (416)")
        return StoreUnavailable(f"{where} answered {status}")

    def translate(self, exc: BaseException, operation: str, key: str | None = None) -> ModelfsError:
        if isinstance(exc, ModelfsError):
            return exc
        if isinstance(exc, ReadTimeoutError):
            return StoreUnavailable(f"{self._name}: {operation} {key} stalled (no data in time)")
        detail = " ".join(str(exc).split())
        return StoreUnavailable(f"{self._name}: {operation} {key} failed: {detail[:200]}")


class UrlStore(RefusesWrites):
    """Read-only `ObjectStore` over HTTP(S) (see the module docstring)."""

    def __init__(
        self,
        url_of: Callable[[str], str | None],
        *,
        name: str,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
        max_connections: int = 32,
        ca_bundle: str | None = None,
        renew: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.name = name
        self._url_of = url_of
        self._renew = renew  # (key, url that was refused) -> whether the key has a new URL
        self._headers = dict(headers or {})
        self._errors = _UrlErrors(name)
        self.max_attempts = max_attempts
        retries = urllib3.Retry(
            total=max_attempts,
            connect=max_attempts,
            read=0,  # a stalled body is the caller's to route elsewhere, not ours to repeat
            status=max_attempts,
            status_forcelist=_RETRIED_STATUSES,
            backoff_factor=0.2,
            redirect=5,
            raise_on_status=False,
        )
        self._pool = urllib3.PoolManager(
            num_pools=8,
            maxsize=max_connections,
            retries=retries,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            ca_certs=ca_bundle,
        )

    def __repr__(self) -> str:
        return f"UrlStore({self.name!r})"

    def close(self) -> None:
        self._pool.clear()

    def _url(self, key: str) -> str:
        url = self._url_of(key)
        if url is None:
            raise NotFound(f"{key}: no URL for it at {self.name}")
        return url

    # -- reads -------------------------------------------------------------------------------

    def check_bucket(self) -> None:
        return None

    def head(self, key: str) -> ObjectInfo:
        url, response = self._get(key, {"Range": "bytes=0-0"}, accept=(416,))
        try:
            size = _total_size(response)
            if size is None:
                raise StoreUnavailable(f"{key} at {redact(url)}: no size in the answer")
            found = etag.unquote(response.headers.get("ETag", ""))
            return ObjectInfo(key, size, found, _mtime(response.headers.get("Last-Modified")))
        finally:
            response.release_conn()

    def read_small(self, key: str, limit: int) -> bytes:
        """The whole of a small object (a manifest) in one GET; larger than `limit` raises."""
        url, response = self._get(key, {})
        try:
            data: bytes = response.read(limit + 1, decode_content=True)
        except HTTPError as exc:
            raise self._errors.translate(exc, "GET", key) from exc
        finally:
            response.release_conn()
        if len(data) > limit:
            raise InvalidArgument(f"{key} at {redact(url)} is larger than {limit} bytes")
        return data

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        return b"".join(self.iter_range(obj, start, end, max(1, end - start)))

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        if chunk <= 0:
            raise InvalidArgument(f"iter_range chunk must be positive, not {chunk}")
        reader = RangeReader(self._open_range, self._errors, self.max_attempts, obj, start, end)
        try:
            while data := reader.read(chunk):
                yield data
        finally:
            reader.close()

    def _open_range(self, obj: ObjectId, start: int, end: int) -> Any:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if obj.etag:
            headers["If-Match"] = etag.quote(obj.etag)
        url, response = self._get(obj.key, headers)
        whole = response.status == 200 and start == 0 and _length(response) == end
        if response.status != 206 and not whole:
            response.release_conn()
            raise StoreUnavailable(f"{obj.key} at {redact(url)}: answered {response.status}")
        return _Body(response, self._errors, obj.key)

    def _get(
        self, key: str, headers: dict[str, str], accept: tuple[int, ...] = ()
    ) -> tuple[str, Any]:
        """The URL of `key` and its answer to a GET; a refused link is renewed once."""
        url = self._url(key)
        try:
            return url, self._request(url, key, headers, accept)
        except AccessDenied:
            if self._renew is None or not self._renew(key, url):
                raise
        url = self._url(key)
        return url, self._request(url, key, headers, accept)

    def _request(
        self, url: str, key: str, headers: dict[str, str], accept: tuple[int, ...] = ()
    ) -> Any:
        """The answer to a GET (its body not read yet); an error status raises, but those in
        `accept` (416 for byte 0 of an empty object, whose Content-Range still says 0)."""
        try:
            response = self._pool.request(
                "GET", url, headers=self._headers | headers, preload_content=False
            )
        except HTTPError as exc:
            raise self._errors.translate(exc, "GET", key) from exc
        if response.status >= 400 and response.status not in accept:
            response.drain_conn()
            raise self._errors.for_status(response.status, url, key)
        return response

    def warm_up(self, key: str) -> None:
        return None

    def list_page(
        self,
        prefix: str,
        token: str | None = None,
        max_keys: int = 1000,
        *,
        recursive: bool = False,
    ) -> ListPage:
        raise NotSupported(f"{self.name}: URLs cannot be listed (a manifest lists the files)")


class _Body:
    """A streaming answer read like botocore's StreamingBody; a stall is no broken stream."""

    def __init__(self, response: Any, errors: _UrlErrors, key: str) -> None:
        self._response = response
        self._errors = errors
        self._key = key

    def read(self, amount: int) -> bytes:
        try:
            data: bytes = self._response.read(amount)
        except ReadTimeoutError as exc:
            raise self._errors.translate(exc, "GET", self._key) from exc
        return data

    def close(self) -> None:
        with contextlib.suppress(HTTPError, OSError):
            self._response.release_conn()


def _length(response: Any) -> int | None:
    text = response.headers.get("Content-Length")
    return int(text) if text is not None and text.isdigit() else None


def _total_size(response: Any) -> int | None:
    """The object's size: after '/' in Content-Range, or the length of a whole answer."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    return _length(response) if response.status == 200 else None


def _mtime(text: str | None) -> float:
    if text:
        with contextlib.suppress(TypeError, ValueError):
            return email.utils.parsedate_to_datetime(text).timestamp()
    return time.time()
