"""What `modelfs run` will do, resolved from the command line and the config file.

What it owns: the `[run:NAME]` and `[mount:NAME]` config sections and `RunPlan`, the validated
result; the mount options a section or `run` may carry are those of `config.options`. No side
effects beyond reading the file system to validate paths, so every rule here is unit-tested
without a mount.

    [mount:tts]                           [run:index-tts]
    remote = compshare:index-tts-data     mount = tts          (or: mount = SPEC MOUNTPOINT)
    mountpoint = /mnt/tts                 link = cache_hub=cache_hub_v23
    cache-max-size = 50G                         logs=logs
    allow-other = true                    workdir = /srv/index-tts
                                          command = python webui.py --listen --port 7860
                                          user = tts       (optional: the app's user; the
                                                            mount then needs allow-other)

Precedence, lowest first: the `[mount:NAME]` section a run section names, the run section, the
command line. `--link` on the command line replaces the section's links as a whole (switching
versions is `modelfs run index-tts --link cache_hub=cache_hub_v24`), `--warm` and `--warm-async`
its `warm` and `warm-async` globs likewise; words after the section name replace its command.
A run of a section replays and records the start profile of the section's name (`run.replay`)
unless told otherwise (`profile = NAME | off`).
With no section name and no `--mount`/`--pull`, `run.sections` chooses the section (the app's
own `modelfs.conf`, the one whose workdir is here, the only one).
"""

from __future__ import annotations

import argparse
import configparser
import os
import pwd
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from modelfs.config import options
from modelfs.config.files import find_section, lay_over, section_items
from modelfs.config.remote import normalize_spec
from modelfs.config.units import parse_bool, parse_duration, parse_size
from modelfs.errors import ConfigError
from modelfs.host.control import canonical_mountpoint
from modelfs.host.health import DEFAULT_PROBE_TIMEOUT
from modelfs.host.mountinfo import find_mount
from modelfs.run.links import LinkSpec, parse_link
from modelfs.run.sections import choose_section
from modelfs.run.warm import parse_glob

_RUN_KEYS = frozenset(
    {"mount", "remote", "mountpoint", "link", "links", "workdir", "command", "pull", "into"}
    | {"move-aside", "keep-mounted", "probe-timeout", "watch-interval", "drain-timeout", "user"}
    | {"warm", "warm-async", "profile", "profile-quiet", "profile-max-size"}
)
_MOUNT_KEYS = frozenset({"remote", "mountpoint"})
# How often the watchdog stats the mount while the app runs: a dead mount is noticed within
# this, and one stat every few seconds costs nothing measurable.
DEFAULT_WATCH_INTERVAL = 5.0
# How long the final drain (`modelfs sync` after the app exits) may take before the run gives
# up, reports what is left and exits 1 (the files stay staged): the units' TimeoutStopSec.
DEFAULT_DRAIN_TIMEOUT = 600.0
# A start profile (`run.replay`): recorded until this long without a new read, or this much.
DEFAULT_PROFILE_QUIET = 10.0
DEFAULT_PROFILE_MAX = 8 << 30
PROFILE_OFF = "off"


@dataclass(frozen=True, slots=True)
class MountTarget:
    """A remote spec, where it is mounted, and the `modelfs mount` options to mount it with."""

    spec: str
    mountpoint: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PullTarget:
    """Instead of a mount: `modelfs pull SRC INTO` first (machines without FUSE)."""

    src: str
    into: str


@dataclass(frozen=True, slots=True)
class RunPlan:
    target: MountTarget | None  # None: the run pulls instead (`pull`)
    links: tuple[LinkSpec, ...]
    workdir: Path
    command: tuple[str, ...]
    config: str | None = None
    move_aside: bool = False
    keep_mounted: bool = False
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    watch_interval: float = DEFAULT_WATCH_INTERVAL
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    mount_section: str | None = None  # the [mount:NAME] it used, for unit ordering
    pull: PullTarget | None = None
    chosen: str | None = None  # a section run chose itself: which, and why (for the log)
    warm: tuple[str, ...] = ()  # globs under the mountpoint, warmed before the app starts
    warm_async: tuple[str, ...] = ()  # ... and while it starts
    user: str | None = None  # the app runs as this user (`modelfs run` itself stays root)
    external_mount: bool = False  # another owner (the mount's unit) mounts and heals it
    profile: str | None = None  # the start profile replayed and recorded (None: none)
    profile_quiet: float = DEFAULT_PROFILE_QUIET
    profile_max: int = DEFAULT_PROFILE_MAX

    @property
    def root(self) -> str:
        """Where the links point into: the mountpoint, or the directory pulled into."""
        if self.pull is not None:
            return self.pull.into
        assert self.target is not None
        return self.target.mountpoint


