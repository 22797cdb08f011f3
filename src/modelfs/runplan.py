"""What `modelfs run` will do, resolved from the command line and the config file.

What it owns: the `[run:NAME]` and `[mount:NAME]` config sections, the table of mount options
`run` forwards to `modelfs mount`, and `RunPlan`, the validated result. No side effects beyond
reading the file system to validate paths, so every rule here is unit-tested without a mount.

    [mount:tts]                           [run:index-tts]
    remote = compshare:index-tts-data     mount = tts          (or: mount = SPEC MOUNTPOINT)
    mountpoint = /mnt/tts                 link = cache_hub=cache_hub_v23
    cache-max-size = 50G                         logs=logs
    allow-other = true                    workdir = /srv/index-tts
                                          command = python webui.py --listen --port 7860

Precedence, lowest first: the `[mount:NAME]` section a run section names, the run section, the
command line. `--link` on the command line replaces the section's links as a whole (switching
versions is `modelfs run index-tts --link cache_hub=cache_hub_v24`); words after the section name
replace its command.
"""

from __future__ import annotations

import argparse
import configparser
import os
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .control import canonical_mountpoint
from .errors import ConfigError
from .links import LinkSpec, parse_link
from .mountcheck import DEFAULT_PROBE_TIMEOUT, find_mount, normalize_spec
from .values import parse_duration, parse_size


def _octal(text: str) -> int:
    return int(text, 8)


# `modelfs mount` options that `run`, `[run:*]` and `[mount:*]` forward verbatim (CLI.md), each
# with the parser that validates it here, so a typo fails before anything is mounted.
_MOUNT_VALUE_PARSERS: dict[str, Callable[[str], object]] = {
    "cache-dir": str,
    "cache-max-size": parse_size,
    "dir-cache-time": parse_duration,
    "uid": int,
    "gid": int,
    "umask": _octal,
    "transfers": int,
    "part-size": parse_size,
    "max-memory": parse_size,
    "drop-behind": parse_size,
    "write-back": parse_duration,
    "flush-interval": parse_duration,
    "log-file": str,
    "log-level": str.upper,
}
MOUNT_VALUE_OPTIONS = tuple(_MOUNT_VALUE_PARSERS)
_METAVARS: dict[Callable[[str], object], str] = {
    parse_size: "SIZE",
    parse_duration: "DUR",
    int: "N",
    _octal: "OCTAL",
    str: "PATH",
    str.upper: "LEVEL",
}
MOUNT_FLAG_OPTIONS = ("allow-other", "allow-non-empty", "read-only")
# On by default in `modelfs mount`; forwarded as `--NAME` or `--no-NAME`, and in a section as
# `NAME = true` or `NAME = false`.
MOUNT_SWITCH_OPTIONS = ("prefetch-small", "warm-up")

_RUN_KEYS = frozenset(
    {"mount", "remote", "mountpoint", "link", "links", "workdir", "command"}
    | {"move-aside", "keep-mounted", "probe-timeout", "watch-interval"}
)
_MOUNT_KEYS = frozenset({"remote", "mountpoint"})
# How often the watchdog stats the mount while the app runs: a dead mount is noticed within
# this, and one stat every few seconds costs nothing measurable.
DEFAULT_WATCH_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class MountTarget:
    """A remote spec, where it is mounted, and the `modelfs mount` options to mount it with."""

    spec: str
    mountpoint: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunPlan:
    target: MountTarget
    links: tuple[LinkSpec, ...]
    workdir: Path
    command: tuple[str, ...]
    config: str | None = None
    move_aside: bool = False
    keep_mounted: bool = False
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    watch_interval: float = DEFAULT_WATCH_INTERVAL
    mount_section: str | None = None  # the [mount:NAME] it used, for unit ordering


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """The forwarded `modelfs mount` options, each defaulting to None (= not given)."""
    group = parser.add_argument_group("mount options (forwarded to modelfs mount)")
    parser_of = _MOUNT_VALUE_PARSERS
    for name in MOUNT_VALUE_OPTIONS:
        group.add_argument(
            f"--{name}", metavar=_METAVARS.get(parser_of[name], "VALUE"), default=None
        )
    for name in MOUNT_FLAG_OPTIONS:
        group.add_argument(f"--{name}", action="store_true", default=None)
    for name in MOUNT_SWITCH_OPTIONS:
        group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def section_items(config: configparser.ConfigParser, section: str) -> dict[str, str]:
    """The section's own keys (not DEFAULT's), normalized to dash form."""
    return {_key(k): v for k, v in config.items(section, raw=True) if k not in config.defaults()}


