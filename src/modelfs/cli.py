"""The `modelfs` command line: global options, the commands, and how a command ends.

Each area registers its own commands (`daemon.commands`: mount, unmount, status, sync;
`run.commands`: run, systemd); this module parses, dispatches, and turns what a command raised
into one error line and its exit code (see `console`).

Global options (`--config`, `-v`) go before the command or anywhere among its options, as
rclone users type them (`modelfs mount --config F ...`): every command's parser, nested ones
too, gets them with a suppressed default, so a value given after the verb wins and one given
before it is kept. The words of `run` after its command's `--` are never parsed (`run.plan`).
A usage error, an unknown option included, is one line and exit 2, as every bad input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from typing import NoReturn

from modelfs import __version__, console
from modelfs.config.files import describe_remotes
from modelfs.errors import ConfigError, ModelfsError

log = logging.getLogger("modelfs")

_CONFIG_HELP = (
    "config file (default: $MODELFS_CONFIG, ~/.config/modelfs/modelfs.conf, "
    "~/.config/rclone/rclone.conf)"
)

# Modules with a `register(subparsers)` adding their commands, in the order `--help` lists them.
_COMMAND_MODULES = (
    "modelfs.daemon.commands",
    "modelfs.pull.commands",
    "modelfs.links.commands",
    "modelfs.run.commands",
)


class _Parser(argparse.ArgumentParser):
    """argparse with modelfs's error form: one line, exit 2 (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        console.error_line(f"{message} (see {self.prog} --help)")
        raise SystemExit(console.EXIT_BAD_INPUT)


def add_global_arguments(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """`--config` and `-v`: with their defaults on the top parser, suppressed on a command's
    (an option not given after the verb leaves the value given before it)."""
    config_default = None if defaults else argparse.SUPPRESS
    verbose_default = False if defaults else argparse.SUPPRESS
    parser.add_argument("--config", default=config_default, help=_CONFIG_HELP)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=verbose_default,
        help="debug logging and tracebacks",
    )


def _command_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser` (nested ones too), each once (aliases share one)."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                for each in (child, *_command_parsers(child)):
                    found.setdefault(id(each), each)
    return list(found.values())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modelfs", description="Mount S3 model caches as a local directory.")
    add_global_arguments(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"modelfs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    remotes = commands.add_parser("remotes", help="list configured remotes (secrets masked)")
    remotes.set_defaults(func=cmd_remotes)
    for command in _command_parsers(parser):
        add_global_arguments(command, defaults=False)
    return parser


def cmd_remotes(args: argparse.Namespace) -> int:
    for line in describe_remotes(args.config):
        print(line)
    return console.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except ConfigError as exc:  # raised by a type= converter
        parser.error(str(exc))
    if unknown:  # named after the command they were given to, not the top parser
        command = " ".join(filter(None, ("modelfs", getattr(args, "command", None))))
        console.error_line(f"unrecognized arguments: {' '.join(unknown)} (see {command} --help)")
        return console.EXIT_BAD_INPUT
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130  # the shell's code for death by SIGINT
    except ModelfsError as exc:
        return console.fail(exc, verbose=getattr(args, "verbose", False))
