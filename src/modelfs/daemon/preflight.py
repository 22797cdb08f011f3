"""Every check that can fail before mounting, each failure one line naming what to fix, and
the stores the checks pass on to the mount.

In order: FUSE usable; the control directory ours alone (`host.control`); the mountpoint
usable (exists, a directory, empty unless allowed, not mounted, not a dead mount); the cache
dir ours, writable by no other user (a block planted there would be served to the app) and
writable by us; the cache root of this bucket ours alone (0700; other mounts may use it too:
the block cache is shared, and each mount's write-back root, locked by the mount, is its own);
the primary's bucket (or the manifest URL) reachable with these credentials. Nothing is mounted
before all of them pass, with one exception: a store that cannot be reached
(`StoreUnavailable`) while the cache holds a metadata snapshot of this prefix lets the mount
start offline from it (see `daemon.storewatch`). The other sources of a mount (`make_sources`)
are not checked: a site cache that is down when the mount starts is only left for the primary,
read after read, as it would be later.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelfs.daemon.settings import MountConfig
from modelfs.errors import MountError, StoreUnavailable
from modelfs.host import control, mountinfo, private
from modelfs.pull.manifeststore import manifest_store
from modelfs.pull.plan import auth_headers
from modelfs.store.protocol import ObjectStore
from modelfs.store.s3 import S3Store
from modelfs.store.sources import Source, SourceList
from modelfs.store.sourcespec import SourceSettings, remote_source

# A source that failed (down, slow, missing an object, another version) is tried again after
# this long: a site cache that comes back, or syncs, is used again.
SOURCE_RETRY_AFTER = 30.0

CONNECT_TIMEOUT = 5.0  # seconds; less if --store-timeout is shorter


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available: /dev/fuse is missing (load the fuse module)")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        raise MountError(f"FUSE is not available: cannot open /dev/fuse: {exc.strerror}") from exc


def check_mountpoint(mountpoint: Path, *, allow_non_empty: bool) -> None:
    path = str(mountpoint)
    entry = mountinfo.find_mount(control.canonical_mountpoint(path), mountinfo.read_mountinfo())
    if entry is not None:
        if mountinfo.is_dead(path):
            raise MountError(
                f"{path} is a dead mount (transport endpoint is not connected): "
                f"run `modelfs unmount {path}` first"
            )
        raise MountError(f"{path} is already mounted ({entry.fstype} {entry.source})")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        raise MountError(f"mountpoint {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    if not allow_non_empty and os.listdir(path):
        raise MountError(f"mountpoint {path} is not empty (use --allow-non-empty to mount over it)")


def check_cache_dir(cache_dir: Path) -> None:
    """The cache dir exists (made 0700), is ours, no other user can write it, and we can."""
    try:
        private.make_dirs(cache_dir)
    except OSError as exc:
        raise MountError(f"cache dir {cache_dir} is not writable: {exc.strerror or exc}") from exc
    private.require_dir(cache_dir, "cache dir")
    try:
        probe = cache_dir / f".probe-{os.getpid()}"
        os.close(private.open_new(probe))
        probe.unlink()
    except OSError as exc:
        raise MountError(f"cache dir {cache_dir} is not writable: {exc.strerror or exc}") from exc


def make_store(config: MountConfig) -> ObjectStore:
    if config.manifest_url is not None:  # fetched now: a wrong URL or token fails here
        settings = SourceSettings(
            transfers=config.read.transfers,
            stall_timeout=config.store_timeout,
            min_rate=config.min_rate,
            headers=auth_headers(config.token_file),
        )
        extra = [str(spec) for spec in config.sources]  # --source: before the manifest's own
        return manifest_store(config.manifest_url, config.config_path, settings, extra)
    # Readahead and demand GETs each use up to `transfers` connections; the rest is for
    # listings, uploads and the occasional HEAD.
    return S3Store(
        config.remote,
        config.spec.bucket,
        max_connections=2 * config.read.transfers + 16,
        connect_timeout=min(CONNECT_TIMEOUT, config.store_timeout),
        read_timeout=config.store_timeout,
    )


def make_sources(config: MountConfig, store: ObjectStore) -> SourceList | None:
    """The mount's reads with fallback, source after source (None: the primary alone, or a
    manifest URL's mount, whose store reads from its sources itself). Keys are the primary's;
    another source's key has its own prefix for the mount's."""
    if len(config.sources) <= 1 or config.manifest_url is not None:
        return None
    settings = SourceSettings(
        transfers=config.read.transfers,
        stall_timeout=config.store_timeout,
        min_rate=config.min_rate,
    )
    sources = [
        Source(spec.source, store, lambda key: key)
        if spec == config.spec
        else remote_source(
            str(spec), config.config_path, settings, lookup=True, strip=config.spec.prefix
        )
        for spec in config.sources
    ]
    return SourceList(
        sources,
        min_rate=config.min_rate,
        primary=config.spec.source,
        retry_after=SOURCE_RETRY_AFTER,
        fill_timeout=config.fill_timeout,
    )


def preflight(config: MountConfig) -> tuple[ObjectStore, StoreUnavailable | None]:
    """Every check; returns the store, and the reason the store cannot be reached if the
    mount is to start offline from its snapshot."""
    check_fuse()
    control.checked_dir(create=True)
    check_mountpoint(config.mountpoint, allow_non_empty=config.allow_non_empty)
    check_cache_dir(config.cache_dir)
    private.own_dir(config.cache_root(), "cache dir")
    store = make_store(config)
    try:
        store.check_bucket()
    except StoreUnavailable as exc:
        if not config.snapshot_file().exists():
            raise
        return store, exc
    return store, None
