"""Remotes: which S3 endpoint, credentials and bucket prefix a `REMOTE:BUCKET/PREFIX` names.

The config file is rclone's INI format, so an existing `rclone.conf` works unchanged:

    [compshare]                 <- a remote: a section name without ':'
    type = s3                   <- the only type modelfs accepts
    provider = Other
    access_key_id = AKIA...     <- optional: without keys (or with env_auth = true) boto3's
    secret_access_key = ...        default chain is used (env vars, profile, STS web identity,
    session_token = ...            instance role)
    endpoint = https://s3.example.com     <- empty means AWS
    region = cn-wlcb

    [run:indextts]              <- sections with ':' belong to other modelfs commands
    [mount:models]

Search order for the file (the first that exists wins): `--config FILE`, `$MODELFS_CONFIG`,
`$XDG_CONFIG_HOME/modelfs/modelfs.conf`, `$XDG_CONFIG_HOME/rclone/rclone.conf`, where
XDG_CONFIG_HOME defaults to `~/.config`. A file named explicitly (argument or environment) that
does not exist is an error rather than a silent fall-through to another file.

Invariants: a `RemoteSpec` always holds a valid bucket name and a prefix that is empty or ends
with '/', with no empty, '.' or '..' segment; `repr()` of a `RemoteConfig` never shows secrets.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

SUPPORTED_TYPE = "s3"
CONFIG_ENV = "MODELFS_CONFIG"

# rclone's own rule for remote names: word characters, '.', '-', '+', '@' and spaces inside.
_REMOTE_NAME = re.compile(r"[\w.+@-](?:[\w.+@ -]*[\w.+@-])?")
# AWS bucket naming rules: 3-63 characters of lowercase letters, digits, '.' and '-',
# starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# rclone writes this header in front of a config encrypted with `rclone config password`.
_RCLONE_ENCRYPTED_HEADER = "RCLONE_ENCRYPT_V0:"
# Show this many leading characters of an access key id (AWS ids are 20 long and their first
# four only say which kind of key it is, e.g. AKIA or ASIA); shorter ids are masked entirely.
_KEY_VISIBLE_CHARS = 4
_KEY_MIN_LEN_TO_SHOW = 12
_MASK = "****"
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", ""})


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    """A parsed `REMOTE:BUCKET[/PREFIX]`."""

    remote: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"{self.remote}:{path}"


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """One `[name]` section of the config file. Secrets are kept out of `repr()`."""

    name: str
    type: str = SUPPORTED_TYPE
    provider: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    endpoint: str = ""
    region: str = ""
    env_auth: bool = False

    @property
    def uses_default_credentials(self) -> bool:
        """True when boto3's default credential chain supplies the keys."""
        return self.env_auth or not self.access_key_id

    @classmethod
    def from_section(cls, name: str, section: configparser.SectionProxy) -> RemoteConfig:
        endpoint = section.get("endpoint", "").strip()
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"  # rclone accepts a bare host and means https
        return cls(
            name=name,
            type=section.get("type", "").strip(),
            provider=section.get("provider", "").strip(),
            access_key_id=section.get("access_key_id", "").strip(),
            secret_access_key=section.get("secret_access_key", "").strip(),
            session_token=section.get("session_token", "").strip(),
            endpoint=endpoint.rstrip("/"),
            region=section.get("region", "").strip(),
            env_auth=_parse_bool(section.get("env_auth", ""), f"env_auth of remote {name!r}"),
        )

    def describe(self) -> str:
        """One line for `modelfs remotes`, secrets masked."""
        parts = [f"{self.name}: type={self.type or '(missing)'}"]
        if self.type != SUPPORTED_TYPE:
            parts.append("(unsupported by modelfs)")
        for label, value in (
            ("provider", self.provider),
            ("endpoint", self.endpoint or "(AWS)"),
            ("region", self.region),
        ):
            if value:
                parts.append(f"{label}={value}")
        if self.uses_default_credentials:
            parts.append("credentials=default chain (env, profile, web identity, instance role)")
        else:
            parts.append(f"access_key_id={mask_key_id(self.access_key_id)}")
            parts.append(f"secret_access_key={_MASK}")
            if self.session_token:
                parts.append(f"session_token={_MASK}")
        return " ".join(parts)


def mask_key_id(key_id: str) -> str:
    """'AKIAIOSFODNN7EXAMPLE' -> 'AKIA****'; short ids are masked entirely."""
    if len(key_id) < _KEY_MIN_LEN_TO_SHOW:
        return _MASK
    return key_id[:_KEY_VISIBLE_CHARS] + _MASK


# -- spec parsing ----------------------------------------------------------------------------


def parse_spec(text: str) -> RemoteSpec:
    """Parse `REMOTE:BUCKET[/PREFIX]`; raise ConfigError naming what is wrong."""
    remote, sep, path = text.partition(":")
    if not sep:
        raise ConfigError(f"invalid remote spec {text!r}: expected REMOTE:BUCKET[/PREFIX]")
    if not remote:
        raise ConfigError(f"invalid remote spec {text!r}: empty remote name before ':'")
    if not _REMOTE_NAME.fullmatch(remote):
        raise ConfigError(f"invalid remote spec {text!r}: bad remote name {remote!r}")
    bucket, _, prefix = path.partition("/")
    if not bucket:
        raise ConfigError(f"invalid remote spec {text!r}: empty bucket name after ':'")
    _check_bucket_name(bucket, text)
    return RemoteSpec(remote=remote, bucket=bucket, prefix=_normalise_prefix(prefix, text))


def _check_bucket_name(bucket: str, text: str) -> None:
    problem = None
    if not _BUCKET_NAME.fullmatch(bucket):
        problem = "3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a-z or 0-9"
    elif ".." in bucket:
        problem = "no '..'"
    elif _looks_like_ip(bucket):
        problem = "not an IP address"
    if problem:
        raise ConfigError(f"invalid bucket name {bucket!r} in {text!r}: S3 requires {problem}")


def _looks_like_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _normalise_prefix(prefix: str, text: str) -> str:
    """'models/v23' and 'models/v23/' -> 'models/v23/'; '' stays ''."""
    if not prefix:
        return ""
    body = prefix[:-1] if prefix.endswith("/") else prefix
    for segment in body.split("/"):
        if segment in ("", ".", ".."):
            shown = repr(segment) if segment else "an empty segment ('//')"
            raise ConfigError(f"invalid prefix {prefix!r} in {text!r}: {shown} is not allowed")
        if "\0" in segment:
            raise ConfigError(f"invalid prefix {prefix!r} in {text!r}: NUL byte")
    return body + "/"


# -- config files ----------------------------------------------------------------------------


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


def config_target(explicit: str | None) -> Path:
    """Where to write new sections: the file that would be read, else the modelfs default."""
    named = _explicitly_named(explicit)
    if named is not None:
        return named[0]
    existing = config_path(None)
    return existing if existing is not None else config_candidates()[0]


def _explicitly_named(explicit: str | None) -> tuple[Path, str] | None:
    if explicit:
        return Path(explicit).expanduser(), "given with --config"
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env).expanduser(), f"from ${CONFIG_ENV}"
    return None


def load_config(explicit: str | None) -> configparser.ConfigParser:
    """The whole config file (remotes and other commands' sections); empty if none exists."""
    parser = new_parser()
    path = config_path(explicit)
    if path is None:
        return parser
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
    parser = load_config(explicit)
    return {
        name: RemoteConfig.from_section(name, parser[name])
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


def _parse_bool(text: str, what: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigError(f"invalid {what}: {text!r} (expected true or false)")
