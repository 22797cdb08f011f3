"""Ranged GETs and LISTs that skip botocore's per-call pipeline: the lean lane.

botocore's per-call pipeline (parameter validation, a dozen event hooks, a user agent string
rebuilt per call, response parsing with dateutil) costs far more CPU than the request itself,
and all of it holds the GIL the FUSE loop needs; on a directory of small files every read is
such a GET. This lane sends the same signed request with `sigv4` (botocore's signer rebuilds
what this one caches) over `http` (a GET-only keep-alive client, far leaner than urllib3);
docs/performance.md has the measurements.

The lane only ever takes the success path. Everything else goes back to botocore, which keeps
its retries, error codes and messages: `open` returns None (the caller then uses the client)
when the lane has not learnt the request URL yet, when credentials are missing, when a proxy is
configured in the environment, on any transport error (a failed TLS handshake included), and
on any answer but a 206 whose Content-Range and Content-Length are those of the range asked
for. A failed request so costs one extra request, a successful one is never answered with
bytes of another range or version: If-Match travels the same way.

Credentials are never kept: every request is signed with the keys botocore's credentials
object gives for it (`get_frozen_credentials`, frozen so one request never mixes two keys), so
refreshed temporary keys and keys rotated in the config file (`s3client`) reach this lane as
they reach botocore's.

The URL is learnt from botocore itself (`learn`): the URL of a real GetObject request minus the
quoted key is the prefix every key of the bucket shares, with botocore's own choice of scheme,
host and addressing style. HTTPS trusts the CA bundle the store resolved for botocore
(`ca_bundle`), so both lanes accept the same servers.

LIST (ListObjectsV2) takes the same lane once `learn_list` saw botocore's URL for one: the
answer is read by `listxml` instead of botocore's generic parser, whose cost grows with every
key of the page. Only a 200 whose body parses as the listing of the prefix asked for is taken;
the rest goes back to botocore like a failed GET.

Thread safety: `_lock` guards learning (the URLs, the credentials) and adding pools; readers
take `_base`, `_list_url` and `_pools` without it (each is replaced whole, never mutated). It
is the only lock here; no other lock of this package is taken while it is held (pools are
closed after it is released).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from modelfs.objects import ListPage
from modelfs.store.http import ConnectionPool, HttpError, Origin, Response
from modelfs.store.listxml import parse_list_page
from modelfs.store.sigv4 import SigV4Signer

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def quote_key(key: str) -> str:
    """A key as botocore puts it in a request path (greedy label: '/' and '~' kept)."""
    return quote(key, safe="/~")


class LeanBody:
    """The body of a lean GET, read like botocore's StreamingBody (`read(amount)`, `close`).
    A transport error while reading surfaces as `ConnectionError`, which the store's reader
    answers with a new GET for the rest of the range."""

    def __init__(self, response: Response) -> None:
        self._response = response

    def read(self, amount: int) -> bytes:
        try:
            return self._response.read(amount)
        except HttpError as exc:
            raise ConnectionResetError(str(exc)) from exc

    def close(self) -> None:
        self._response.close()  # pooled again only if read to the end


class LeanGetter:
    def __init__(
        self,
        credentials: Callable[[], Any],
        region: str,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        ca_bundle: str,
    ) -> None:
        """`ca_bundle`: the PEM file of the CAs HTTPS trusts (the one botocore uses)."""
        # Resolved when the URL is learnt, after botocore found them for its own GET: asking
        # earlier could mean a slow search (e.g. the EC2 metadata service) at construction.
        self._find_credentials = credentials
        self._credentials: Any = None  # botocore Credentials, asked for keys per request
        self._signer = SigV4Signer(region)
        self._base: str | None = None
        self._list_url: str | None = None  # the bucket's URL for ListObjectsV2, no query
        self._lock = threading.Lock()
        self._enabled = not any(os.environ.get(name) for name in _PROXY_VARIABLES)
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ca_bundle = ca_bundle
        self._pools: list[ConnectionPool] = []  # one per origin (GETs and LISTs share one)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.close()

    @property
    def ready(self) -> bool:
        return self._base is not None

    def learn(self, url: str, key: str) -> None:
        """Take the bucket's URL prefix from `url`, botocore's URL for a GET of `key`."""
        if not self._enabled or self._base is not None:
            return
        quoted = quote_key(key)
        if "?" in url or not url.endswith(quoted):
            return
        with self._lock:
            if self._base is None and self._have_credentials():
                self._base = url[: len(url) - len(quoted)]

    def learn_list(self, url: str) -> None:
        """Take the bucket's listing URL from `url`, botocore's URL for a ListObjectsV2."""
        if not self._enabled or self._list_url is not None:
            return
        parts = urlsplit(url)
        if "list-type=2" not in parts.query.split("&"):
            return
        with self._lock:
            if self._list_url is None and self._have_credentials():
                self._list_url = url.split("?", 1)[0]

    def _have_credentials(self) -> bool:
        """Under the lock: find the credentials once; without any the lane stays off."""
        if self._credentials is None and self._enabled:
            try:
                self._credentials = self._find_credentials()
            except Exception:  # botocore reports credential problems on its own requests
                self._credentials = None
            if self._credentials is None:
                self._enabled = False
        return self._enabled

    def warm_up(self, key: str) -> None:
        """One GET of `key` (meant to be absent) for its answer's sake: it leaves a connection
        in the pool, so the first LIST or GET of the mount does not wait for a connect (one
        round trip; on a WAN link with TLS, three)."""
        base = self._base
        if base is None:
            return
        url = base + quote_key(key)
        with contextlib.suppress(HttpError):
            response = self._send(url, {"Range": "bytes=0-0"})
            if response is not None and response.length is not None:
                response.read_all()  # read to the end: the connection stays pooled
            elif response is not None:
                response.close()

    def open(self, key: str, start: int, end: int, quoted_etag: str | None) -> LeanBody | None:
        """A response streaming bytes [start, end) of `key` at `quoted_etag` (None: any
        version), or None."""
        base = self._base
        if base is None:
            return None
        url = base + quote_key(key)
        try:
            response = self._send(
                url,
                {"Range": f"bytes={start}-{end - 1}"}
                | ({"If-Match": quoted_etag} if quoted_etag else {}),
            )
        except HttpError:
            return None
        if response is None:
            return None
        if _is_the_range(response, start, end):
            return LeanBody(response)
        response.close()
        return None

    def list_page(
        self, prefix: str, token: str | None, max_keys: int, *, delimited: bool
    ) -> ListPage | None:
        """One ListObjectsV2 page of `prefix`, or None (then botocore lists it)."""
        list_url = self._list_url
        if list_url is None:
            return None
        query = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", str(max_keys))]
        query.append(("prefix", prefix))
        if delimited:
            query.append(("delimiter", "/"))
        if token is not None:
            query.append(("continuation-token", token))
        encoded = [(name, quote(value, safe="-_.~")) for name, value in query]
        try:
            response = self._send(list_url, {}, encoded)
            if response is None:
                return None
            if response.status != 200 or response.length is None:
                response.close()
                return None
            body = response.read_all()
        except HttpError:
            return None
        return parse_list_page(body, prefix)

    def _send(
        self, url: str, headers: dict[str, str], query: Sequence[tuple[str, str]] = ()
    ) -> Response | None:
        """Sign and send `GET url?query` (`url` without a query; `query` already encoded);
        None if it cannot be signed or its origin is unusable."""
        frozen = self._credentials.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            return None
        pool = self._pool_for(url)
        path = None if pool is None else pool.origin.path_of(url)
        if pool is None or path is None:
            return None
        signed = self._signer.sign(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            token=frozen.token,
            host=pool.origin.host_header,
            path=path,
            query=query,
            headers=headers,
        )
        target = path + ("?" + "&".join(f"{n}={v}" for n, v in query) if query else "")
        return pool.get(target, signed)

    def _pool_for(self, url: str) -> ConnectionPool | None:
        for pool in self._pools:
            if pool.origin.path_of(url) is not None:
                return pool
        with self._lock:
            for pool in self._pools:
                if pool.origin.path_of(url) is not None:
                    return pool
            try:
                pool = ConnectionPool(
                    Origin(url),
                    max_idle=self._max_connections,
                    connect_timeout=self._connect_timeout,
                    read_timeout=self._read_timeout,
                    ca_bundle=self._ca_bundle,
                )
            except (ValueError, OSError):  # not http(s), or a CA bundle that cannot be read
                return None
            self._pools = [*self._pools, pool]
            return pool


def _is_the_range(response: Response, start: int, end: int) -> bool:
    if response.status != 206 or response.length != end - start:
        return False
    return response.headers.get("content-range", "").startswith(f"bytes {start}-{end - 1}/")
