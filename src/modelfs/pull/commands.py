"""The commands without a mount: `pull`, `manifest create` and `verify`.

Exit codes, as every command: 0 done; 1 a runtime failure (a file that could not be fetched
or checked, too little disk space, a verify that found a problem); 2 bad input (a malformed
manifest, an unknown remote, a SRC that is none of the three kinds).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import TypeAlias

from modelfs.config.options import parse_positive
from modelfs.config.units import parse_duration, parse_size

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(commands: Subparsers) -> None:
    pull = commands.add_parser(
        "pull",
        help="fetch a remote prefix, a manifest or a manifest URL into DEST, verified",
        description="SRC is REMOTE:BUCKET[/PREFIX], a manifest file, or a manifest URL.",
    )
    pull.add_argument("src", metavar="SRC")
    pull.add_argument("dest", metavar="DEST")
    add_source_arguments(pull)
    pull.add_argument("--include", action="append", default=[], metavar="GLOB")
    pull.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    pull.add_argument("--dry-run", action="store_true", help="say what would be fetched")
    pull.add_argument("--json", action="store_true", help="JSON lines, one per event")
    pull.add_argument("--part-size", type=parse_size, default="8M", metavar="SIZE")
    pull.add_argument("--max-memory", type=parse_size, default="256M", metavar="SIZE")
    pull.set_defaults(func=_lazy("session", "cmd_pull"))
    _register_manifest(commands)
    _register_verify(commands)


def _register_manifest(commands: Subparsers) -> None:
    manifest = commands.add_parser("manifest", help="write manifests of model trees")
    actions = manifest.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="hash a remote prefix or a local directory into a manifest"
    )
    create.add_argument("src", metavar="SRC", help="REMOTE:BUCKET/PREFIX or a local directory")
    create.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    create.add_argument("--name", default=None, help="the manifest's name (default: SRC's)")
    create.add_argument("--version", default="", help="the manifest's version")
    create.add_argument(
        "--upload", action="store_true", help="store it as manifest.json in the prefix"
    )
    create.add_argument("--transfers", type=int, default=8, metavar="N")
    create.set_defaults(func=_lazy("create", "cmd_create"))


def _register_verify(commands: Subparsers) -> None:
    verify = commands.add_parser(
        "verify", help="check a directory, a mounted directory or a prefix against a manifest"
    )
    verify.add_argument("target", metavar="TARGET")
    verify.add_argument("--manifest", metavar="M", help="default: TARGET/manifest.json")
    verify.add_argument("--transfers", type=int, default=8, metavar="N")
    verify.add_argument("--token-file", metavar="FILE", help="for a manifest URL of a service")
    verify.set_defaults(func=_lazy("verify", "cmd_verify"))


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """The command `function` of `modelfs.pull.<module>`, imported when it runs: boto3,
    rich and yaml cost start-up time every other command should not pay."""

    def command(args: argparse.Namespace) -> int:
        handler = getattr(importlib.import_module(f"modelfs.pull.{module}"), function)
        return int(handler(args))

    return command


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where bytes come from, and when a source is given up (shared by pull and verify)."""
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SOURCE",
        help="REMOTE:BUCKET/PREFIX or a base URL, tried before the manifest's (repeatable)",
    )
    parser.add_argument(
        "--transfers",
        type=parse_positive,
        default="32",
        metavar="N",
        help="parallel ranged GETs at most; how many of them pay is probed (default 32)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=parse_duration,
        default="30s",
        metavar="DUR",
        help="a source that sends nothing this long is left for the next (default 30s)",
    )
    parser.add_argument(
        "--min-rate",
        type=parse_size,
        default="0",
        metavar="SIZE",
        help="bytes/s below which a source is left for the next, over 10 s (default: none)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="a link service's bearer token, sent to URL sources (default: $MODELFS_TOKEN)",
    )
