"""The mount options: the one table every view of them is derived from.

A mount option is set in one of five places, and all of them read `MOUNT_OPTIONS`:

    modelfs mount --cache-max-size 50G ...        `add_mount_arguments` (typed, with defaults)
    modelfs run ... --cache-max-size 50G          `add_forwarded_arguments` (checked, passed on)
    [mount:tts] / [run:x]  cache-max-size = 50G   `from_section` (`section_lines` writes them)
    fstab: -o cache_max_size=50G                  `run.mounthelper` (via `find` and `Kind`)
    systemd drop-in: MODELFS_OPTIONS=...          `option_words` of the section's options

Three kinds: a VALUE takes an argument (`--part-size 8M`), a FLAG is off unless given
(`--read-only`), a SWITCH is on unless turned off (`--no-warm-up`; in a section `warm-up = false`).
Values are checked with the option's own parser wherever they are given, so a typo in a config
section fails before anything is mounted; `run` forwards the text as written, and `modelfs mount`
parses it again. The README's option table lists the same names (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from modelfs.config.units import parse_bool, parse_duration, parse_size
from modelfs.errors import ConfigError


class Kind(enum.Enum):
    VALUE = "value"
    FLAG = "flag"
    SWITCH = "switch"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise ConfigError(f"invalid octal number {text!r} (expected e.g. 022)") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"invalid number {text!r}") from None


def parse_positive(text: str) -> int:
    number = _integer(text)
    if number < 1:
        raise ConfigError(f"{text!r} must be at least 1")
    return number


def _level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"invalid log level {text!r} (one of {', '.join(LOG_LEVELS)})")
    return level


def _path(text: str) -> str:
    return text


def parse_drop_behind(text: str) -> int | None:
    """'auto' -> None (decided from memory), else a size (0: never)."""
    return None if text.strip().lower() == "auto" else parse_size(text)


LOOPBACK = "127.0.0.1"


def parse_listen_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464', 'localhost:9464', or a port alone ('9464': loopback)
    -> (host, port). A host must be named: ':9464' does not mean every interface here."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = LOOPBACK, text.strip()
    host = host.removeprefix("[").removesuffix("]")
    if sep and not host:
        raise ConfigError(
            f"invalid address {text!r}: name the host, {LOOPBACK}:{port_text} (this machine "
            f"only) or 0.0.0.0:{port_text} (every interface)"
        )
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"invalid address {text!r} (expected HOST:PORT, e.g. {LOOPBACK}:9464)")
    return host, port


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "modelfs")


@dataclass(frozen=True, slots=True)
class MountOption:
    name: str  # as on the command line and in sections, without '--'
    kind: Kind
    help: str
    parse: Callable[[str], object] = _path  # VALUE: checks and converts the text
    default: str | Callable[[], str] | None = None  # VALUE: the text a user would write
    metavar: str = "VALUE"

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def default_text(self) -> str | None:
        return self.default() if callable(self.default) else self.default


def _value(
    name: str,
    parse: Callable[[str], object],
    default: str | Callable[[], str] | None,
    metavar: str,
    help: str,
) -> MountOption:
    return MountOption(name, Kind.VALUE, help, parse, default, metavar)


MOUNT_OPTIONS: tuple[MountOption, ...] = (
    _value(
        "cache-dir",
        _path,
        default_cache_dir,
        "DIR",
        "block cache and write-back staging (default ~/.cache/modelfs)",
    ),
    _value(
        "cache-max-size",
        parse_size,
        "10G",
        "SIZE",
        "evict least-recently-used blocks beyond this (default 10G)",
    ),
    _value(
        "dir-cache-time",
        parse_duration,
        "60s",
        "DUR",
        "how long listings and attributes are cached (default 60s)",
    ),
    _value("uid", _integer, lambda: str(os.getuid()), "N", "owner of files (default: you)"),
    _value("gid", _integer, lambda: str(os.getgid()), "N", "group of files (default: yours)"),
    _value("umask", _octal, "022", "OCTAL", "octal umask for modes (default 022)"),
    _value(
        "transfers", parse_positive, "16", "N", "parallel ranged GETs per direction (default 16)"
    ),
    _value("part-size", parse_size, "8M", "SIZE", "size of one readahead GET (default 8M)"),
    _value(
        "max-memory",
        parse_size,
        "256M",
        "SIZE",
        "RAM budget for data in flight, fetched blocks and upload parts (default 256M)",
    ),
    _value(
        "drop-behind",
        parse_drop_behind,
        "auto",
        "auto|SIZE",
        "drop the kernel's cached pages of a file once its one sequential reader is 32 MiB "
        "past them (pages a process has mapped stay; re-reads come from the block cache): "
        "auto, while less than 4x the file's size is available to the reader (MemAvailable "
        "or its cgroup's limit); SIZE, always for files at least this large; 0 never "
        "(default auto)",
    ),
    _value(
        "fill-timeout",
        parse_duration,
        "10m",
        "DUR",
        "with several sources, how long a read waits for a site cache to fetch a large file "
        "from its origin, so the fleet behind it reads the file from the origin once "
        "(docs/fleet.md; 0: never wait; default 10m)",
    ),
    _value(
        "min-rate",
        parse_size,
        "0",
        "SIZE",
        "with several sources, bytes/s below which a read (over 10 s) moves to the next "
        "source (default 0: no floor)",
    ),
    _value(
        "write-back", parse_duration, "5s", "DUR", "delay between close and upload (default 5s)"
    ),
    _value(
        "flush-interval",
        parse_duration,
        "30s",
        "DUR",
        "upload files held open at least this often (default 30s)",
    ),
    _value(
        "store-timeout",
        parse_duration,
        "60s",
        "DUR",
        "how long a request to the store may wait for an answer or its next bytes before it "
        "is retried; a store that never answers fails a read after a few of these; with "
        "several sources, the next one takes over (default 60s)",
    ),
    _value(
        "log-file",
        _path,
        None,
        "PATH",
        "log here instead of stderr (--daemon default: CACHE_DIR/modelfs.log)",
    ),
    _value("log-level", _level, "INFO", "LEVEL", f"one of {', '.join(LOG_LEVELS)} (default INFO)"),
    _value(
        "metrics",
        parse_listen_address,
        None,
        "HOST:PORT",
        "serve Prometheus metrics at http://HOST:PORT/metrics (default off; a port alone "
        "listens on 127.0.0.1; another host than loopback must be given, and is logged)",
    ),
    MountOption(
        "allow-other",
        Kind.FLAG,
        "let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)",
    ),
    MountOption("allow-non-empty", Kind.FLAG, "mount over a non-empty directory"),
    MountOption("read-only", Kind.FLAG, "refuse every write with EROFS"),
    _value(
        "token-file",
        _path,
        None,
        "FILE",
        "a link service's bearer token, for a mount of a manifest URL (default: $MODELFS_TOKEN)",
    ),
    MountOption(
        "prefetch-small",
        Kind.SWITCH,
        "on the first open of a small file (< 1 MiB), fetch its directory's other small "
        "files in one parallel burst (default on)",
    ),
    MountOption(
        "warm-up",
        Kind.SWITCH,
        "at mount time, list the root directory and open a connection to the store, "
        "so the app's first lookup and read do not pay for them (default on)",
    ),
)
_BY_NAME = {option.name: option for option in MOUNT_OPTIONS}

Options = dict[str, str | bool]
"""Mount options as given: {'cache-dir': '/c', 'read-only': True, 'warm-up': False}."""


def find(name: str) -> MountOption | None:
    return _BY_NAME.get(name)


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


# -- argparse ----------------------------------------------------------------------------------


def _argparse_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """`parse` for argparse, which reports an ArgumentTypeError with the option's name."""

    def converted(text: str) -> object:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return converted


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    """`modelfs mount`'s options: parsed into their types, defaults filled in."""
    for option in MOUNT_OPTIONS:
        flag = f"--{option.name}"
        if option.kind is Kind.VALUE:
            default = option.default_text()
            parser.add_argument(
                flag,
                type=_argparse_type(option.parse),
                default=None if default is None else option.parse(default),
                metavar=option.metavar,
                help=option.help,
            )
        elif option.kind is Kind.FLAG:
            parser.add_argument(flag, action="store_true", help=option.help)
        else:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=True, help=option.help
            )


