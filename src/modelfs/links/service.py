"""The link service: stable links to objects, each answered by a freshly signed one.

An ASGI app (served by hypercorn on trio, see `commands`). For a request of `/<path>`:

    GET /healthz                      200 "ok" (for probes; no token needed)
    GET /<prefix>/manifest.json       the prefix's manifest, its source rewritten to this
                                      service, so every link in it stays stable
    GET|HEAD /<path>                  302 to a URL signed now for that method, valid
                                      `link_ttl` seconds; `curl -L`, a pull or a mount follow it
    anything else                     405 (the service is read-only: it signs GET and HEAD only)

Invariants, in the order they are checked (nothing reaches the store before all pass):
1. the path is normalised from its raw, percent-encoded form: a NUL, an empty, `.` or `..`
   segment (encoded as `%2e%2e` too) is a 404;
2. with a token file, a request without `Authorization: Bearer TOKEN` is a 401, a token not
   in the file (wrong, or revoked) a 403; `/healthz` needs none;
3. the key (the served spec's prefix + path) must be under an allowed prefix, else 404.
Signing is local (HMAC of the request with the keys in this process): the keys never leave it,
and the only request to the store is reading a prefix's manifest (cached `_MANIFEST_TTL`). A
link signed for the same key and method less than a tenth of `link_ttl` ago (at most
`_REUSE_MAX`) is handed out again: every link handed out is valid for at least 90% of
`link_ttl`, and a burst of requests for one file costs one signature.
Each request is one access-log line (client, method, path, status, time), which never holds
a query string, a signature or a token.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import trio

from modelfs.config.remote import RemoteSpec
from modelfs.errors import ModelfsError, NotFound
from modelfs.links.tokens import TokenFile, bearer
from modelfs.pull.manifest import MANIFEST_NAME, ManifestSource, dump_manifest, parse_manifest
from modelfs.store.s3 import S3Store

access_log = logging.getLogger("modelfs.links.access")
log = logging.getLogger(__name__)

_MANIFEST_TTL = 30.0  # seconds a prefix's manifest is served from memory
_REUSE_MAX = 60.0  # seconds a signed link is handed out again, at most
_REUSE_ENTRIES = 4096  # signed links remembered, at most
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ServiceSettings:
    spec: RemoteSpec
    prefixes: tuple[str, ...]  # allowed, relative to spec's prefix, no trailing '/'; () = all
    link_ttl: int = 3600
    public_url: str | None = None  # how clients reach this service (default: from Host)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


class LinkService:
    def __init__(self, store: S3Store, settings: ServiceSettings, tokens: TokenFile | None) -> None:
        self._store = store
        self._settings = settings
        self._tokens = tokens
        self._manifests: dict[str, tuple[float, bytes]] = {}
        self._links: dict[tuple[str, str], tuple[float, str]] = {}  # (key, method) -> link
        self._reuse = min(_REUSE_MAX, settings.link_ttl / 10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        answer = await self.answer(scope)
        await _send(send, answer, head=scope["method"] == "HEAD")
        client = scope.get("client") or ("-", 0)
        access_log.info(
            "%s %s %s %d %.1fms",
            client[0],
            scope["method"],
            _shown_path(scope),
            answer.status,
            (time.monotonic() - started) * 1000,
        )

    async def answer(self, scope: Scope) -> Answer:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            return Answer(405, b"read-only: GET and HEAD only\n", ((b"allow", b"GET, HEAD"),))
        path = normalised(scope.get("raw_path") or scope["path"].encode())
        if path is None:
            return _not_found()
        if path == "healthz":
            return Answer(200, b"ok\n", ((b"content-type", b"text/plain"),))
        denied = self._check_token(scope)
        if denied is not None:
            return denied
        prefix = self._allowed_prefix(path)
        if prefix is None:
            return _not_found()
        if path == f"{prefix}/{MANIFEST_NAME}" if prefix else path == MANIFEST_NAME:
            return await self._manifest(prefix, scope)
        location = self._signed_link(self._settings.spec.prefix + path, method)
        return Answer(302, b"", ((b"location", location.encode()),))

    def _signed_link(self, key: str, method: str) -> str:
        now = time.monotonic()
        known = self._links.get((key, method))
        if known is not None and now - known[0] < self._reuse:
            return known[1]
        link = self._store.presign(key, self._settings.link_ttl, head=method == "HEAD")
        if len(self._links) >= _REUSE_ENTRIES:
            self._links.clear()
        self._links[(key, method)] = (now, link)
        return link

    def _check_token(self, scope: Scope) -> Answer | None:
        if self._tokens is None:
            return None
        token = bearer(_header(scope, b"authorization"))
        if token is None:
            return Answer(401, b"a token is needed\n", ((b"www-authenticate", b"Bearer"),))
        if not self._tokens.allows(token):
            return Answer(403, b"token not accepted\n")
        return None

    def _allowed_prefix(self, path: str) -> str | None:
        """The allowed prefix `path` is under ('' when everything is served), or None."""
        if not self._settings.prefixes:
            return ""
        for prefix in self._settings.prefixes:
            if path.startswith(prefix + "/"):
                return prefix
        return None

    async def _manifest(self, prefix: str, scope: Scope) -> Answer:
        cached = self._manifests.get(prefix)
        if cached is None or time.monotonic() - cached[0] > _MANIFEST_TTL:
            try:
                body = await trio.to_thread.run_sync(self._rewritten_manifest, prefix, scope)
            except NotFound:
                return Answer(404, f"no {MANIFEST_NAME} in this prefix\n".encode())
            except ModelfsError as exc:
                log.warning("manifest of %r: %s", prefix, exc)
                return Answer(502, b"the store did not answer\n")
            cached = self._manifests[prefix] = (time.monotonic(), body)
        return Answer(200, cached[1], ((b"content-type", b"application/json"),))

    def _rewritten_manifest(self, prefix: str, scope: Scope) -> bytes:
        """The prefix's manifest, whose only source is this service: every link stays valid."""
        key = self._settings.spec.prefix + (f"{prefix}/" if prefix else "") + MANIFEST_NAME
        info = self._store.head(key)
        text = self._store.get_range(info.id, 0, info.size).decode("utf-8", "replace")
        manifest = parse_manifest(text, key)
        base = self._settings.public_url or f"http://{_header(scope, b'host') or 'localhost'}"
        base = base.rstrip("/") + "/"
        here = ManifestSource(url=base + (f"{quote(prefix)}/" if prefix else ""), priority=1)
        files = tuple(dataclasses.replace(file, urls=()) for file in manifest.files)
        rewritten = dataclasses.replace(manifest, files=files, sources=(here,))
        return dump_manifest(rewritten).encode()


def normalised(raw_path: bytes) -> str | None:
    """The request path without its leading '/', decoded; None if it could escape."""
    path = raw_path.split(b"?", 1)[0]
    segments = path.split(b"/")[1:]
    decoded: list[str] = []
    for segment in segments:
        text = unquote_to_bytes(segment)
        if text in (b"", b".", b"..") or b"\0" in text:
            return None
        try:
            decoded.append(text.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return "/".join(decoded) if decoded else None


def _not_found() -> Answer:
    return Answer(404, b"not found\n")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _shown_path(scope: Scope) -> str:
    """The path for the access log: never a query string (no signature can be in it)."""
    return str(scope.get("path", "?"))


async def _send(send: Send, answer: Answer, *, head: bool) -> None:
    headers: Sequence[tuple[bytes, bytes]] = (
        *answer.headers,
        (b"content-length", str(len(answer.body)).encode()),
    )
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else answer.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
