"""The `modelfs` command line: global options, the commands, and how a command ends.

Each area registers its own commands (`daemon.commands`: mount, unmount, status, sync;
`run.commands`: run, systemd); this module parses, dispatches, and turns what a command raised
into one error line and its exit code (see `console`). Global options (`--config`, `-v`) go
before the command.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from modelfs import __version__, console
from modelfs.config.files import describe_remotes
from modelfs.errors import ConfigError, ModelfsError

log = logging.getLogger("modelfs")

# Modules with a `register(subparsers)` adding their commands, in the order `--help` lists them.
_COMMAND_MODULES = (
    "modelfs.daemon.commands",
    "modelfs.pull.commands",
    "modelfs.links.commands",
    "modelfs.run.commands",
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
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    remotes = commands.add_parser("remotes", help="list configured remotes (secrets masked)")
    remotes.set_defaults(func=cmd_remotes)
    return parser


def cmd_remotes(args: argparse.Namespace) -> int:
    for line in describe_remotes(args.config):
        print(line)
    return console.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ConfigError as exc:  # raised by a type= converter
        parser.error(str(exc))
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130  # the shell's code for death by SIGINT
    except ModelfsError as exc:
        return console.fail(exc, verbose=getattr(args, "verbose", False))
