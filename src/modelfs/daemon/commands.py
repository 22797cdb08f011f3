"""The commands that start and talk to a mount: `mount`, `unmount`, `status`, `sync`.

`mount` runs in the foreground until unmounted, or with `--daemon` returns once the mount
answers (see `spawn`). The others talk to a running mount through its control socket
(`host.control`), or to the kernel (`unmount`); `status` words its figures, once or live
(`--watch`), with `statusview`. Heavy modules (pyfuse3, boto3) are imported
only by `mount`, so `status` and `unmount` start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, TypeAlias

from modelfs import console
from modelfs.config import options
from modelfs.config.units import parse_duration
from modelfs.errors import ModelfsError, MountError
from modelfs.host import control, mountinfo

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


def _ask(mountpoint: str, message: dict[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
    try:
        return control.request(mountpoint, message, timeout=timeout)
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
