"""The commands that start and talk to a mount: `mount`, `unmount`, `status`, `sync`, `warm`.

`mount` runs in the foreground until unmounted, or with `--daemon` returns once the mount
answers (see `spawn`). The others talk to a running mount through its control socket
(`host.control`), or to the kernel (`unmount`); `status` words its figures, once or live
(`--watch`), with `statusview`. `warm PATH...` finds the mount of each path (globs are
expanded here, through the mount), asks it to fetch the files into its cache (`daemon.warm`
does the work) and shows its progress as a pull does (`pull.progress`). Heavy modules
(pyfuse3, boto3) are imported only by `mount`, so the others start fast.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from modelfs import console
from modelfs.config import options
from modelfs.config.units import format_size, parse_duration
from modelfs.errors import ModelfsError, MountError, UsageError
from modelfs.host import control, mountinfo

if TYPE_CHECKING:
    from modelfs.pull.progress import PlainEvents

log = logging.getLogger("modelfs")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

_SYNC_ANSWER_GRACE = 10.0  # seconds past --timeout for the mount's own "not done" answer


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
    status.add_argument("--json", action="store_true", help="JSON (with --watch: one per line)")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    status.set_defaults(func=cmd_status)

    sync = commands.add_parser("sync", help="wait until every written file is in the bucket")
    sync.add_argument("mountpoint")
    sync.add_argument(
        "--timeout",
        type=parse_duration,
        default=None,
        metavar="DUR",
        help="give up after DUR (exit 1, saying what is left); default: wait until done",
    )
    sync.set_defaults(func=cmd_sync)

    warm = commands.add_parser(
        "warm", help="fetch files of a mount into its block cache (or pin, or unpin them)"
    )
    warm.add_argument("paths", nargs="+", metavar="PATH", help="a file or directory (or a glob)")
    pinning = warm.add_mutually_exclusive_group()
    pinning.add_argument(
        "--pin", action="store_true", help="never evict them (kept across restarts)"
    )
    pinning.add_argument(
        "--unpin", action="store_true", help="let them be evicted again (fetches nothing)"
    )
    warm.set_defaults(func=cmd_warm)


def cmd_mount(args: argparse.Namespace) -> int:
    from modelfs.daemon import serve, spawn
    from modelfs.daemon.settings import mount_config

    config = mount_config(args)
    if args.daemon:
        return spawn.spawn_daemon(args, config.cache_dir)
    if args.log_file:
        os.close(spawn.open_log(args.log_file))  # created private; logging appends to it
    console.setup_logging(level=args.log_level, log_file=args.log_file, verbose=args.verbose)
    ready_fd = spawn.parent_pipe()

    def on_ready(warning: str | None) -> None:
        log.info("ready: %s on %s", config.source, config.mountpoint)
        spawn.tell_parent(ready_fd, f"ok: {warning}" if warning else "ok")

    try:
        serve.run(config, on_ready)
    except ModelfsError as exc:
        spawn.tell_parent(ready_fd, f"error: {exc}")
        raise
    return console.EXIT_OK


def cmd_unmount(args: argparse.Namespace) -> int:
    mountinfo.unmount(args.mountpoint, lazy=args.lazy)
    return console.EXIT_OK


def _ask(
    mountpoint: str,
    message: dict[str, Any],
    timeout: float | None = 10.0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    try:
        return control.request(mountpoint, message, timeout=timeout, on_progress=on_progress)
    except OSError as exc:
        raise MountError(
            f"no modelfs mount answers at {mountpoint} ({exc.strerror or exc})"
        ) from exc


def cmd_status(args: argparse.Namespace) -> int:
    from modelfs.daemon import statusview  # rich: only for status

    if args.watch:
        return statusview.watch(
            lambda: _ask(args.mountpoint, {"cmd": "status"}), json_lines=args.json
        )
    answer = _ask(args.mountpoint, {"cmd": "status"})
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(*statusview.status_lines(answer), sep="\n")
    return console.EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    message: dict[str, Any] = {"cmd": "sync"}
    socket_timeout = None
    if args.timeout is not None:
        message["timeout"] = args.timeout
        socket_timeout = args.timeout + _SYNC_ANSWER_GRACE  # the mount answers at its deadline
    try:
        answer = _ask(args.mountpoint, message, timeout=socket_timeout)
    except MountError as exc:
        if not isinstance(exc.__cause__, TimeoutError):
            raise
        late = f"sync of {args.mountpoint}: no answer within {args.timeout:g}s"
        raise ModelfsError(late) from exc
    if not answer.get("ok"):
        raise ModelfsError(f"sync of {args.mountpoint} failed: {answer.get('error')}")
    return console.EXIT_OK


_WARM_LINE_TIMEOUT = 60.0  # the mount sends a progress line twice a second


def warm_targets(patterns: list[str], mounts: str) -> dict[str, list[str]]:
    """Paths relative to their mount's root, by mountpoint. A glob is expanded (through the
    mount); one that matches nothing, a missing path or one on no modelfs mount is a UsageError."""
    targets: dict[str, list[str]] = {}
    for pattern in patterns:
        found = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else []
        if glob.has_magic(pattern) and not found:
            raise UsageError(f"{pattern} matches nothing")
        if not found:
            if not os.path.lexists(pattern):
                raise UsageError(f"{pattern}: no such file or directory")
            found = [pattern]
        for path in found:
            real = os.path.realpath(path)
            entry = mountinfo.mount_of(real, mounts)
            if entry is None or entry.fstype != mountinfo.MODELFS_FSTYPE:
                raise UsageError(f"{path} is not on a modelfs mount")
            relative = os.path.relpath(real, entry.mountpoint)
            targets.setdefault(entry.mountpoint, []).append("" if relative == "." else relative)
    return targets


def cmd_warm(args: argparse.Namespace) -> int:
    targets = warm_targets(args.paths, mountinfo.read_mountinfo())
    for mountpoint, paths in targets.items():
        message = {"cmd": "warm", "paths": paths, "pin": args.pin, "unpin": args.unpin}
        if args.unpin:
            answer = _ask(mountpoint, message)
        else:
            with _WarmProgress() as progress:
                answer = _ask(mountpoint, message, _WARM_LINE_TIMEOUT, progress.update)
        if not answer.get("ok"):
            error = str(answer.get("error"))
            raise UsageError(error) if answer.get("bad_input") else ModelfsError(error)
        print(_warm_summary(answer, mountpoint))
        if answer.get("errors"):
            errors = answer["errors"]
            raise ModelfsError(f"{len(errors)} file(s) could not be fetched; {errors[0]}")
        if answer.get("pinned") and answer["cached"] < answer["bytes"]:
            raise ModelfsError(
                f"only {format_size(answer['cached'])} of {format_size(answer['bytes'])} "
                f"pinned on {mountpoint} is in the cache (see the mount's log)"
            )
    return console.EXIT_OK


def _warm_summary(answer: dict[str, Any], mountpoint: str) -> str:
    if "unpinned" in answer:
        return f"unpinned {answer['unpinned']} file(s), {format_size(answer['bytes'])}"
    total, cached = answer["bytes"], answer["cached"]
    line = f"warmed {answer['files']} file(s), {format_size(total)}, on {mountpoint}"
    if answer.get("pinned"):
        return line + " (pinned)"
    if cached < total:
        line += (
            f"; {format_size(cached)} of it is in the cache now (--cache-max-size "
            f"{format_size(answer['cache_max'])} holds less than what was warmed)"
        )
    return line


class _WarmProgress:
    """The mount's progress lines as `pull` shows its own: a bar on a terminal, else a line
    every few seconds (on stderr)."""

    def __init__(self) -> None:
        self._events: PlainEvents | None = None
        self._since = time.monotonic()  # the rate counts from the request, not the first line

    def update(self, progress: dict[str, Any]) -> None:
        from modelfs.pull.progress import Counters, events_for  # rich, for warm alone

        total = int(progress.get("total", 0))
        if self._events is None:
            if not total:
                return  # still finding the files
            counters = Counters(total, int(progress.get("of", 0)), label="warm")
            counters.started = self._since
            self._events = events_for(counters, json_lines=False)
        counters = self._events.counters
        counters.add(int(progress.get("bytes", 0)) - counters.done_bytes)
        counters.done_files = int(progress.get("files", 0))
        self._events.tick()

    def __enter__(self) -> _WarmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._events is not None:
            self._events.close()
        sys.stderr.flush()