def add_forwarded_arguments(parser: argparse.ArgumentParser) -> None:
    """The same options for a command that passes them on (`run`): each defaults to None
    (not given), and a value keeps the text the user wrote (checked by `from_args`)."""
    group = parser.add_argument_group("mount options (passed on to modelfs mount)")
    for option in MOUNT_OPTIONS:
        flag = f"--{option.name}"
        if option.kind is Kind.VALUE:
            group.add_argument(flag, metavar=option.metavar, default=None, help=option.help)
        elif option.kind is Kind.FLAG:
            group.add_argument(flag, action="store_true", default=None, help=option.help)
        else:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=option.help
            )


def from_args(args: argparse.Namespace) -> Options:
    """The options given on a command line parsed by `add_forwarded_arguments`."""
    options: Options = {}
    for option in MOUNT_OPTIONS:
        value = getattr(args, option.dest, None)
        if value is None or (option.kind is Kind.FLAG and not value):
            continue
        if option.kind is Kind.VALUE:
            options[option.name] = checked_value(f"--{option.name}", option.name, value)
        else:
            options[option.name] = bool(value)
    return options


# -- config sections ----------------------------------------------------------------------------


def from_section(section: str, items: Mapping[str, str]) -> Options:
    """The mount options set in a config section's items (other keys are ignored)."""
    options: Options = {}
    for key, value in items.items():
        option = _BY_NAME.get(key)
        if option is None:
            continue
        if option.kind is Kind.VALUE:
            options[key] = checked_value(f"[{section}]", key, value.strip())
        else:
            options[key] = parse_bool(value, f"[{section}] {key}")
    return options


