"""The commands of this area: `modelfs run` and `modelfs systemd install`.

`run`'s arguments become a `RunPlan` (`plan`), which `supervisor.execute` carries out; the
config it reads is the config file with the app's own `modelfs.conf` (in the current
directory) laid over it, and `--save NAME` writes the command line as a section (`save`).
`systemd install` writes the units of a config section (`systemd`). Both print one error line
and exit 2 for bad input, 1 for a runtime failure (see `console`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TypeAlias

from modelfs import console
from modelfs.config import options
from modelfs.config.files import config_path, load_config, project_config
from modelfs.errors import ConfigError, ModelfsError
from modelfs.host.mountinfo import read_mountinfo
from modelfs.run import systemd
from modelfs.run.plan import plan_from_args, split_words, validate_paths
from modelfs.run.save import saving_for
from modelfs.run.supervisor import execute

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
log = logging.getLogger("modelfs.run")


def register(commands: Subparsers) -> None:
    _register_run(commands)
    _register_systemd(commands)


def _register_run(commands: Subparsers) -> None:
    parser = commands.add_parser(
        "run",
        help="mount a bucket, link it into an app directory and run the app",
        description=(
            "modelfs run NAME [-- COMMAND...] runs the [run:NAME] config section; "
            "modelfs run --mount REMOTE:BUCKET MOUNTPOINT [options] -- COMMAND... runs without "
            "one; "
            "modelfs run [-- COMMAND...] runs the section of ./modelfs.conf, the one whose "
            "workdir is here, or the only one."
        ),
    )
    parser.add_argument(
        "--mount", nargs=2, metavar=("REMOTE:BUCKET[/PREFIX]", "MOUNTPOINT"), default=None
    )
    parser.add_argument(
        "--pull",
        metavar="SRC",
        default=None,
        help="instead of mounting, pull SRC (a prefix, manifest or manifest URL) into --into",
    )
    parser.add_argument("--into", metavar="DIR", default=None, help="where --pull puts files")
    parser.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="NAME=SUBPATH",
        help="make WORKDIR/NAME a symlink to MOUNTPOINT/SUBPATH (repeatable)",
    )
    parser.add_argument("--workdir", default=None, help="where the app runs (default: here)")
    parser.add_argument(
        "--move-aside",
        action="store_true",
        help="rename a real file/directory in a link's place to NAME.bak-<time>",
    )
    parser.add_argument(
        "--keep-mounted", action="store_true", help="leave a mount this run made mounted"
    )
    parser.add_argument(
        "--user", metavar="NAME", default=None, help="run the app as NAME (run itself is root)"
    )
    parser.add_argument(
        "--external-mount",
        action="store_true",
        help="the mount has another owner (its systemd unit): use it, never mount, heal or "
        "unmount it",
    )
    parser.add_argument("--probe-timeout", metavar="DUR", default=None)
    parser.add_argument(
        "--save",
        metavar="NAME",
        default=None,
        help="once mounted and linked, write this command line as [run:NAME] into "
        "WORKDIR/modelfs.conf, so that `modelfs run` there starts it next time",
    )
    parser.add_argument("--watch-interval", metavar="DUR", default=None)
    parser.add_argument(
        "--warm",
        action="append",
        default=[],
        metavar="GLOB",
        help="fetch the files matching GLOB (relative to the mountpoint) into the cache "
        "before the app starts (repeatable)",
    )
    parser.add_argument(
        "--warm-async",
        action="append",
        default=[],
        metavar="GLOB",
        help="the same, while the app starts (repeatable)",
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        default=None,
        help="the start profile to replay and record (default: the run section's name)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="neither replay nor record a start profile"
    )
    parser.add_argument(
        "--profile-quiet",
        metavar="DUR",
        default=None,
        help="a start ends after DUR without a read of anything new (default 10s)",
    )
    parser.add_argument(
        "--profile-max-size",
        metavar="SIZE",
        default=None,
        help="record and replay at most SIZE of a start (default 8G)",
    )
    parser.add_argument(
        "--drain-timeout",
        metavar="DUR",
        default=None,
        help="how long uploads may take after the app exits (default 10m); then exit 1",
    )
    options.add_forwarded_arguments(parser)
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="NAME [-- COMMAND ...]")
    parser.set_defaults(func=handle_run, run_parser=parser)


def handle_run(args: argparse.Namespace) -> int:
    try:
        split = split_words(args)  # options after a section name may set -v and --config
        console.setup_logging(verbose=args.verbose, command="run")
        config = project = None
        if not (args.mount or args.pull):
            project = project_config(Path.cwd(), args.config)
            config = load_config(args.config)
        plan = plan_from_args(args, config, project, split=split)
        validate_paths(plan, read_mountinfo())
        saving = saving_for(args, plan) if args.save else None
    except ModelfsError as exc:
        return console.fail(exc, verbose=args.verbose)
    if plan.chosen:
        log.info("%s", plan.chosen)
    return execute(plan, before_app=saving.write if saving else None)


def _register_systemd(commands: Subparsers) -> None:
    parser = commands.add_parser("systemd", help="systemd units for mounts and apps")
    actions = parser.add_subparsers(dest="systemd_command", metavar="ACTION", required=True)
    install = actions.add_parser(
        "install", help="write the units for a [mount:NAME] or [run:NAME] config section"
    )
    install.add_argument("name", metavar="NAME")
    install.add_argument(
        "--dest",
        default=systemd.DEFAULT_UNIT_DIR,
        help=f"unit directory (default {systemd.DEFAULT_UNIT_DIR})",
    )
    install.add_argument("--dry-run", action="store_true", help="print the files, write nothing")
    install.add_argument(
        "--modelfs", default=None, help="modelfs command in ExecStart (default: this install's)"
    )
    install.set_defaults(func=handle_install)


def handle_install(args: argparse.Namespace) -> int:
    try:
        path = config_path(args.config)
        if path is None:
            raise ConfigError("no config file found; pass --config FILE")
        installation = systemd.plan_installation(
            load_config(args.config),
            args.name,
            Path(args.dest),
            args.modelfs or systemd.modelfs_command(),
            str(path.resolve()),
        )
        if args.dry_run:
            for unit in installation.files:
                print(f"# {unit.path}\n{unit.text}")
        else:
            systemd.write_files(installation.files)
            for unit in installation.files:
                print(f"wrote {unit.path}")
    except (ModelfsError, OSError) as exc:
        return console.fail(exc)
    print(f"systemctl daemon-reload && systemctl enable --now {installation.enable}")
    return console.EXIT_OK
