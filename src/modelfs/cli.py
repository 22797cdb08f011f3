"""The `modelfs` command line: parsing, one-line errors, exit codes.

Exit codes: 0 success; 1 a runtime failure; 2 bad input (usage, config, mountpoint). Every
error is one line on stderr, `modelfs: error: ...`; tracebacks only with --verbose.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, control
from .errors import ConfigError, ModelfsError, MountError
from .remote import describe_remotes, resolve
from .values import format_size, parse_duration, parse_size

log = logging.getLogger("modelfs")

READY_FD_ENV = "MODELFS_READY_FD"
_DAEMON_READY_TIMEOUT = 120.0  # bucket checks fail within seconds; mounting itself is fast
_SUBCOMMAND_MODULES = ("modelfs.supervisor", "modelfs.systemd_units")


class UsageError(ModelfsError):
    errno = 22


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "modelfs")


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `mount` and anything that mounts (e.g. `run`)."""
    parser.add_argument(
        "--cache-dir",
        default=_default_cache_dir(),
        help="block cache and write-back staging (default %(default)s)",
    )
    parser.add_argument(
        "--cache-max-size",
        default="10G",
        type=parse_size,
        help="evict least-recently-used blocks beyond this (default 10G)",
    )
    parser.add_argument(
        "--dir-cache-time",
        default="60s",
        type=parse_duration,
        help="how long listings and attributes are cached (default 60s)",
    )
    parser.add_argument(
        "--uid", type=int, default=os.getuid(), help="owner of files (default: you)"
    )
    parser.add_argument(
        "--gid", type=int, default=os.getgid(), help="group of files (default: yours)"
    )
    parser.add_argument(
        "--umask",
        type=lambda text: int(text, 8),
        default=0o022,
        help="octal umask for modes (default 022)",
    )
    parser.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)",
    )
    parser.add_argument(
        "--allow-non-empty", action="store_true", help="mount over a non-empty directory"
    )
    parser.add_argument("--read-only", action="store_true", help="refuse every write with EROFS")
    parser.add_argument(
        "--transfers", type=int, default=16, help="parallel ranged GETs per direction (default 16)"
    )
    parser.add_argument(
        "--part-size", type=parse_size, default="8M", help="size of one readahead GET (default 8M)"
    )
    parser.add_argument(
        "--max-memory",
        type=parse_size,
        default="256M",
        help="RAM budget for data in flight, fetched blocks and upload parts (default 256M)",
    )
    parser.add_argument(
        "--drop-behind",
        type=parse_size,
        default="2G",
        help="for files at least this large, drop the kernel's cached pages once their one "
        "sequential reader is 32 MiB past them (pages a process has mapped stay); re-reads "
        "come from the block cache. 0 turns it off (default 2G)",
    )
    parser.add_argument(
        "--prefetch-small",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on the first open of a small file (< 1 MiB), fetch its directory's other small "
        "files in one parallel burst (default on)",
    )
    parser.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="at mount time, list the root directory and open a connection to the store, "
        "so the app's first lookup and read do not pay for them (default on)",
    )
    parser.add_argument(
        "--write-back",
        type=parse_duration,
        default="5s",
        help="delay between close and upload (default 5s)",
    )
    parser.add_argument(
        "--flush-interval",
        type=parse_duration,
        default="30s",
        help="upload files held open at least this often (default 30s)",
    )
    parser.add_argument(
        "--log-file", help="log here instead of stderr (--daemon default: CACHE_DIR/modelfs.log)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfs", description="Mount S3 model caches as a local directory."
    )
    parser.add_argument(
        "--config",
        help="config file (default: $MODELFS_CONFIG, ~/.config/modelfs/modelfs.conf, "
        "~/.config/rclone/rclone.conf)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    parser.add_argument("--version", action="version", version=f"modelfs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    mount = commands.add_parser("mount", help="mount REMOTE:BUCKET[/PREFIX] on MOUNTPOINT")
    mount.add_argument("spec", metavar="REMOTE:BUCKET[/PREFIX]")
    mount.add_argument("mountpoint")
    mount.add_argument(
        "--daemon", action="store_true", help="return once mounted, serve in the background"
    )
    add_mount_options(mount)
    mount.set_defaults(func=cmd_mount)

    unmount = commands.add_parser("unmount", aliases=["umount"], help="unmount (also a dead mount)")
    unmount.add_argument("mountpoint")
    unmount.add_argument("--lazy", action="store_true", help="detach now even if busy")
    unmount.set_defaults(func=cmd_unmount)

    remotes = commands.add_parser("remotes", help="list configured remotes (secrets masked)")
    remotes.set_defaults(func=cmd_remotes)

    status = commands.add_parser("status", help="statistics of a running mount")
    status.add_argument("mountpoint")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    sync = commands.add_parser("sync", help="wait until every written file is in the bucket")
    sync.add_argument("mountpoint")
    sync.set_defaults(func=cmd_sync)

    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a partial install should still mount
            log.debug("subcommands of %s unavailable: %s", name, exc)
            continue
        module.register(commands)
    return parser


def setup_logging(level: str, log_file: str | None, verbose: bool) -> None:
    handler: logging.Handler
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else getattr(logging, level))
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- mount ------------------------------------------------------------------------------------


