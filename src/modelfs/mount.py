"""Mount lifecycle: checks before mounting, the trio main loop, readiness, clean shutdown.

Order of a mount:
1. `preflight`: FUSE usable, mountpoint usable (exists, a directory, empty, not mounted, not a
   dead mount), cache dir writable and not used by another mount, bucket reachable. Each
   failure is one line naming what to fix, and happens before anything is mounted.
2. `serve`: builds store -> cache -> fetcher -> fs -> FUSE adapter, mounts, then in parallel
   runs the FUSE session, the background fetch machinery, the control socket and signal handling.
3. Ready: once a stat of the mountpoint answers (from a worker thread: the stat goes through
   our own loop), the kernel readahead is raised, READY=1 is sent to systemd and the `--daemon`
   parent is told through the ready pipe.
4. SIGINT/SIGTERM (or `modelfs unmount`): STOPPING=1, leave the FUSE loop, unmount.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from . import control, control_server, mountcheck, notify
from .blockcache import DiskBlockCache
from .budget import MemoryBudget
from .errors import MountError
from .fetcher import BlockFetcher
from .fs import Filesystem, FsOptions
from .fuse_ops import FuseOperations
from .memtune import keep_block_memory
from .namespace import Namespace
from .pagecache import PageCacheTrimmer
from .remote import RemoteConfig, RemoteSpec
from .s3store import S3Store
from .upload_queue import WriteBackStatistics
from .values import format_size
from .writeback import WriteBack

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20  # the kernel's largest FUSE read here is 1 MiB: one request, one block
_READAHEAD_KB = 1024  # raise the kernel's 128 KiB default so requests arrive as 1 MiB reads
_READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class MountConfig:
    spec: RemoteSpec
    remote: RemoteConfig
    mountpoint: Path
    cache_dir: Path
    cache_max_size: int
    fs: FsOptions
    max_memory: int = 256 << 20
    write_back_delay: float = 5.0
    flush_interval: float = 30.0
    allow_other: bool = False
    allow_non_empty: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        prefix = self.spec.prefix.rstrip("/")
        return f"{self.spec.remote}:{self.spec.bucket}" + (f"/{prefix}" if prefix else "")

    def cache_root(self) -> Path:
        """One cache per (endpoint, bucket): mounts of different prefixes share blocks."""
        ident = f"{self.remote.endpoint or 'aws'}|{self.spec.bucket}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.spec.bucket[:32]}-{digest}"


# -- preflight ---------------------------------------------------------------------------------


def check_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available: /dev/fuse is missing (load the fuse module)")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        raise MountError(f"FUSE is not available: cannot open /dev/fuse: {exc.strerror}") from exc


def _is_dead(path: str) -> bool:
    """A FUSE mount whose daemon is gone. statfs always reaches the daemon; stat may be
    answered from the kernel's attribute cache and look fine."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def check_mountpoint(mountpoint: Path, *, allow_non_empty: bool) -> None:
    path = str(mountpoint)
    entry = mountcheck.find_mount(control.canonical_mountpoint(path), mountcheck.read_mountinfo())
    if entry is not None:
        if _is_dead(path):
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


