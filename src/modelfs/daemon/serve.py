"""A mount's life: it builds the parts, owns every lifecycle, and serves until unmounted.

Order of a mount:
1. `preflight` (see there): every check that can fail, before anything is mounted.
   (Wiring that crosses layers is done here: on a full cache disk the writer asks for room,
   and the block cache gives blocks back; write/ never imports cache/.)
2. `Mount` builds store (guarded: its health is known, see `store.health`) -> cache ->
   fetcher -> read policy, namespace, writer -> filesystem core -> FUSE adapter. The writer is
   the write-back engine, or on a read-only mount the null writer that answers EROFS. A mount
   whose store cannot be reached at mount time starts offline: its namespace holds the
   metadata snapshot of its prefix, and its write-back engine is gated read-only until the
   store answers (`daemon.storewatch`). Nothing is wired after construction.
3. `serve` starts the `--metrics` server (a thread; failing to listen fails the mount before
   anything is mounted), mounts, then runs in one nursery: the read policy (GETs, whole-file
   fetches), the writer's uploads, the store watch (probes, snapshots, uploads refused before
   new keys), the mount-time warm-up, signal handling, and readiness; the control socket
   answers `status`, `sync`, `warm` (`daemon.warm`) and `replay` (`daemon.replay`: a start
   profile fetched ahead of `modelfs run`'s app, the start recorded); the FUSE session runs
   until unmounted.
4. Ready: once a stat of the mountpoint answers (from a worker thread: the stat goes through
   our own loop), the kernel readahead is raised, the control socket opens, READY=1 goes to
   systemd and the `--daemon` parent is told.
5. SIGINT/SIGTERM (or `modelfs unmount`): STOPPING=1, leave the FUSE loop, save the metadata
   snapshot and a start profile being recorded, upload everything written (`drain`, with a
   progress line), close the writer, unmount, stop the metrics server.
What the mount reports (`status`, `/metrics`) is one `figures()` snapshot (`daemon.figures`).
This module is the only owner of these lifecycles: nothing else starts, drains or closes them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from modelfs.cache.disk import DiskBlockCache
from modelfs.config.remote import RemoteSpec
from modelfs.config.units import format_size
from modelfs.core.filesystem import Filesystem
from modelfs.core.namespace import Namespace
from modelfs.daemon import control_server
from modelfs.daemon.figures import MountFigures
from modelfs.daemon.fuse_ops import FuseOperations
from modelfs.daemon.preflight import make_sources, preflight
from modelfs.daemon.replay import Replays
from modelfs.daemon.settings import MountConfig
from modelfs.daemon.storewatch import StoreWatch, start_offline
from modelfs.daemon.warm import Warmer
from modelfs.daemon.warmup import warm_up
from modelfs.errors import ModelfsError, NotFound, StoreUnavailable, UploadFailed
from modelfs.host import control, mountinfo, notify
from modelfs.host.meminfo import available_memory
from modelfs.memory import MemoryBudget, tune_malloc
from modelfs.objects import ObjectInfo
from modelfs.pull.manifest import MANIFEST_NAME, parse_manifest
from modelfs.pull.manifeststore import ManifestStore
from modelfs.read.dropbehind import PageCacheTrimmer
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.policy import ReadPolicy
from modelfs.read.verify import Verifications
from modelfs.store.guarded import GuardedStore
from modelfs.store.health import StoreHealth
from modelfs.store.protocol import ObjectStore
from modelfs.store.s3 import S3Store
from modelfs.store.sources import SourceStatistics
from modelfs.write.engine import WriteBack
from modelfs.write.gate import GatedWriter
from modelfs.write.protocol import ReadOnlyWriter, Writer
from modelfs.write.queue import WriteBackStatistics
from modelfs.write.staging import take_over

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20  # the largest FUSE read (256 pages) is 1 MiB: one request, one block
_READAHEAD_KB = 1024  # raise the kernel's 128 KiB default so requests arrive as 1 MiB reads
_READY_TIMEOUT = 30.0
_LISTING_THREADS = 16  # LIST requests at once: `ls -lR` of a wide tree lists in parallel
_ROOM_STEP = 64 << 20  # what a full cache disk gives back to write-back at a time


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {f"fsname={config.source}", "subtype=modelfs", "noatime"}
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


Ready = Callable[[str | None], None]
"""Called once the mount answers, with a warning for the user (it started offline) or None."""


class Mount:
    def __init__(
        self,
        config: MountConfig,
        unguarded: ObjectStore,
        on_ready: Ready,
        offline: StoreUnavailable | None = None,
    ) -> None:
        self.config = config
        self.health = StoreHealth(offline=offline)
        self.store = store = GuardedStore(unguarded, self.health)
        self._on_ready = on_ready
        self.warning: str | None = None
        self.real_mountpoint = control.canonical_mountpoint(config.mountpoint)
        self.mount_id = control.mount_id(self.real_mountpoint)
        transfers = config.read.transfers
        self.cache = DiskBlockCache(
            config.cache_root() / "blocks", BLOCK_SIZE, config.cache_max_size
        )
        self.budget = MemoryBudget(config.max_memory)
        # Reads from the sources in order (the primary alone by default); listings, the
        # manifest and writes from the primary only.
        self.sources = make_sources(config, store)
        # Offline: the guard refuses at once, and nothing is verified (logged).
        expectations = manifest_expectations(unguarded if offline is None else store, config.spec)
        if self.sources is not None:
            log.info("reading from %s", ", then ".join(s.name for s in self.sources.sources))
            for key, (size, _) in expectations.items():
                self.sources.verified(key, size)
        self.fetcher = BlockFetcher(
            self.sources or store,
            self.cache,
            demand_limiter=trio.CapacityLimiter(transfers),
            prefetch_limiter=trio.CapacityLimiter(transfers),
            budget=self.budget,
        )
        self.namespace = Namespace(
            store,
            config.spec.prefix,
            ttl=config.fs.dir_cache_time,
            limiter=trio.CapacityLimiter(_LISTING_THREADS),
        )
        snapshot = config.snapshot_file()
        if offline is not None:
            self.warning = start_offline(
                self.namespace, snapshot, offline, config.source, read_only=config.read_only
            )
        trimmer = None
        if config.read.drop_behind_auto or config.read.drop_behind_min:
            trimmer = PageCacheTrimmer(self.real_mountpoint)
        self.reads = ReadPolicy(
            self.fetcher,
            config.read,
            siblings=self._files_in,
            trimmer=trimmer,
            memory=available_memory,
            verifications=Verifications(expectations),
        )
        self.warmer = Warmer(self.namespace, self.reads, self.cache)
        self.replays = Replays(
            store,
            self.namespace,
            self.reads,
            read_only=config.read_only,
            max_bytes=config.cache_max_size // 2,  # a replay never churns the whole cache
        )
        self.writer: Writer = ReadOnlyWriter()
        if not config.read_only:
            if take_over(config.cache_root() / "writeback", config.writeback_root()):
                log.info("write-back: took over %s", config.cache_root() / "writeback")
            self.writer = WriteBack(
                store,
                config.writeback_root(),  # this mount's alone; the block cache is shared
                upload_delay=config.write_back_delay,
                flush_interval=config.flush_interval,
                listener=self.namespace,
                source=self.fetcher.chunks,  # a file opened to append reads through the cache
                identity=config.cache_identity,  # the root's: any prefix of the bucket
                budget=self.budget,  # upload bodies count against --max-memory too
                make_room=self._room_for_write_back,
            )
        gate = None
        if offline is not None and not config.read_only:
            self.writer = gate = GatedWriter(self.writer)
        self.fs = Filesystem(self.namespace, self.reads, self.writer, config.fs)
        keys = unguarded.session.keys_changes if isinstance(unguarded, S3Store) else None
        self.watch = StoreWatch(
            store, self.namespace, snapshot, self.writer, gate=gate, keys_changes=keys
        )
        self.started = time.time()

    def _room_for_write_back(self, needed: int) -> int:
        """The cache disk is full: written data matters more than cached blocks, which can be
        fetched again. Give back at least `_ROOM_STEP` so the next writes find room too."""
        freed = self.cache.give_back(max(needed, _ROOM_STEP))
        log.warning("cache disk full: evicted %s of blocks for write-back", format_size(freed))
        return freed

    async def _files_in(self, directory: str) -> Iterable[ObjectInfo]:
        return (await self.namespace.listing(directory)).files.values()

    async def serve(self) -> None:
        with self._metrics():
            await self._serve_fuse()

    @contextlib.contextmanager
    def _metrics(self) -> Iterator[None]:
        """The `--metrics` server, around the whole life of the FUSE session."""
        if self.config.metrics is None:
            yield
            return
        from modelfs.daemon.metrics import MetricsServer, from_trio  # prometheus_client

        token = trio.lowlevel.current_trio_token()
        server = MetricsServer.start(self.config.metrics, from_trio(self.figures, token))
        try:
            yield
        finally:
            server.close()

    async def _serve_fuse(self) -> None:
        mountpoint = str(self.config.mountpoint)
        pyfuse3.init(FuseOperations(self.fs), mountpoint, fuse_options(self.config))
        log.info("mounted %s on %s", self.config.source, mountpoint)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.reads.run)
                await nursery.start(self.replays.run)
                nursery.start_soon(self.writer.run)
                nursery.start_soon(self.watch.run)
                if self.config.warm_up:
                    nursery.start_soon(warm_up, self.namespace, self.fetcher)
                nursery.start_soon(self._handle_signals)
                nursery.start_soon(self._become_ready, nursery)
                await pyfuse3.main()
                await self.watch.save_now()
                await self._drain_before_exit()
                nursery.cancel_scope.cancel()
        finally:
            self.writer.close()
            notify.notify("STOPPING=1")
            control.remove_state(self.mount_id, pid=os.getpid())
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)

    async def _handle_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: unmounting", signal.Signals(signum).name)
                notify.notify("STOPPING=1")
                pyfuse3.terminate()
                return

    async def _become_ready(self, nursery: trio.Nursery) -> None:
        mountpoint = str(self.config.mountpoint)
        with trio.fail_after(_READY_TIMEOUT):
            await trio.to_thread.run_sync(os.stat, mountpoint)
        raise_kernel_readahead(self.real_mountpoint)
        await nursery.start(control_server.serve, self.mount_id, self._control)
        control.write_state(
            self.mount_id,
            {
                "spec": self.config.source,
                "mountpoint": self.real_mountpoint,
                "cache_dir": str(self.config.cache_root()),
                "started": self.started,
            },
        )
        notify.notify("READY=1", f"STATUS=serving {self.config.source} on {mountpoint}")
        self._on_ready(self.warning)

    async def _drain_before_exit(self) -> None:
        """Save a start being recorded, and upload everything written before exiting, with a
        progress line while it takes."""
        await self.replays.finish()
        pending = self.writer.statistics()
        if pending is None:
            return

        def progress(stats: WriteBackStatistics) -> None:
            log.info(
                "unmounted; uploading %d file(s), %s, before exit%s",
                stats.files,
                format_size(stats.bytes),
                f" (last error: {stats.last_error})" if stats.last_error else "",
            )

        try:
            await self.writer.drain(progress, interval=2.0)
        except UploadFailed as exc:
            log.error("%s in %s; the next mount uploads them", exc, self.config.cache_root())
            return
        if pending.files or pending.deletes:
            log.info("all written files are in the bucket")

    async def _control(self, request: dict[str, Any], send: control_server.Send) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "warm":
            return await self.warmer.handle(request, send)
        if command == "replay":
            return await self.replays.handle(request, send)
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "sync":
            return await self._sync(request.get("timeout"))
        return {"ok": False, "error": f"unknown command {command!r}"}

    async def _sync(self, within: object) -> dict[str, Any]:
        """`modelfs sync [--timeout SECONDS]`: everything written so far in the bucket."""
        limit = float(within) if isinstance(within, int | float) else math.inf
        try:
            with trio.move_on_after(limit) as waited:
                await self.writer.drain()
        except UploadFailed as exc:
            return {"ok": False, "error": str(exc)}
        if not waited.cancelled_caught:
            return {"ok": True}
        stats = self.writer.statistics()
        left = f"{stats.files} file(s), {format_size(stats.bytes)}" if stats else "uploads"
        error = f"; last error: {stats.last_error}" if stats and stats.last_error else ""
        return {"ok": False, "error": f"not done within {limit:g}s: {left} still to upload{error}"}

    def status(self) -> dict[str, Any]:
        return self.figures().as_status()

    def figures(self) -> MountFigures:
        """Every part's statistics, taken together (trio thread)."""
        return MountFigures(
            pid=os.getpid(),
            source=self.config.source,
            mountpoint=str(self.config.mountpoint),
            uptime=time.time() - self.started,
            cache=self.cache.statistics(),
            fetcher=self.fetcher.statistics(),
            memory=self.budget.statistics(),
            namespace=self.namespace.statistics(),
            fs=self.fs.statistics(),
            reads=self.reads.statistics(),
            read_latency=self.fs.read_latency.statistics(),
            writeback=self.writer.statistics(),
            store=self.health.statistics(),
            read_only=self.writer.read_only,
            sources=self._source_statistics(),
        )

    def _source_statistics(self) -> SourceStatistics | None:
        """Bytes and fallbacks per source, for a mount of several (a manifest's: its own)."""
        sources = self.sources
        if sources is None and isinstance(self.store.store, ManifestStore):
            sources = self.store.store.sources
        return sources.statistics() if sources is not None else None