def mount_config(args: argparse.Namespace) -> Any:
    from .fs import FsOptions  # imported here: `status` and `unmount` should start fast
    from .mount import MountConfig

    remote, spec = resolve(args.spec, args.config)
    if args.transfers < 1:
        raise UsageError("--transfers must be at least 1")
    options = FsOptions(
        uid=args.uid,
        gid=args.gid,
        umask=args.umask,
        dir_cache_time=args.dir_cache_time,
        read_only=args.read_only,
        transfers=args.transfers,
        part_size=args.part_size,
        readahead_max=args.part_size * args.transfers,
        whole_fetch_max=args.cache_max_size // 2,
        prefetch_small=args.prefetch_small,
        warm_up=args.warm_up,
        drop_behind_min=args.drop_behind,
    )
    return MountConfig(
        spec=spec,
        remote=remote,
        mountpoint=Path(os.path.abspath(args.mountpoint)),
        cache_dir=Path(os.path.abspath(os.path.expanduser(args.cache_dir))),
        cache_max_size=args.cache_max_size,
        fs=options,
        max_memory=args.max_memory,
        write_back_delay=args.write_back,
        flush_interval=args.flush_interval,
        allow_other=args.allow_other,
        allow_non_empty=args.allow_non_empty,
    )


def cmd_mount(args: argparse.Namespace) -> int:
    config = mount_config(args)
    if args.daemon:
        return _spawn_daemon(args, config.cache_dir)
    from . import mount

    limit_malloc_caching()
    setup_logging(args.log_level, args.log_file, args.verbose)
    ready_fd = int(os.environ.pop(READY_FD_ENV, "-1"))

    def on_ready() -> None:
        log.info("ready: %s on %s", config.source, config.mountpoint)
        _tell_parent(ready_fd, "ok")

    try:
        mount.run(config, on_ready)
    except ModelfsError as exc:
        _tell_parent(ready_fd, f"error: {exc}")
        raise
    return 0


