"""The config file: which one is read, and the remotes and sections in it.

Search order (the first that exists wins): `--config FILE`, `$MODELFS_CONFIG`,
`$XDG_CONFIG_HOME/modelfs/modelfs.conf`, `$XDG_CONFIG_HOME/rclone/rclone.conf`, where
XDG_CONFIG_HOME defaults to `~/.config`. A file named explicitly (argument or environment) that
does not exist is an error rather than a silent fall-through to another file. The format is
rclone's INI (see `config.remote`): sections without ':' are remotes, `[run:NAME]` and
`[mount:NAME]` belong to `modelfs run` (see `run.plan`).
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from modelfs.config.remote import SUPPORTED_TYPE, RemoteConfig, RemoteSpec, parse_spec
from modelfs.errors import ConfigError

CONFIG_ENV = "MODELFS_CONFIG"
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
    return new_parser() if path is None else read_config(path)


def read_config(path: Path) -> configparser.ConfigParser:
    """The config file at `path`; ConfigError if it cannot be read or parsed."""
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
    return parser


def new_parser() -> configparser.ConfigParser:
    """A parser with rclone's conventions: no '%' interpolation (secrets may contain '%')."""
    return configparser.ConfigParser(interpolation=None)


def load_remotes(explicit: str | None) -> dict[str, RemoteConfig]:
    """Every remote section (name without ':') of the config, whatever its type."""
    path = config_path(explicit)
    return {} if path is None else remotes_in(path)


def remotes_in(path: Path) -> dict[str, RemoteConfig]:
    """Every remote section of the config file at `path`, each knowing its file."""
    parser = read_config(path)
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
