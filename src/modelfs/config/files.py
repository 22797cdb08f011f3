"""The config file: which one is read, and the remotes and sections in it.

Search order (the first that exists wins): `--config FILE`, `$MODELFS_CONFIG`,
`$XDG_CONFIG_HOME/modelfs/modelfs.conf`, `$XDG_CONFIG_HOME/rclone/rclone.conf`, where
XDG_CONFIG_HOME defaults to `~/.config`. A file named explicitly (argument or environment) that
does not exist is an error rather than a silent fall-through to another file. The format is
rclone's INI (see `config.remote`): sections without ':' are remotes, `[run:NAME]` and
`[mount:NAME]` belong to `modelfs run` (see `run.plan`), `[serve:NAME]` to `modelfs serve`
(see `links.commands`); `find_section` reads any of them.

An app's own `modelfs.conf`, beside its start script, is read by `run` too (`project_config`):
it holds run and mount sections only, never a remote (keys stay in the config file), and its
sections are laid over the config file's (`lay_over`). `write_section` adds or replaces one
section of a file (`run --save`), written whole and renamed into place, mode 0600.

A file that holds keys (`secret_access_key`, `session_token`) and that group or others can read
gets one warning per process, as ssh warns of a private key others can read (modelfs still
reads it: refusing would stop mounts that work today).
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from modelfs.config.remote import SUPPORTED_TYPE, RemoteConfig, RemoteSpec, parse_spec
from modelfs.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_ENV = "MODELFS_CONFIG"
PROJECT_FILE = "modelfs.conf"  # an app's own file of run sections, in its directory
_SECRET_KEYS = ("secret_access_key", "session_token")
_warned_readable: set[Path] = set()
# rclone writes this header in front of a config encrypted with `rclone config password`.
_RCLONE_ENCRYPTED_HEADER = "RCLONE_ENCRYPT_V0:"


def config_candidates() -> list[Path]:
    """The default files searched when no explicit one is named, in order."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path(xdg) / "modelfs" / "modelfs.conf", Path(xdg) / "rclone" / "rclone.conf"]


def config_path(explicit: str | None) -> Path | None:
    """The config file to read, or None if there is none anywhere."""
    named = _explicitly_named(explicit)
    if named is not None:
        path, origin = named
        if not path.is_file():
            raise ConfigError(f"config file {path} ({origin}) does not exist")
        return path
    for candidate in config_candidates():
        if candidate.is_file():
            return candidate
    return None


def _explicitly_named(explicit: str | None) -> tuple[Path, str] | None:
    if explicit:
        return Path(explicit).expanduser(), "given with --config"
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env).expanduser(), f"from ${CONFIG_ENV}"
    return None


def load_config(explicit: str | None) -> configparser.ConfigParser:
    """The whole config file (remotes and other commands' sections); empty if none exists."""
    path = config_path(explicit)
    return new_parser() if path is None else read_file(path)


def read_file(path: Path) -> configparser.ConfigParser:
    """One config file, parsed; ConfigError (one line) if it cannot be read or parsed."""
    parser = new_parser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if text.lstrip().startswith(_RCLONE_ENCRYPTED_HEADER):
        raise ConfigError(
            f"config file {path} is encrypted by rclone; modelfs cannot read encrypted configs"
        )
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"invalid config file {path}: {first_line}") from exc
    _warn_if_others_can_read_keys(path, parser)
    return parser


def project_config(directory: Path, explicit: str | None) -> configparser.ConfigParser | None:
    """`directory/modelfs.conf`, an app's own run and mount sections; None if there is none,
    or if it is the config file in use anyway."""
    path = directory / PROJECT_FILE
    if not path.is_file():
        return None
    in_use = config_path(explicit)
    if in_use is not None and in_use.resolve() == path.resolve():
        return None
    parser = read_file(path)
    remotes = [name for name in parser.sections() if ":" not in name]
    if remotes:
        home = in_use or config_candidates()[0]
        raise ConfigError(
            f"{path} defines remote [{remotes[0]}]: keep remotes and their keys in {home}; "
            f"an app's {PROJECT_FILE} holds [run:NAME] and [mount:NAME] sections only"
        )
    return parser


def lay_over(base: configparser.ConfigParser, top: configparser.ConfigParser) -> None:
    """Put every section of `top` into `base`, replacing a section of the same name whole."""
    for section in top.sections():
        base.remove_section(section)
        base.add_section(section)
        for key, value in top.items(section, raw=True):
            if key not in top.defaults():
                base.set(section, key, value)


