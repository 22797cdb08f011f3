"""The manifest: a model tree's files with their sizes and sha256, and where to get them.

The format is documented in docs/manifest.md; JSON and YAML say the same thing:

    name: heygem-lipsync-v1
    version: 1.0.0
    files:
      - {path: heygem_model_v1.0.pth, size: 3972844210, sha256: a1b2..., etag: 9f...}
      - {path: tokenizer/vocab.json, size: 1024, sha256: ..., urls: [https://...]}
    sources:
      - {url: "https://cdn.example.com/models/", priority: 1, region: cn-north}
      - {remote: "backup:models-bucket/heygem", priority: 2}

Invariants of a loaded `Manifest`: every path is a relative path of valid segments (no '..',
no empty segment, no NUL), paths are unique, sizes are non-negative integers, every sha256 is 64
lowercase hex digits, and every source names exactly one of `remote` and `url`. Fields this
version does not know are kept and written back unchanged (a newer writer's additions survive
an older reader). A malformed manifest is a `ManifestError`: one line naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelfs.config.remote import parse_spec
from modelfs.errors import ConfigError

MANIFEST_NAME = "manifest.json"  # the name `manifest create --upload` stores it under
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_FIELDS = ("path", "size", "sha256", "etag", "urls")
_SOURCE_FIELDS = ("remote", "url", "priority", "region")
_TOP_FIELDS = ("name", "version", "files", "sources")
DEFAULT_PRIORITY = 100  # sources without one come after those that say


class ManifestError(ConfigError):
    """A manifest that cannot be used, named with the field that is wrong."""


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str
    etag: str | None = None
    urls: tuple[str, ...] = ()  # per-file URLs (signed links), tried before the sources
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestSource:
    remote: str | None = None  # REMOTE:BUCKET[/PREFIX]
    url: str | None = None  # a base URL ending in '/': a file's URL is base + its path
    priority: int = DEFAULT_PRIORITY  # lower first
    region: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return self.remote if self.remote is not None else str(self.url)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    files: tuple[ManifestFile, ...]
    sources: tuple[ManifestSource, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def by_path(self) -> dict[str, ManifestFile]:
        return {file.path: file for file in self.files}

    def ordered_sources(self) -> list[ManifestSource]:
        """By priority, then in the order written."""
        return sorted(self.sources, key=lambda source: source.priority)

    def total_size(self) -> int:
        return sum(file.size for file in self.files)


# -- reading ---------------------------------------------------------------------------------


def parse_manifest(text: str, origin: str) -> Manifest:
    """A manifest from JSON or YAML text (`origin` names it in errors)."""
    import yaml  # only a YAML manifest needs it

    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(f"manifest {origin} is not valid JSON or YAML: {first}") from None
    return _manifest(data, origin)


def _manifest(data: object, origin: str) -> Manifest:
    top = _mapping(data, origin, "the manifest")
    files_data = top.get("files")
    if not isinstance(files_data, list):
        raise ManifestError(f"manifest {origin}: files: expected a list of files")
    files = tuple(_file(item, origin, f"files[{i}]") for i, item in enumerate(files_data))
    seen: set[str] = set()
    for index, entry in enumerate(files):
        if entry.path in seen:
            raise ManifestError(f"manifest {origin}: files[{index}].path: {entry.path!r} twice")
        seen.add(entry.path)
    sources_data = top.get("sources", [])
    if not isinstance(sources_data, list):
        raise ManifestError(f"manifest {origin}: sources: expected a list of sources")
    sources = tuple(_source(item, origin, f"sources[{i}]") for i, item in enumerate(sources_data))
    return Manifest(
        name=_text(top.get("name", ""), origin, "name"),
        version=_text(top.get("version", ""), origin, "version"),
        files=files,
        sources=sources,
        extra=_extra(top, _TOP_FIELDS),
    )


def _file(data: object, origin: str, where: str) -> ManifestFile:
    item = _mapping(data, origin, where)
    path = check_path(_text(item.get("path"), origin, f"{where}.path"), origin, where)
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"manifest {origin}: {where}.size: expected a byte count, got {size!r}")
    sha256 = _text(item.get("sha256"), origin, f"{where}.sha256").lower()
    if not _SHA256.fullmatch(sha256):
        raise ManifestError(
            f"manifest {origin}: {where}.sha256: expected 64 hex digits, got {sha256[:70]!r}"
        )
    etag = item.get("etag")
    urls = item.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise ManifestError(f"manifest {origin}: {where}.urls: expected a list of URLs")
    return ManifestFile(
        path=path,
        size=size,
        sha256=sha256,
        etag=None if etag is None else _text(etag, origin, f"{where}.etag").strip('"'),
        urls=tuple(_check_url(url, origin, f"{where}.urls") for url in urls),
        extra=_extra(item, _FILE_FIELDS),
    )


def _source(data: object, origin: str, where: str) -> ManifestSource:
    item = _mapping(data, origin, where)
    remote, url = item.get("remote"), item.get("url")
    if (remote is None) == (url is None):
        raise ManifestError(f"manifest {origin}: {where}: give exactly one of remote and url")
    priority = item.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ManifestError(f"manifest {origin}: {where}.priority: expected a number")
    if remote is not None:
        text = _text(remote, origin, f"{where}.remote")
        try:
            parse_spec(text)
        except ConfigError as exc:
            raise ManifestError(f"manifest {origin}: {where}.remote: {exc}") from None
    if url is not None:
        url = _check_url(_text(url, origin, f"{where}.url"), origin, f"{where}.url")
        url = url if url.endswith("/") else url + "/"
    region = item.get("region")
    return ManifestSource(
        remote=None if remote is None else str(remote),
        url=url,
        priority=priority,
        region=None if region is None else _text(region, origin, f"{where}.region"),
        extra=_extra(item, _SOURCE_FIELDS),
    )


def check_path(path: str, origin: str, where: str) -> str:
    """A manifest path: relative, '/'-separated, every segment a usable file name."""
    segments = path.split("/")
    if path.startswith("/") or any(s in ("", ".", "..") or "\0" in s for s in segments):
        raise ManifestError(f"manifest {origin}: {where}.path: {path!r} is not a relative path")
    return path


def _check_url(url: str, origin: str, where: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ManifestError(f"manifest {origin}: {where}: {url[:80]!r} is not an http(s) URL")
    return url


def _mapping(data: object, origin: str, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {origin}: {where}: expected a mapping")
    return data


def _text(value: object, origin: str, where: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # `version: 23` is the text "23"
    if not isinstance(value, str):
        raise ManifestError(f"manifest {origin}: {where}: expected text, got {value!r}")
    return value


def _extra(item: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in item.items() if key not in known}


# -- writing ---------------------------------------------------------------------------------


def manifest_data(manifest: Manifest) -> dict[str, Any]:
    """The manifest as plain data, known fields first, unknown ones kept."""
    files = []
    for entry in manifest.files:
        item: dict[str, Any] = {"path": entry.path, "size": entry.size, "sha256": entry.sha256}
        if entry.etag is not None:
            item["etag"] = entry.etag
        if entry.urls:
            item["urls"] = list(entry.urls)
        files.append(item | dict(entry.extra))
    sources = []
    for source in manifest.sources:
        item = {"remote": source.remote} if source.remote is not None else {"url": source.url}
        item["priority"] = source.priority
        if source.region is not None:
            item["region"] = source.region
        sources.append(item | dict(source.extra))
    data: dict[str, Any] = {"name": manifest.name, "version": manifest.version, "files": files}
    if sources:
        data["sources"] = sources
    return data | dict(manifest.extra)


def dump_manifest(manifest: Manifest, *, yaml_format: bool = False) -> str:
    data = manifest_data(manifest)
    if yaml_format:
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