def check_keys(section: str, items: Iterable[str], allowed: Iterable[str]) -> None:
    """A section may hold its own keys and any mount option; anything else is a typo."""
    unknown = sorted(set(items) - set(allowed) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"[{section}]: unknown key {unknown[0]!r}")


def checked_value(where: str, key: str, value: str) -> str:
    """`value` unchanged if `modelfs mount --KEY` will accept it, else a ConfigError."""
    try:
        _BY_NAME[key].parse(value)
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: invalid {key} {value!r}") from exc
    return value


def option_words(options: Mapping[str, str | bool]) -> tuple[str, ...]:
    """{'cache-dir': '/c', 'read-only': True, 'warm-up': False}
    -> ('--cache-dir', '/c', '--read-only', '--no-warm-up'), in table order."""
    words: list[str] = []
    for option in MOUNT_OPTIONS:
        value = options.get(option.name)
        if value is True:
            words.append(f"--{option.name}")
        elif value is False and option.kind is Kind.SWITCH:
            words.append(f"--no-{option.name}")
        elif isinstance(value, str):
            words += [f"--{option.name}", value]
    return tuple(words)


def section_lines(options: Mapping[str, str | bool]) -> list[str]:
    """{'cache-dir': '/c', 'read-only': True, 'warm-up': False}
    -> ['cache-dir = /c', 'read-only = true', 'warm-up = false'] (what `from_section` reads)."""
    lines: list[str] = []
    for option in MOUNT_OPTIONS:
        value = options.get(option.name)
        if isinstance(value, bool):
            lines.append(f"{option.name} = {'true' if value else 'false'}")
        elif value is not None:
            lines.append(f"{option.name} = {value}")
    return lines
