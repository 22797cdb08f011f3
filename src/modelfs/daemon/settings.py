"""`MountConfig`: everything one mount needs, resolved from `modelfs mount`'s arguments.

The options themselves (names, defaults, parsers) are `config.options`; this only gathers the
parsed values into the settings of each part of the mount (`FsOptions` for the core,
`ReadOptions` for the read policy, and the rest for the daemon and write-back).

SPEC is `REMOTE:BUCKET[/PREFIX]`, or the URL of a manifest (`manifest_url`): a read-only mount of
the manifest's files, read from its sources (`pull.manifeststore`). Such a mount is named by the
URL without its query (a signed manifest URL's signature never reaches mountinfo or a log), and
its cache root is that name's, so every renewal of a signed URL finds the same cache.

Several mounts may use one cache root at once (two prefixes of a bucket, two mountpoints of
one): they share its block cache, and each has a write-back root of its own in it, by
mountpoint (`writeback_root`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from modelfs.config.files import resolve
from modelfs.config.remote import RemoteConfig, RemoteSpec, parse_spec
from modelfs.config.sourcelist import mount_sources
from modelfs.core.attributes import FsOptions
from modelfs.daemon.snapshot import SnapshotFile
from modelfs.host.control import mount_id
from modelfs.read.policy import ReadOptions


@dataclass(frozen=True)
class MountConfig:
    spec: RemoteSpec
    remote: RemoteConfig
    mountpoint: Path
    cache_dir: Path
    cache_max_size: int
    fs: FsOptions
    read: ReadOptions
    read_only: bool = False
    warm_up: bool = True
    max_memory: int = 256 << 20
    write_back_delay: float = 5.0
    flush_interval: float = 30.0
    allow_other: bool = False
    allow_non_empty: bool = False
    manifest_url: str | None = None  # SPEC was a manifest URL (read-only)
    token_file: str | None = None  # the link service's token, for `manifest_url`
    metrics: tuple[str, int] | None = None  # where /metrics listens; None: off
    store_timeout: float = 60.0  # seconds a store request may wait for its next bytes
    # Where reads come from, first to last, the primary (`spec`) among them (one: just it).
    # A manifest URL's mount: the `--source` ones, read before the manifest's own sources.
    sources: tuple[RemoteSpec, ...] = ()
    config_path: str | None = None  # where the sources' remotes are found
    min_rate: float = 0.0
    fill_timeout: float = 600.0  # see `store.sitefill`

    @property
    def source(self) -> str:
        if self.manifest_url is not None:
            return url_name(self.manifest_url)
        return self.spec.source

    @property
    def cache_identity(self) -> str:
        """What one cache root (blocks, write-back journals) belongs to: endpoint and bucket,
        so mounts of different prefixes, or on different mountpoints, share blocks; a manifest
        URL's mount, its URL without the query."""
        if self.manifest_url is not None:
            return f"url|{self.source}"
        return f"{self.remote.endpoint or 'aws'}|{self.spec.bucket}"

    def cache_root(self) -> Path:
        """One cache per (endpoint, bucket), named after `cache_identity`."""
        digest = hashlib.sha256(self.cache_identity.encode()).hexdigest()[:16]
        return self.cache_dir / f"{(self.spec.bucket or URL_REMOTE)[:32]}-{digest}"

    def snapshot_file(self) -> SnapshotFile:
        """The metadata snapshot of this mount's prefix (see `daemon.snapshot`)."""
        return SnapshotFile(self.cache_root(), self.source, self.spec.prefix)

    def writeback_root(self) -> Path:
        """This mount's write-back root, by mountpoint: mounts that share a cache root never
        share staging files or a journal, and a mount again on the same mountpoint finds what
        the last one left to upload."""
        return self.cache_root() / f"writeback-{mount_id(self.mountpoint)}"


def mount_config(args: argparse.Namespace) -> MountConfig:
    """The settings of `modelfs mount`, from its parsed arguments (see `config.options`)."""
    given: tuple[str, ...] = tuple(getattr(args, "source", None) or ())
    manifest_url = args.spec if args.spec.startswith(("http://", "https://")) else None
    if manifest_url is not None:
        remote, spec = RemoteConfig(name=URL_REMOTE), RemoteSpec(URL_REMOTE, "", "")
        sources = [parse_spec(text) for text in given]  # before the manifest's own
    else:
        remote, spec = resolve(args.spec, args.config)
        sources = mount_sources(spec, given, remote.sources)
    for other in sources:
        if other != spec:
            resolve(str(other), args.config)  # an unknown remote fails here, before mounting
    return MountConfig(
        spec=spec,
        remote=remote,
        mountpoint=Path(os.path.abspath(args.mountpoint)),
        cache_dir=Path(os.path.abspath(os.path.expanduser(args.cache_dir))),
        cache_max_size=args.cache_max_size,
        fs=FsOptions(
            uid=args.uid, gid=args.gid, umask=args.umask, dir_cache_time=args.dir_cache_time
        ),
        read=ReadOptions(
            transfers=args.transfers,
            part_size=args.part_size,
            readahead_max=args.part_size * args.transfers,
            whole_fetch_max=args.cache_max_size // 2,
            prefetch_small=args.prefetch_small,
            burst_ttl=args.dir_cache_time,
            drop_behind_auto=args.drop_behind is None,
            drop_behind_min=args.drop_behind or 0,
        ),
        read_only=args.read_only or manifest_url is not None,
        warm_up=args.warm_up,
        max_memory=args.max_memory,
        write_back_delay=args.write_back,
        flush_interval=args.flush_interval,
        allow_other=args.allow_other,
        allow_non_empty=args.allow_non_empty,
        manifest_url=manifest_url,
        token_file=args.token_file,
        metrics=args.metrics,
        store_timeout=args.store_timeout,
        sources=tuple(sources),
        config_path=args.config,
        min_rate=args.min_rate,
        fill_timeout=args.fill_timeout,
    )


URL_REMOTE = "url"  # the remote name of a manifest URL's mount (no config section)


def url_name(url: str) -> str:
    """`url` without its query and fragment, and without ',' (a FUSE option separator)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")).replace(",", "%2C")