def _truthy(section: str, key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"[{section}] {key} = {value!r} is not a boolean (true/false)")


def mount_options_from(section: str, items: Mapping[str, str]) -> dict[str, str | bool]:
    """The mount options set in a section's items."""
    options: dict[str, str | bool] = {}
    for key, value in items.items():
        if key in MOUNT_VALUE_OPTIONS:
            options[key] = checked_value(section, key, value.strip())
        elif key in MOUNT_FLAG_OPTIONS or key in MOUNT_SWITCH_OPTIONS:
            options[key] = _truthy(section, key, value)
    return options


def checked_value(where: str, key: str, value: str) -> str:
    """`value` unchanged if `modelfs mount --KEY` will accept it, else a ConfigError."""
    try:
        _MOUNT_VALUE_PARSERS[key](value)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: invalid {key} {value!r}") from exc
    return value


def mount_options_from_args(args: argparse.Namespace) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for key in MOUNT_VALUE_OPTIONS:
        value = getattr(args, key.replace("-", "_"), None)
        if value is not None:
            options[key] = checked_value(f"--{key}", key, value)
    for key in MOUNT_FLAG_OPTIONS:
        if getattr(args, key.replace("-", "_"), None):
            options[key] = True
    for key in MOUNT_SWITCH_OPTIONS:
        switch = getattr(args, key.replace("-", "_"), None)
        if switch is not None:
            options[key] = switch
    return options


def option_words(options: Mapping[str, str | bool]) -> tuple[str, ...]:
    """{'cache-dir': '/c', 'read-only': True, 'warm-up': False}
    -> ('--cache-dir', '/c', '--read-only', '--no-warm-up')."""
    words: list[str] = []
    for key in (*MOUNT_VALUE_OPTIONS, *MOUNT_FLAG_OPTIONS, *MOUNT_SWITCH_OPTIONS):
        value = options.get(key)
        if value is True:
            words.append(f"--{key}")
        elif value is False and key in MOUNT_SWITCH_OPTIONS:
            words.append(f"--no-{key}")
        elif isinstance(value, str):
            words += [f"--{key}", value]
    return tuple(words)


def _check_keys(section: str, items: Iterable[str], allowed: frozenset[str]) -> None:
    known = allowed | set(MOUNT_VALUE_OPTIONS) | set(MOUNT_FLAG_OPTIONS) | set(MOUNT_SWITCH_OPTIONS)
    unknown = sorted(set(items) - known)
    if unknown:
        raise ConfigError(f"[{section}]: unknown key {unknown[0]!r}")


def find_section(config: configparser.ConfigParser, kind: str, name: str) -> dict[str, str]:
    section = f"{kind}:{name}"
    if not config.has_section(section):
        have = sorted(s for s in config.sections() if s.startswith(f"{kind}:"))
        hint = f" (have: {', '.join(have)})" if have else ""
        raise ConfigError(f"no [{section}] section in the config file{hint}")
    return section_items(config, section)


def mount_target_from_section(config: configparser.ConfigParser, name: str) -> MountTarget:
    """A `[mount:NAME]` section as a MountTarget."""
    section = f"mount:{name}"
    items = find_section(config, "mount", name)
    _check_keys(section, items, _MOUNT_KEYS)
    if "remote" not in items or "mountpoint" not in items:
        raise ConfigError(f"[{section}] needs both 'remote' and 'mountpoint'")
    options = option_words(mount_options_from(section, items))
    return MountTarget(normalize_spec(items["remote"]), _mountpoint(items["mountpoint"]), options)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path.strip()))