def manifest_expectations(store: ObjectStore, spec: RemoteSpec) -> dict[str, tuple[int, str]]:
    """The (size, sha256) of every file the prefix's manifest lists, by key (none: {})."""
    if isinstance(store, ManifestStore):
        return store.expectations()
    key = spec.prefix + MANIFEST_NAME
    try:
        info = store.head(key)
        text = store.get_range(info.id, 0, info.size).decode("utf-8", "replace")
        manifest = parse_manifest(text, f"{spec.source}/{MANIFEST_NAME}")
    except NotFound:
        return {}
    except ModelfsError as exc:
        log.warning("not verifying files against the manifest: %s", exc)
        return {}
    log.info("verifying the %d files of %s as they are read", len(manifest.files), key)
    return {spec.prefix + f.path: (f.size, f.sha256) for f in manifest.files}


def raise_kernel_readahead(real_mountpoint: str) -> None:
    """Ask for 1 MiB FUSE reads (the kernel sizes read requests by the bdi's readahead)."""
    entry = mountinfo.find_mount(real_mountpoint, mountinfo.read_mountinfo())
    if entry is None:
        return
    path = Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb")
    try:
        path.write_text(str(_READAHEAD_KB))
    except OSError as exc:
        log.info("could not raise readahead via %s: %s (reads stay 128 KiB)", path, exc)


def run(config: MountConfig, on_ready: Ready) -> None:
    """Mount and serve until unmounted or signalled. Raises ModelfsError before mounting."""
    tune_malloc(config.max_memory)
    store, offline = preflight(config)
    mount = Mount(config, store, on_ready, offline)
    trio.run(mount.serve)