def section_items(config: configparser.ConfigParser, section: str) -> dict[str, str]:
    """The section's own keys (not DEFAULT's), normalized to dash form."""
    return {
        key.strip().lower().replace("_", "-"): value
        for key, value in config.items(section, raw=True)
        if key not in config.defaults()
    }


def find_section(config: configparser.ConfigParser, kind: str, name: str) -> dict[str, str]:
    """The items of `[KIND:NAME]`, or a ConfigError naming the sections of that kind."""
    section = f"{kind}:{name}"
    if not config.has_section(section):
        have = sorted(s for s in config.sections() if s.startswith(f"{kind}:"))
        hint = f" (have: {', '.join(have)})" if have else ""
        raise ConfigError(f"no [{section}] section in the config file{hint}")
    return section_items(config, section)


def write_section(path: Path, section: str, lines: Sequence[str]) -> bool:
    """Add `[section]` with `lines` to the file at `path` (created if missing), replacing a
    section of that name; the rest of the file is kept as written. True if one was replaced.
    The file is written whole beside the old one and renamed over it, mode 0600."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    kept, replaced = _without_section(old, section)
    block = "\n".join([f"[{section}]", *lines]) + "\n"
    text = kept.rstrip("\n") + "\n\n" + block if kept.strip() else block
    try:
        new_parser().read_string(text, source=str(path))
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"cannot add [{section}] to {path}: {first_line}") from exc
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return replaced


_HEADER = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def _without_section(text: str, section: str) -> tuple[str, bool]:
    """`text` without the lines of `[section]` (its header up to the next header)."""
    kept: list[str] = []
    inside = replaced = False
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header is not None:
            inside = header.group(1).strip() == section
            replaced = replaced or inside
        if not inside:
            kept.append(line)
    return "".join(kept), replaced


def _warn_if_others_can_read_keys(path: Path, parser: configparser.ConfigParser) -> None:
    """One warning per file and process if it holds keys and group or others can read it."""
    if path in _warned_readable:
        return
    holds_keys = any(
        parser.get(name, key, fallback="").strip()
        for name in parser.sections()
        if ":" not in name
        for key in _SECRET_KEYS
    )
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if holds_keys and mode & 0o044:
        _warned_readable.add(path)
        log.warning(
            "config file %s holds secret keys and group or others can read it (mode %04o): "
            "chmod 600 %s",
            path,
            mode,
            path,
        )


def new_parser() -> configparser.ConfigParser:
    """A parser with rclone's conventions: no '%' interpolation (secrets may contain '%')."""
    return configparser.ConfigParser(interpolation=None)


def load_remotes(explicit: str | None) -> dict[str, RemoteConfig]:
    """Every remote section (name without ':') of the config, whatever its type."""
    path = config_path(explicit)
    return {} if path is None else remotes_in(path)


def remotes_in(path: Path) -> dict[str, RemoteConfig]:
    """Every remote section of the config file at `path`, each knowing its file."""
    parser = read_file(path)
    where = os.path.abspath(path)  # not resolved: a symlink swapped to new keys is followed
    return {
        name: RemoteConfig.from_section(name, parser[name], config_file=where)
        for name in parser.sections()
        if ":" not in name
    }


def resolve(spec_text: str, explicit_config: str | None) -> tuple[RemoteConfig, RemoteSpec]:
    """Parse `spec_text` and find its remote; raise ConfigError if it cannot be used."""
    spec = parse_spec(spec_text)
    remotes = load_remotes(explicit_config)
    remote = remotes.get(spec.remote)
    if remote is None:
        raise ConfigError(_unknown_remote_message(spec.remote, remotes, explicit_config))
    if remote.type != SUPPORTED_TYPE:
        shown_type = remote.type or "(none)"
        raise ConfigError(
            f"remote {remote.name!r} has type {shown_type}; modelfs supports only {SUPPORTED_TYPE}"
        )
    return remote, spec


def _unknown_remote_message(
    name: str, remotes: dict[str, RemoteConfig], explicit_config: str | None
) -> str:
    path = config_path(explicit_config)
    if path is None:
        searched = ", ".join(str(p) for p in config_candidates())
        return f"unknown remote {name!r}: no config file found (searched {searched})"
    known = ", ".join(sorted(remotes)) or "none"
    return f"unknown remote {name!r} in {path} (known remotes: {known})"


def describe_remotes(explicit: str | None) -> list[str]:
    """One masked line per remote, sorted by name, for `modelfs remotes`."""
    remotes = load_remotes(explicit)
    return [remotes[name].describe() for name in sorted(remotes)]