def check_cache_dir(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        raise MountError(f"cache dir {root} is not writable: {exc.strerror or exc}") from exc


def lock_cache(root: Path) -> int:
    """Hold an exclusive lock on the cache root for the life of the mount."""
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise MountError(
            f"cache dir {root} is in use by another modelfs mount (pid {holder}); "
            "use another --cache-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def make_store(config: MountConfig) -> S3Store:
    return S3Store(
        config.remote,
        config.spec.bucket,
        max_connections=2 * config.fs.transfers + 16,
    )


def preflight(config: MountConfig) -> tuple[S3Store, int]:
    """Every check that can fail before mounting; returns the store and the cache lock fd."""
    check_fuse()
    check_mountpoint(config.mountpoint, allow_non_empty=config.allow_non_empty)
    root = config.cache_root()
    check_cache_dir(root)
    lock_fd = lock_cache(root)
    try:
        store = make_store(config)
        store.check_bucket()
    except BaseException:
        os.close(lock_fd)
        raise
    return store, lock_fd


# -- serving -----------------------------------------------------------------------------------


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {f"fsname={config.source}", "subtype=modelfs", "noatime"}
    if config.fs.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


class Mount:
    def __init__(self, config: MountConfig, store: S3Store, on_ready: Callable[[], None]) -> None:
        self.config = config
        self.store = store
        self._on_ready = on_ready
        options = config.fs
        self.cache = DiskBlockCache(
            config.cache_root() / "blocks", BLOCK_SIZE, config.cache_max_size
        )
        self.budget = MemoryBudget(config.max_memory)
        self.fetcher = BlockFetcher(
            store,
            self.cache,
            demand_limiter=trio.CapacityLimiter(options.transfers),
            prefetch_limiter=trio.CapacityLimiter(options.transfers),
            budget=self.budget,
        )
        self.namespace = Namespace(
            store,
            config.spec.prefix,
            ttl=options.dir_cache_time,
            limiter=trio.CapacityLimiter(16),
        )
        self.real_mountpoint = control.canonical_mountpoint(config.mountpoint)
        trimmer = PageCacheTrimmer(self.real_mountpoint) if options.drop_behind_min else None
        self.fs = Filesystem(self.namespace, self.fetcher, options, trimmer=trimmer)
        self.writeback: WriteBack | None = None
        if not options.read_only:
            self.writeback = WriteBack(
                store,
                config.cache_root() / "writeback",
                upload_delay=config.write_back_delay,
                flush_interval=config.flush_interval,
                listener=self.fs,
                identity=config.source,
                budget=self.budget,  # upload bodies count against --max-memory too
            )
            self.fs.writeback = self.writeback
        self.started = time.time()
        self.mount_id = control.mount_id(self.real_mountpoint)

    async def serve(self) -> None:
        mountpoint = str(self.config.mountpoint)
        pyfuse3.init(FuseOperations(self.fs), mountpoint, fuse_options(self.config))
        log.info("mounted %s on %s", self.config.source, mountpoint)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.fs.run)
                nursery.start_soon(self._handle_signals)
                nursery.start_soon(self._become_ready, nursery)
                await pyfuse3.main()
                await self._drain_before_exit()
                nursery.cancel_scope.cancel()
        finally:
            if self.writeback is not None:
                self.writeback.close()
            notify.notify("STOPPING=1")
            control.remove_state(self.mount_id)
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
                "pid": os.getpid(),
                "spec": self.config.source,
                "mountpoint": self.real_mountpoint,
                "cache_dir": str(self.config.cache_root()),
                "started": self.started,
            },
        )
        notify.notify("READY=1", f"STATUS=serving {self.config.source} on {mountpoint}")
        self._on_ready()

    async def _drain_before_exit(self) -> None:
        """Upload everything written before exiting, with a progress line while it takes."""
        if self.writeback is None:
            return

        def progress(stats: WriteBackStatistics) -> None:
            log.info(
                "unmounted; uploading %d file(s), %s, before exit%s",
                stats.files,
                format_size(stats.bytes),
                f" (last error: {stats.last_error})" if stats.last_error else "",
            )

        pending = self.writeback.statistics()
        await self.writeback.drain(progress, interval=2.0)
        if pending.files or pending.deletes:
            log.info("all written files are in the bucket")

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "sync":
            if self.writeback is not None:
                await self.writeback.drain()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "source": self.config.source,
            "mountpoint": str(self.config.mountpoint),
            "uptime": round(time.time() - self.started, 1),
            "cache": asdict(self.cache.statistics()),
            "fetcher": asdict(self.fetcher.statistics()),
            "memory": asdict(self.budget.statistics()),
            "namespace": asdict(self.namespace.statistics()),
            "fs": asdict(self.fs.statistics()),
            "writeback": asdict(self.writeback.statistics()) if self.writeback else None,
        }


def raise_kernel_readahead(real_mountpoint: str) -> None:
    """Ask for 1 MiB FUSE reads (the kernel sizes read requests by the bdi's readahead)."""
    entry = mountcheck.find_mount(real_mountpoint, mountcheck.read_mountinfo())
    if entry is None:
        return
    path = Path(f"/sys/class/bdi/{entry.device}/read_ahead_kb")
    try:
        path.write_text(str(_READAHEAD_KB))
    except OSError as exc:
        log.info("could not raise readahead via %s: %s (reads stay 128 KiB)", path, exc)


def run(config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Mount and serve until unmounted or signalled. Raises ModelfsError before mounting."""
    keep_block_memory(config.max_memory)
    store, lock_fd = preflight(config)
    try:
        mount = Mount(config, store, on_ready)
        trio.run(mount.serve)
    finally:
        os.close(lock_fd)


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount, also a dead mount (ENOTCONN) which needs a lazy detach."""
    path = os.path.abspath(mountpoint)
    entry = mountcheck.find_mount(control.canonical_mountpoint(path), mountcheck.read_mountinfo())
    if entry is None:
        raise MountError(f"{path} is not mounted")
    dead = _is_dead(path)
    command = ["fusermount3", "-u"] + (["-z"] if lazy or dead else []) + [path]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        if "busy" in message.lower():
            raise MountError(f"{path} is busy (files open?): close them or use --lazy")
        raise MountError(f"cannot unmount {path}: {message}")
    state = control.read_state(path)
    if state is not None:
        _wait_for_exit(int(state["pid"]))
    with contextlib.suppress(OSError):
        control.remove_state(control.mount_id(path))


def _wait_for_exit(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
