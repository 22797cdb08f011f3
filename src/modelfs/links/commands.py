"""The link commands: `modelfs presign` and `modelfs serve`.

`serve` runs the link service (`service.LinkService`) with hypercorn, an ASGI server that runs
on trio natively, so the service lives in one trio loop like the mount does, without a second
event loop or a framework: the app is a plain ASGI callable. It sends READY=1 to systemd once
it listens (a `Type=notify` unit), and stops cleanly on SIGINT/SIGTERM.

Settings come from flags, or from a `[serve:NAME]` section of the config file (`--section
NAME`: what the `modelfs-serve@NAME` unit runs), flags winning over the section.

Listening on anything but loopback without a token file must be asked for with `--public`:
an open link service signs links for anyone who can reach it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from modelfs.config.units import parse_bool, parse_duration
from modelfs.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import trio
    from hypercorn.config import Config

    from modelfs.links.service import LinkService

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
log = logging.getLogger("modelfs.links")

DEFAULT_LISTEN = "127.0.0.1:8088"
DEFAULT_LINK_TTL = 3600.0


def register(commands: Subparsers) -> None:
    presign = commands.add_parser(
        "presign", help="signed links to an object, or to a prefix's files (as a manifest)"
    )
    presign.add_argument("spec", metavar="REMOTE:BUCKET/KEY_OR_PREFIX")
    presign.add_argument(
        "--expires", type=parse_duration, default="1h", metavar="DUR", help="at most 7d"
    )
    presign.add_argument("--manifest", metavar="FILE", help="write a manifest of signed links")
    presign.set_defaults(func=cmd_presign)
    serve = commands.add_parser(
        "serve", help="stable links to a bucket's files: a 302 to a freshly signed URL"
    )
    serve.add_argument("spec", nargs="?", metavar="REMOTE:BUCKET[/PREFIX]")
    serve.add_argument(
        "--section",
        metavar="NAME",
        help="read these settings from the config file's [serve:NAME] (flags still win)",
    )
    serve.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="serve only under this prefix of SPEC (repeatable; default: everything)",
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}")
    serve.add_argument("--tokens", type=Path, metavar="FILE", help="bearer tokens, one a line")
    serve.add_argument(
        "--public", action="store_true", help="listen beyond loopback without tokens"
    )
    serve.add_argument(
        "--link-ttl",
        type=parse_duration,
        metavar="DUR",
        help="how long each signed link lives (default 1h, at most 7d)",
    )
    serve.add_argument(
        "--public-url", metavar="URL", help="how clients reach the service (manifest links)"
    )
    serve.add_argument(
        "--access-log", metavar="FILE", help="one line a request, mode 0600 (default: stderr)"
    )
    serve.set_defaults(func=cmd_serve)


# `[serve:NAME]` keys: each is the flag of the same name; `source` is SPEC, `prefix` may list
# several prefixes separated by spaces, `public` is a boolean.
SERVE_KEYS = (
    "source",
    "prefix",
    "listen",
    "tokens",
    "public",
    "link-ttl",
    "public-url",
    "access-log",
)


def apply_section(args: argparse.Namespace, items: dict[str, str], section: str) -> None:
    """Fill what the command line left unset from a `[serve:NAME]` section's `items`."""
    unknown = sorted(set(items) - set(SERVE_KEYS))
    if unknown:
        raise ConfigError(f"[{section}]: unknown key {unknown[0]!r}")
    if args.spec is None:
        args.spec = items.get("source")
    if not args.prefix:
        args.prefix = items.get("prefix", "").split()
    if args.link_ttl is None and "link-ttl" in items:
        args.link_ttl = parse_duration(items["link-ttl"].strip())
    if args.tokens is None and "tokens" in items:
        args.tokens = Path(items["tokens"].strip())
    for key in ("listen", "public-url", "access-log"):
        name = key.replace("-", "_")
        if getattr(args, name) is None and key in items:
            setattr(args, name, items[key].strip())
    if not args.public and "public" in items:
        args.public = parse_bool(items["public"], f"[{section}] public")


def listen_address(text: str, *, tokens: bool, public: bool) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT")
    host = host.strip("[]")
    loopback = host == "localhost" or _is_loopback(host)
    if not loopback and not tokens and not public:
        raise UsageError(
            f"--listen {text} serves beyond this machine with no --tokens: anyone who can "
            "reach it gets signed links; add --tokens FILE, or say --public"
        )
    return host, int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_presign(args: argparse.Namespace) -> int:
    from modelfs.links.presign import presign  # boto3: only when it runs

    return presign(args)


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from modelfs import console
    from modelfs.config.files import find_section, load_config, resolve
    from modelfs.links.presign import SIGV4_MAX_EXPIRES
    from modelfs.links.service import LinkService, ServiceSettings
    from modelfs.links.tokens import TokenFile
    from modelfs.store.sourcespec import SourceSettings, s3_store

    console.setup_logging(verbose=args.verbose)
    if args.section is not None:
        items = find_section(load_config(args.config), "serve", args.section)
        apply_section(args, items, f"serve:{args.section}")
    if args.spec is None:
        raise UsageError("serve needs REMOTE:BUCKET[/PREFIX], or --section NAME")
    if args.access_log is not None:
        _log_access_to(Path(args.access_log))
    listen = args.listen or DEFAULT_LISTEN
    host, port = listen_address(listen, tokens=args.tokens is not None, public=args.public)
    ttl = int(args.link_ttl if args.link_ttl is not None else DEFAULT_LINK_TTL)
    if not 1 <= ttl <= SIGV4_MAX_EXPIRES:
        raise UsageError(f"--link-ttl {ttl}s: a signed link lives 1 s to 7 days")
    if args.tokens is not None and not args.tokens.is_file():
        raise UsageError(f"token file {args.tokens} does not exist")
    remote, spec = resolve(args.spec, args.config)
    store = s3_store(remote, spec, SourceSettings())
    store.check_bucket()
    settings = ServiceSettings(
        spec=spec,
        prefixes=tuple(prefix.strip("/") for prefix in args.prefix if prefix.strip("/")),
        link_ttl=ttl,
        public_url=args.public_url,
    )
    tokens = TokenFile(args.tokens) if args.tokens is not None else None
    service = LinkService(store, settings, tokens)
    trio.run(_serve, service, host, port)
    return console.EXIT_OK


def _log_access_to(path: Path) -> None:
    """The access lines (and only they) go to `path`, created private (0600)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"--access-log {path}: {exc.strerror}") from exc
    handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8", buffering=1))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access = logging.getLogger("modelfs.links.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


async def _serve(app: LinkService, host: str, port: int) -> None:
    import trio
    from hypercorn.config import Config

    from modelfs.host import notify

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None  # the service writes its own, without secrets
    config.errorlog = logging.getLogger("modelfs.links.server")
    config.keep_alive_timeout = 75
    stop = trio.Event()

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                notify.notify("STOPPING=1")
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        bound = await nursery.start(_run_server, app, config, stop)
        log.info("serving links on %s", ", ".join(bound))
        notify.notify("READY=1", f"STATUS=serving links on {', '.join(bound)}")
        await stop.wait()
        nursery.cancel_scope.cancel()


async def _run_server(
    app: LinkService, config: Config, stop: trio.Event, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    from hypercorn.trio import serve

    await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]