def mount_target_from_section(config: configparser.ConfigParser, name: str) -> MountTarget:
    """A `[mount:NAME]` section as a MountTarget."""
    section = f"mount:{name}"
    items = find_section(config, "mount", name)
    options.check_keys(section, items, _MOUNT_KEYS)
    if "remote" not in items or "mountpoint" not in items:
        raise ConfigError(f"[{section}] needs both 'remote' and 'mountpoint'")
    words = options.option_words(options.from_section(section, items))
    return MountTarget(normalize_spec(items["remote"]), _mountpoint(items["mountpoint"]), words)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path.strip()))


def _mountpoint(path: str) -> str:
    """As mountinfo lists it, without a stat of the mountpoint itself (may hang if stuck)."""
    return canonical_mountpoint(os.path.expanduser(path.strip()))


def _section_mount(
    config: configparser.ConfigParser, section: str, items: Mapping[str, str]
) -> tuple[str, str, options.Options, str | None]:
    """(spec, mountpoint, options, mount section name) named by a run section."""
    value = items.get("mount", "").split()
    if len(value) == 1:
        base = mount_target_from_section(config, value[0])
        base_items = section_items(config, f"mount:{value[0]}")
        given = options.from_section(f"mount:{value[0]}", base_items)
        return base.spec, base.mountpoint, given, value[0]
    if len(value) == 2:
        return value[0], value[1], {}, None
    if value:
        raise ConfigError(f"[{section}] mount = {items['mount']!r}: expected SPEC MOUNTPOINT")
    if "remote" in items and "mountpoint" in items:
        return items["remote"], items["mountpoint"], {}, None
    raise ConfigError(f"[{section}] needs 'mount = SPEC MOUNTPOINT' (or a [mount:NAME] name)")


def _links(texts: Iterable[str]) -> tuple[LinkSpec, ...]:
    links = tuple(parse_link(text) for text in texts)
    names = [link.name for link in links]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"link name {name!r} given twice")
    return links


