"""The commands that start and talk to a mount: `mount`, `unmount`, `status`, `sync`.

`mount` runs in the foreground until unmounted, or with `--daemon` returns once the mount
answers (see `spawn`). The others talk to a running mount through its control socket
(`host.control`), or to the kernel (`unmount`). Heavy modules (pyfuse3, boto3) are imported
only by `mount`, so `status` and `unmount` start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, TypeAlias

from modelfs import console
from modelfs.config import options
from modelfs.config.units import format_size
from modelfs.errors import ModelfsError, MountError
from modelfs.host import control, mountinfo

log = logging.getLogger("modelfs")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
_SOURCE_EVENTS = (
    ("failures", "failed"),
    ("slow", "below the floor"),
    ("missing", "missing"),
    ("other_version", "other versions"),
)


def register(commands: Subparsers) -> None:
    mount = commands.add_parser("mount", help="mount REMOTE:BUCKET[/PREFIX] on MOUNTPOINT")
    mount.add_argument("spec", metavar="REMOTE:BUCKET[/PREFIX]")
    mount.add_argument("mountpoint")
    mount.add_argument(
        "--daemon", action="store_true", help="return once mounted, serve in the background"
    )
    mount.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="REMOTE:BUCKET[/PREFIX]",
        help="read from here first, falling back in order, the mounted remote last unless "
        "named (repeatable; replaces the remote's `sources`, see docs/fleet.md)",
    )
    options.add_mount_arguments(mount)
    mount.set_defaults(func=cmd_mount)

    unmount = commands.add_parser("unmount", aliases=["umount"], help="unmount (also a dead mount)")
    unmount.add_argument("mountpoint")
    unmount.add_argument("--lazy", action="store_true", help="detach now even if busy")
    unmount.set_defaults(func=cmd_unmount)

    status = commands.add_parser("status", help="statistics of a running mount")
    status.add_argument("mountpoint")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    sync = commands.add_parser("sync", help="wait until every written file is in the bucket")
    sync.add_argument("mountpoint")
    sync.set_defaults(func=cmd_sync)


def cmd_mount(args: argparse.Namespace) -> int:
    from modelfs.daemon import serve, spawn
    from modelfs.daemon.settings import mount_config

    config = mount_config(args)
    if args.daemon:
        return spawn.spawn_daemon(args, config.cache_dir)
    console.setup_logging(level=args.log_level, log_file=args.log_file, verbose=args.verbose)
    ready_fd = spawn.parent_pipe()

    def on_ready() -> None:
        log.info("ready: %s on %s", config.source, config.mountpoint)
        spawn.tell_parent(ready_fd, "ok")

    try:
        serve.run(config, on_ready)
    except ModelfsError as exc:
        spawn.tell_parent(ready_fd, f"error: {exc}")
        raise
    return console.EXIT_OK


def cmd_unmount(args: argparse.Namespace) -> int:
    mountinfo.unmount(args.mountpoint, lazy=args.lazy)
    return console.EXIT_OK


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
    else:
        print_status(answer)
    return console.EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    answer = _ask(args.mountpoint, {"cmd": "sync"}, timeout=None)
    if not answer.get("ok"):
        raise ModelfsError(f"sync failed: {answer.get('error')}")
    return console.EXIT_OK


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
    sources = answer.get("sources")
    if sources:
        parts = [
            f"{name} {format_size(counts['bytes'])}"
            + "".join(
                f", {counts[what]} {label}" for what, label in _SOURCE_EVENTS if counts.get(what)
            )
            for name, counts in sources["by_source"].items()
        ]
        print(f"sources: {'; '.join(parts)}; {sources['fallbacks']} reads moved on")
    upload = answer.get("writeback")
    if upload:
        queued = format_size(int(upload.get("bytes", 0)))
        print(
            f"upload queue: {upload.get('files', 0)} files, {queued},"
            f" oldest {upload.get('oldest_age', 0):.0f}s,"
            f" last error: {upload.get('last_error') or 'none'}"
        )
