"""What a pull fetches, and from where: the files and the `SourceList`, from SRC and options.

SRC is one of:
- `REMOTE:BUCKET/PREFIX`: every object under the prefix (a listing; each file keeps its ETag,
  read with If-Match); if the prefix holds a `manifest.json`, its sha256 are checked too and
  its other sources are fallbacks. `REMOTE:BUCKET/KEY` of one object pulls that one file;
- a manifest file (JSON or YAML) on local disk;
- a manifest URL (`http(s)://.../manifest.json`), fetched with the same HTTP client as the
  files; files whose manifest names no source come from beside it.
Sources, first to last: `--source` ones in the order given, the files' own URLs (signed links),
then the manifest's sources by priority. Signed links of a manifest fetched from a URL are
renewed when one is refused (401/403, an expired link): the manifest is fetched again (once per
refused link: `_RenewableLinks`), and the request is sent to the new link. A manifest source
naming a remote this machine has no config for is left out with a warning (teammates rarely
share every remote).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from modelfs.config.files import resolve
from modelfs.config.remote import RemoteSpec
from modelfs.core import paths
from modelfs.errors import ConfigError, ModelfsError, UsageError
from modelfs.objects import ObjectInfo
from modelfs.pull.engine import PullFile
from modelfs.pull.manifest import MANIFEST_NAME, Manifest, ManifestError, parse_manifest
from modelfs.store.s3 import S3Store
from modelfs.store.sources import Source, SourceList
from modelfs.store.sourcespec import (
    SourceSettings,
    base_url_source,
    is_url,
    remote_source,
    s3_store,
    under,
    url_source,
)
from modelfs.store.urlstore import UrlStore, redact

log = logging.getLogger(__name__)

_LIST_PAGE = 1000
_MANIFEST_LIMIT = 64 << 20  # a manifest larger than this is not one


@dataclass(frozen=True)
class PullPlan:
    files: list[PullFile]
    sources: SourceList
    manifest: Manifest | None
    description: str


def make_plan(
    src: str,
    config: str | None,
    settings: SourceSettings,
    extra_sources: Sequence[str] = (),
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> PullPlan:
    if is_url(src):
        plan = _from_manifest_url(src, config, settings, extra_sources)
    elif Path(src).is_file():
        plan = _from_manifest_file(Path(src), config, settings, extra_sources)
    elif ":" in src:
        plan = _from_remote(src, config, settings, extra_sources)
    else:
        raise UsageError(f"{src}: not a REMOTE:BUCKET/PREFIX, a manifest file or a manifest URL")
    files = [f for f in plan.files if _selected(f.path, include, exclude)]
    return PullPlan(files, plan.sources, plan.manifest, plan.description)


def _selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(path, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


# -- a remote prefix -----------------------------------------------------------------------------


def _from_remote(
    src: str, config: str | None, settings: SourceSettings, extra: Sequence[str]
) -> PullPlan:
    remote, spec = resolve(src, config)
    store = s3_store(remote, spec, settings)
    store.check_bucket()
    infos = list_prefix(store, spec.prefix)
    if not infos and spec.prefix:
        key = spec.prefix.rstrip("/")
        one = store.head(key)  # NotFound: the one-line error for a wrong prefix
        prefix = key.rpartition("/")[0] + "/" if "/" in key else ""
        infos, spec = [one], RemoteSpec(spec.remote, spec.bucket, prefix)
    own = Source(spec.source, store, under(spec.prefix))
    relative = {info.key[len(spec.prefix) :]: info for info in infos}
    manifest = manifest_in(store, spec.prefix, relative)
    files = []
    for path, info in sorted(relative.items()):
        if not all(paths.valid_segment(part) for part in path.split("/")):
            paths.warn_skipped(info.key)
            continue
        sha256 = None
        if manifest is not None and path in manifest.by_path():
            sha256 = manifest.by_path()[path].sha256
        files.append(PullFile(path, info.size, sha256, info.etag))
    sources = [*_extra_sources(extra, config, settings), own]
    if manifest is not None:
        sources += [s for s in _manifest_sources(manifest, config, settings) if s.name != own.name]
    source_list = SourceList(sources, min_rate=settings.min_rate)
    for path, info in relative.items():
        source_list.seed(own.name, path, info)
    return PullPlan(files, source_list, manifest, spec.source)


def list_prefix(store: S3Store, prefix: str) -> list[ObjectInfo]:
    """Every object under `prefix` (directory markers left out)."""
    infos: list[ObjectInfo] = []
    token: str | None = None
    while True:
        page = store.list_page(prefix, token, _LIST_PAGE, recursive=True)
        infos += [info for info in page.objects if not info.key.endswith("/")]
        token = page.next_token
        if token is None:
            return infos


def manifest_in(store: S3Store, prefix: str, relative: dict[str, ObjectInfo]) -> Manifest | None:
    info = relative.get(MANIFEST_NAME)
    if info is None:
        return None
    text = store.get_range(info.id, 0, info.size).decode("utf-8", "replace")
    try:
        return parse_manifest(text, f"{prefix}{MANIFEST_NAME}")
    except ManifestError as exc:
        log.warning("ignoring the prefix's manifest: %s", exc)
        return None


# -- a manifest ---------------------------------------------------------------------------------


def read_manifest(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc}") from exc
    return parse_manifest(text, str(path))


def fetch_manifest(url: str, headers: Sequence[tuple[str, str]] = ()) -> Manifest:
    """The manifest at `url` (the link service's, or any static host's)."""
    fetcher = UrlStore(lambda key: url, name=redact(url), headers=dict(headers))
    try:
        text = fetcher.read_small(url, _MANIFEST_LIMIT).decode("utf-8", "replace")
    finally:
        fetcher.close()
    return parse_manifest(text, redact(url))


def auth_headers(token_file: str | None) -> tuple[tuple[str, str], ...]:
    """The `Authorization` header for a link service: the token in `token_file` (its first
    word that is not a comment), else $MODELFS_TOKEN, else none. Never from argv."""
    token = os.environ.get("MODELFS_TOKEN", "").strip() or None
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read token file {token_file}: {exc}") from exc
        words = [line.split("#", 1)[0].split() for line in text.splitlines()]
        token = next((line[0] for line in words if line), None)
        if token is None:
            raise ConfigError(f"token file {token_file} holds no token")
    return (("Authorization", f"Bearer {token}"),) if token else ()


class _RenewableLinks:
    """A manifest's per-file links, fetched again from its URL when one is refused."""

    def __init__(self, url: str, headers: Sequence[tuple[str, str]], manifest: Manifest) -> None:
        self._url = url
        self._headers = headers
        self._lock = threading.Lock()
        self._links = _links_of(manifest)

    def url_of(self, path: str) -> str | None:
        return self._links.get(path)

    def renew(self, path: str, refused: str) -> bool:
        """Fetch the manifest again unless another thread did since `refused` was handed out;
        whether `path` has another link now."""
        with self._lock:
            if self._links.get(path) == refused:
                log.info("a link of %s was refused: fetching the manifest again", redact(self._url))
                try:
                    self._links = _links_of(fetch_manifest(self._url, self._headers))
                except ModelfsError as exc:
                    log.warning("could not renew the links: %s", exc)
                    return False
            return self._links.get(path) not in (None, refused)


