"""`MountConfig`: everything one mount needs, resolved from `modelfs mount`'s arguments.

The options themselves (names, defaults, parsers) are `config.options`; this only gathers the
parsed values into the settings of each part of the mount (`FsOptions` for the core,
`ReadOptions` for the read policy, and the rest for the daemon and write-back).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from modelfs.config.files import resolve
from modelfs.config.remote import RemoteConfig, RemoteSpec
from modelfs.config.sourcelist import mount_sources
from modelfs.core.attributes import FsOptions
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
    # Where reads come from, first to last, the primary (`spec`) among them (one: just it).
    sources: tuple[RemoteSpec, ...] = ()
    config_path: str | None = None  # where the sources' remotes are found
    stall_timeout: float = 60.0
    min_rate: float = 0.0

    @property
    def source(self) -> str:
        return self.spec.source

    def cache_root(self) -> Path:
        """One cache per (endpoint, bucket): mounts of different prefixes share blocks."""
        ident = f"{self.remote.endpoint or 'aws'}|{self.spec.bucket}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.spec.bucket[:32]}-{digest}"


def mount_config(args: argparse.Namespace) -> MountConfig:
    """The settings of `modelfs mount`, from its parsed arguments (see `config.options`)."""
    remote, spec = resolve(args.spec, args.config)
    sources = mount_sources(spec, getattr(args, "source", None) or (), remote.sources)
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
            drop_behind_min=args.drop_behind,
        ),
        read_only=args.read_only,
        warm_up=args.warm_up,
        max_memory=args.max_memory,
        write_back_delay=args.write_back,
        flush_interval=args.flush_interval,
        allow_other=args.allow_other,
        allow_non_empty=args.allow_non_empty,
        sources=tuple(sources),
        config_path=args.config,
        stall_timeout=args.stall_timeout,
        min_rate=args.min_rate,
    )