def limit_malloc_caching() -> None:
    """Make glibc give 1 MiB buffers back to the kernel when they are freed.

    By default glibc raises its mmap threshold after the first large free, and from then on
    serves 1 MiB blocks from per-thread heap arenas that it rarely shrinks: a 4 GiB read then
    left the mount ~100 MiB above its data budget. A fixed threshold (which also turns off the
    dynamic one) and at most two arenas keep RSS at the budget plus the interpreter."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    m_arena_max, m_mmap_threshold = -8, -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 128 << 10)
    libc.mallopt(m_arena_max, 2)


def _tell_parent(fd: int, message: str) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, (message + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def _spawn_daemon(args: argparse.Namespace, cache_dir: Path) -> int:
    from .mount import check_cache_dir

    check_cache_dir(cache_dir)  # the default log file lives there
    log_file = args.log_file or str(cache_dir / "modelfs.log")
    argv = [a for a in sys.argv[1:] if a != "--daemon"]
    if not args.log_file:
        argv = [
            *argv[: argv.index("mount") + 1],
            "--log-file",
            log_file,
            *argv[argv.index("mount") + 1 :],
        ]
    read_end, write_end = os.pipe()
    env = {**os.environ, READY_FD_ENV: str(write_end)}
    try:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        log_stream = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    except OSError as exc:
        raise MountError(f"cannot open log file {log_file}: {exc.strerror}") from exc
    with log_stream:
        child = subprocess.Popen(
            [sys.executable, "-m", "modelfs", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=log_stream,
            pass_fds=(write_end,),
            env=env,
            start_new_session=True,
        )
    os.close(write_end)
    answer = _wait_for_answer(read_end, child)
    os.close(read_end)
    if answer == "ok":
        return 0
    message = answer.removeprefix("error: ")
    if not message:
        message = f"mount process exited with status {child.poll()}; see {log_file}"
    print(f"modelfs: error: {message}", file=sys.stderr)
    return child.returncode if child.returncode not in (None, 0) else 1


def _wait_for_answer(read_end: int, child: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + _DAEMON_READY_TIMEOUT
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 0.2)
        if ready:
            chunk = os.read(read_end, 4096)
            if not chunk:
                child.wait(timeout=10)
                return buffer.decode().strip()
            buffer += chunk
            if buffer.endswith(b"\n"):
                return buffer.decode().strip()
    child.kill()
    return f"error: mount did not become ready within {_DAEMON_READY_TIMEOUT:.0f}s"


# -- other commands -----------------------------------------------------------------------------


def cmd_unmount(args: argparse.Namespace) -> int:
    from . import mount

    mount.unmount(args.mountpoint, lazy=args.lazy)
    return 0


def cmd_remotes(args: argparse.Namespace) -> int:
    for line in describe_remotes(args.config):
        print(line)
    return 0


def _ask(mountpoint: str, message: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
    try:
        return control.request(mountpoint, message, timeout=timeout)
    except OSError as exc:
        raise MountError(
            f"no modelfs mount answers at {mountpoint} ({exc.strerror or exc})"
        ) from exc


def cmd_status(args: argparse.Namespace) -> int:
    answer = _ask(args.mountpoint, {"cmd": "status"})
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print_status(answer)
    return 0


def print_status(answer: dict[str, Any]) -> None:
    where = f"{answer.get('source')} on {answer.get('mountpoint')}"
    print(f"{where} (pid {answer.get('pid')}, up {answer.get('uptime')}s)")
    cache = answer.get("cache", {})
    if cache:
        used, limit = format_size(cache["bytes"]), format_size(cache["max_bytes"])
        print(
            f"cache: {used} of {limit} in {cache['blocks']} blocks, {cache['hits']} hits,"
            f" {cache['misses']} misses, {cache['evictions']} evictions, {cache['corrupt']} corrupt"
        )
    fs = answer.get("fs", {})
    if fs:
        print(
            f"reads: {fs['reads']} requests, {format_size(fs['bytes_read'])} served,"
            f" {fs['open_files']} files open, {format_size(fs['dropped_behind'])} of page cache"
            " dropped behind readers"
        )
    fetcher = answer.get("fetcher", {})
    if fetcher:
        print(f"fetched: {format_size(fetcher['bytes_fetched'])} in {fetcher['gets']} GETs")
    memory = answer.get("memory", {})
    if memory:
        print(
            f"memory: {format_size(memory['in_use'])} in use of {format_size(memory['limit'])},"
            f" peak {format_size(memory['peak'])}, {memory['waits']} waits for room"
        )
    upload = answer.get("writeback")
    if upload:
        queued = format_size(int(upload.get("bytes", 0)))
        print(
            f"upload queue: {upload.get('files', 0)} files, {queued},"
            f" oldest {upload.get('oldest_age', 0):.0f}s,"
            f" last error: {upload.get('last_error') or 'none'}"
        )


def cmd_sync(args: argparse.Namespace) -> int:
    answer = _ask(args.mountpoint, {"cmd": "sync"}, timeout=None)
    if not answer.get("ok"):
        raise ModelfsError(f"sync failed: {answer.get('error')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ConfigError as exc:  # raised by type= converters such as parse_size
        parser.error(str(exc))
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, MountError, UsageError) as exc:
        _print_error(exc, args)
        return 2
    except ModelfsError as exc:
        _print_error(exc, args)
        return 1
    except KeyboardInterrupt:
        return 130


def _print_error(exc: BaseException, args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        log.exception("failed")
    print(f"modelfs: error: {exc}", file=sys.stderr)