def split_words(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(run section name or None, command words) from the words after `run`'s options.

    `words` is an argparse REMAINDER, so it keeps '--' and whatever follows the section name
    verbatim: options after the name (`run index-tts --keep-mounted -- cmd`) are parsed here
    again with `run`'s own parser, into `args`.
    """
    words: list[str] = list(args.words)
    if args.mount and args.pull:
        raise ConfigError("give either --mount or --pull, not both")
    if args.pull and not args.into:
        raise ConfigError("--pull needs --into DIR (where the files go)")
    if args.mount or args.pull:
        return None, words[1:] if words[:1] == ["--"] else words
    if not words or words[0] == "--":
        return None, words[1:]  # no name: `run.sections` chooses one
    name, rest = words[0], words[1:]
    options, command = (
        (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest else (rest, [])
    )
    if options:
        args.run_parser.parse_args(options, namespace=args)
        if args.words:
            raise ConfigError(
                f"unexpected {args.words[0]!r} after {name!r}: put the command after --"
            )
        if args.mount or args.pull:
            raise ConfigError("give either a run section name or --mount/--pull, not both")
    return name, command


def plan_from_args(
    args: argparse.Namespace,
    config: configparser.ConfigParser | None = None,
    project: configparser.ConfigParser | None = None,
    *,
    split: tuple[str | None, list[str]] | None = None,
) -> RunPlan:
    """Resolve `modelfs run` arguments (and a `[run:NAME]` section if named) into a RunPlan.

    With `--mount`, the words are the command. Without it, the first word names a run
    section and the words after `--`, if any, replace its command; with no name, the section
    is chosen (`run.sections`). `project` is the app's own `modelfs.conf`, laid over `config`.
    `split` is `split_words(args)` if the caller has already called it.
    """
    name, words = split if split is not None else split_words(args)
    chosen = None
    if project is not None:
        config = config or configparser.ConfigParser(interpolation=None)
        lay_over(config, project)
    if name is None and not (args.mount or args.pull):
        choice = choose_section(config or configparser.ConfigParser(), project, os.getcwd())
        name, chosen = choice.name, f"using [run:{choice.name}]: {choice.why}"
    items: dict[str, str] = {}
    given: options.Options = {}
    mount_section = None
    pull: PullTarget | None = None
    target: MountTarget | None = None
    if args.pull:
        pull = PullTarget(args.pull, _absolute(args.into))
    elif name is None:
        spec, mountpoint = args.mount
    else:
        section = f"run:{name}"
        items = find_section(config or configparser.ConfigParser(), "run", name)
        options.check_keys(section, items, _RUN_KEYS)
        if "pull" in items:
            if "into" not in items:
                raise ConfigError(f"[{section}] pull = ... needs 'into = DIR'")
            pull = PullTarget(items["pull"].strip(), _absolute(items["into"]))
        else:
            spec, mountpoint, given, mount_section = _section_mount(
                config or configparser.ConfigParser(), section, items
            )
            given.update(options.from_section(section, items))
    given.update(options.from_args(args))
    if pull is None:
        target = MountTarget(
            normalize_spec(spec), _mountpoint(mountpoint), options.option_words(given)
        )

    command = tuple(words) if words else tuple(shlex.split(items.get("command", "")))
    if not command:
        raise ConfigError("no command to run (give it after --, or 'command =' in [run:NAME])")
    link_texts = args.link if args.link else (items.get("link", "") + " " + items.get("links", ""))
    workdir_text = args.workdir or items.get("workdir") or os.getcwd()
    section_name = f"run:{name}"

    def flag(key: str, cli_value: bool) -> bool:
        return cli_value or parse_bool(items.get(key, "false"), f"[{section_name}] {key}")

    def seconds(key: str, cli_value: str | None, default: float) -> float:
        text = cli_value or items.get(key)
        return default if text is None else parse_duration(text)

    def globs(key: str, cli_values: list[str] | None) -> tuple[str, ...]:
        """`--warm GLOB` (repeated) replaces the section's `warm = GLOB ...` as a whole."""
        texts = cli_values or items.get(key, "").split()
        if texts and pull is not None:
            raise ConfigError(f"--{key} needs a mount, not --pull")
        return tuple(parse_glob(text) for text in texts)

    return RunPlan(
        target=target,
        links=_links(link_texts if isinstance(link_texts, list) else link_texts.split()),
        workdir=Path(_absolute(workdir_text)),
        command=command,
        config=args.config,
        move_aside=flag("move-aside", args.move_aside),
        keep_mounted=flag("keep-mounted", args.keep_mounted),
        probe_timeout=seconds("probe-timeout", args.probe_timeout, DEFAULT_PROBE_TIMEOUT),
        watch_interval=seconds("watch-interval", args.watch_interval, DEFAULT_WATCH_INTERVAL),
        drain_timeout=seconds("drain-timeout", args.drain_timeout, DEFAULT_DRAIN_TIMEOUT),
        mount_section=mount_section,
        pull=pull,
        chosen=chosen,
        warm=globs("warm", getattr(args, "warm", None)),
        warm_async=globs("warm-async", getattr(args, "warm_async", None)),
        user=_app_user(args.user or items.get("user", "").strip() or None, target),
        external_mount=args.external_mount,
        profile=_profile(args, items, name, target),
        profile_quiet=seconds("profile-quiet", args.profile_quiet, DEFAULT_PROFILE_QUIET),
        profile_max=parse_size(args.profile_max_size or items.get("profile-max-size", "8G")),
    )


def _profile(
    args: argparse.Namespace,
    items: Mapping[str, str],
    name: str | None,
    target: MountTarget | None,
) -> str | None:
    """The start profile's name: `--profile NAME` or `profile = NAME`, else the run section's
    name; none with `--no-profile`, `profile = off`, or without a mount."""
    chosen = args.profile or items.get("profile", "").strip() or name
    if args.no_profile or target is None or chosen == PROFILE_OFF:
        return None
    return chosen


def _app_user(user: str | None, target: MountTarget | None) -> str | None:
    """The user the app runs as, checked: it exists, `run` can switch to it, and it can
    reach a mount made by root (FUSE lets only the mounting user in without allow_other)."""
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"user {user!r} does not exist") from None
    if entry.pw_uid == os.geteuid():
        return user
    if os.geteuid() != 0:
        raise ConfigError(f"user = {user} needs modelfs run to start as root")
    if target is not None and "--allow-other" not in target.options:
        raise ConfigError(
            f"user = {user} needs allow-other = true for the mount of {target.spec} "
            "(else only the user who mounted it can open it)"
        )
    return user


def validate_paths(plan: RunPlan, mountinfo: str) -> None:
    """Fail early, with one line, on paths the run cannot work with.

    A path listed in mountinfo is left to `check_mount`: a stat of a dead mount fails (or hangs)
    although the mountpoint is there.
    """
    if not plan.workdir.is_dir():
        raise ConfigError(f"workdir {plan.workdir} does not exist or is not a directory")
    if plan.target is None:
        return  # a pull makes its directory
    mountpoint = plan.target.mountpoint
    if find_mount(mountpoint, mountinfo) is None and not os.path.isdir(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} does not exist or is not a directory")