def _mountpoint(path: str) -> str:
    """As mountinfo lists it, without a stat of the mountpoint itself (may hang if stuck)."""
    return canonical_mountpoint(os.path.expanduser(path.strip()))


def _section_mount(
    config: configparser.ConfigParser, section: str, items: Mapping[str, str]
) -> tuple[str, str, dict[str, str | bool], str | None]:
    """(spec, mountpoint, options, mount section name) named by a run section."""
    value = items.get("mount", "").split()
    if len(value) == 1:
        base = mount_target_from_section(config, value[0])
        base_items = section_items(config, f"mount:{value[0]}")
        options = mount_options_from(f"mount:{value[0]}", base_items)
        return base.spec, base.mountpoint, options, value[0]
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
    if args.mount:
        return None, words[1:] if words[:1] == ["--"] else words
    if not words or words[0] == "--":
        raise ConfigError("give a run section name or --mount REMOTE:BUCKET MOUNTPOINT")
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
        if args.mount:
            raise ConfigError("give either a run section name or --mount, not both")
    return name, command


def plan_from_args(
    args: argparse.Namespace, config: configparser.ConfigParser | None = None
) -> RunPlan:
    """Resolve `modelfs run` arguments (and a `[run:NAME]` section if named) into a RunPlan.

    With `--mount`, the words are the command. Without it, the first word names a run
    section and the words after `--`, if any, replace its command.
    """
    name, words = split_words(args)
    items: dict[str, str] = {}
    options: dict[str, str | bool] = {}
    mount_section = None
    if name is None:
        spec, mountpoint = args.mount
    else:
        section = f"run:{name}"
        items = find_section(config or configparser.ConfigParser(), "run", name)
        _check_keys(section, items, _RUN_KEYS)
        spec, mountpoint, options, mount_section = _section_mount(
            config or configparser.ConfigParser(), section, items
        )
        options.update(mount_options_from(section, items))
    options.update(mount_options_from_args(args))

    command = tuple(words) if words else tuple(shlex.split(items.get("command", "")))
    if not command:
        raise ConfigError("no command to run (give it after --, or 'command =' in [run:NAME])")
    link_texts = args.link if args.link else (items.get("link", "") + " " + items.get("links", ""))
    workdir_text = args.workdir or items.get("workdir") or os.getcwd()
    section_name = f"run:{name}"

    def flag(key: str, cli_value: bool) -> bool:
        return cli_value or _truthy(section_name, key, items.get(key, "false"))

    def seconds(key: str, cli_value: str | None, default: float) -> float:
        text = cli_value or items.get(key)
        return default if text is None else parse_duration(text)

    return RunPlan(
        target=MountTarget(normalize_spec(spec), _mountpoint(mountpoint), option_words(options)),
        links=_links(link_texts if isinstance(link_texts, list) else link_texts.split()),
        workdir=Path(_absolute(workdir_text)),
        command=command,
        config=args.config,
        move_aside=flag("move-aside", args.move_aside),
        keep_mounted=flag("keep-mounted", args.keep_mounted),
        probe_timeout=seconds("probe-timeout", args.probe_timeout, DEFAULT_PROBE_TIMEOUT),
        watch_interval=seconds("watch-interval", args.watch_interval, DEFAULT_WATCH_INTERVAL),
        mount_section=mount_section,
    )


def validate_paths(plan: RunPlan, mountinfo: str) -> None:
    """Fail early, with one line, on paths the run cannot work with.

    A path listed in mountinfo is left to `check_mount`: a stat of a dead mount fails (or hangs)
    although the mountpoint is there.
    """
    if not plan.workdir.is_dir():
        raise ConfigError(f"workdir {plan.workdir} does not exist or is not a directory")
    mountpoint = plan.target.mountpoint
    if find_mount(mountpoint, mountinfo) is None and not os.path.isdir(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} does not exist or is not a directory")
