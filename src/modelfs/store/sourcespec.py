"""Sources from what a user wrote: `REMOTE:BUCKET[/PREFIX]` or a base URL -> a `Source`.

The one place where the text of a source becomes a store and a key mapping, for `pull`
(`--source`, a manifest's sources), `verify`, `manifest create`, the link commands and the
mount (its `sources`, see `config.sourcelist`). A source maps a logical key to its own key:
`remote_source` prefixes its own prefix after stripping `strip` (the mount's own prefix,
when the logical keys are the primary's full keys); a base URL appends the quoted key.

`SourceSettings` are the knobs every source shares: parallel transfers (the pool size), the
stall timeout (a read that gets no byte this long fails, so the next source can take over),
the rate floor, and the headers sent to URL sources (a link service's token: never logged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from modelfs.config.files import resolve
from modelfs.config.remote import RemoteConfig, RemoteSpec
from modelfs.store.s3 import S3Store
from modelfs.store.sources import Source
from modelfs.store.urlstore import UrlStore, redact


@dataclass(frozen=True)
class SourceSettings:
    transfers: int = 16
    stall_timeout: float = 30.0  # seconds without a byte: the source is stalled
    min_rate: float = 0.0  # bytes/s below which a source is left (0: no floor)
    headers: tuple[tuple[str, str], ...] = ()  # sent to URL sources (a link service token)


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def s3_store(remote: RemoteConfig, spec: RemoteSpec, settings: SourceSettings) -> S3Store:
    return S3Store(
        remote,
        spec.bucket,
        max_connections=2 * settings.transfers + 4,
        read_timeout=settings.stall_timeout,
    )


def remote_source(
    text: str,
    config: str | None,
    settings: SourceSettings,
    *,
    lookup: bool = False,
    strip: str = "",
) -> Source:
    """The source `REMOTE:BUCKET[/PREFIX]`: logical key `k` is its key PREFIX + k[len(strip):]
    (`strip`: the part of a logical key that this source's prefix stands for)."""
    remote, spec = resolve(text, config)
    return Source(spec.source, s3_store(remote, spec, settings), under(spec.prefix, strip), lookup)


def base_url_source(base: str, settings: SourceSettings) -> Source:
    return url_source(redact(base), lambda key: base + quote(key), settings)


def url_source(
    name: str,
    url_of: Callable[[str], str | None],
    settings: SourceSettings,
    *,
    renew: Callable[[str, str], bool] | None = None,
) -> Source:
    store = UrlStore(
        url_of,
        name=name,
        headers=dict(settings.headers),
        read_timeout=settings.stall_timeout,
        max_connections=2 * settings.transfers,
        renew=renew,
    )
    return Source(name, store, lambda key: key, lookup=False)


def under(prefix: str, strip: str = "") -> Callable[[str], str]:
    if not strip:
        return lambda key: prefix + key
    return lambda key: prefix + key.removeprefix(strip)