def _links_of(manifest: Manifest) -> dict[str, str]:
    return {file.path: file.urls[0] for file in manifest.files if file.urls}


def _from_manifest_file(
    path: Path, config: str | None, settings: SourceSettings, extra: Sequence[str]
) -> PullPlan:
    manifest = read_manifest(path)
    links = _links_of(manifest)
    return _plan_of(
        manifest, config, settings, extra, (links.get, None), beside=None, description=str(path)
    )


def _from_manifest_url(
    url: str, config: str | None, settings: SourceSettings, extra: Sequence[str]
) -> PullPlan:
    manifest = fetch_manifest(url, settings.headers)
    links = _RenewableLinks(url, settings.headers, manifest)
    beside = urljoin(url, ".")
    return _plan_of(
        manifest,
        config,
        settings,
        extra,
        (links.url_of, links.renew),
        beside=beside,
        description=redact(url),
    )


def _plan_of(
    manifest: Manifest,
    config: str | None,
    settings: SourceSettings,
    extra: Sequence[str],
    links: tuple[Callable[[str], str | None], Callable[[str, str], bool] | None],
    *,
    beside: str | None,
    description: str,
) -> PullPlan:
    sources = list(_extra_sources(extra, config, settings))
    if any(file.urls for file in manifest.files):
        sources.append(url_source("links in the manifest", links[0], settings, renew=links[1]))
    sources += _manifest_sources(manifest, config, settings)
    if not manifest.sources and beside is not None:
        sources.append(base_url_source(beside, settings))
    if not sources:
        raise ConfigError(
            f"manifest {description} names no source: add `sources`, or give --source"
        )
    files = [PullFile(f.path, f.size, f.sha256) for f in manifest.files]
    return PullPlan(files, SourceList(sources, min_rate=settings.min_rate), manifest, description)


def _manifest_sources(
    manifest: Manifest, config: str | None, settings: SourceSettings
) -> list[Source]:
    sources = []
    for entry in manifest.ordered_sources():
        if entry.url is not None:
            sources.append(base_url_source(entry.url, settings))
            continue
        assert entry.remote is not None
        try:
            sources.append(remote_source(entry.remote, config, settings))
        except ModelfsError as exc:
            log.warning("leaving out source %s: %s", entry.remote, exc)
    return sources


def _extra_sources(
    texts: Sequence[str], config: str | None, settings: SourceSettings
) -> list[Source]:
    sources = []
    for text in texts:
        if is_url(text):
            sources.append(base_url_source(text if text.endswith("/") else text + "/", settings))
        else:
            sources.append(remote_source(text, config, settings))
    return sources
