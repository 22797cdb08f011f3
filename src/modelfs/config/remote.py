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
    ca_bundle = /etc/ssl/private-ca.pem   <- optional: the CAs HTTPS trusts, in every lane
    sources = site:models, compshare:models   <- optional, for mounts: read from these first
                                                 (`config.sourcelist`; rclone ignores it)

    [run:indextts]              <- sections with ':' belong to other modelfs commands
    [mount:models]

Which file is read, and how a spec finds its remote in it: `config.files`.

Invariants: a `RemoteSpec` always holds a valid bucket name and a prefix that is empty or ends
with '/', with no empty, '.' or '..' segment; `repr()` of a `RemoteConfig` never shows secrets.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from dataclasses import dataclass, field

from modelfs.config.units import parse_bool
from modelfs.errors import ConfigError

SUPPORTED_TYPE = "s3"

# rclone's own rule for remote names: word characters, '.', '-', '+', '@' and spaces inside.
_REMOTE_NAME = re.compile(r"[\w.+@-](?:[\w.+@ -]*[\w.+@-])?")
# AWS bucket naming rules: 3-63 characters of lowercase letters, digits, '.' and '-',
# starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Show this many leading characters of an access key id (AWS ids are 20 long and their first
# four only say which kind of key it is, e.g. AKIA or ASIA); shorter ids are masked entirely.
_KEY_VISIBLE_CHARS = 4
_KEY_MIN_LEN_TO_SHOW = 12
_MASK = "****"


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    """A parsed `REMOTE:BUCKET[/PREFIX]`."""

    remote: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"{self.remote}:{path}"

    @property
    def source(self) -> str:
        """The canonical text, without a trailing '/': what a mount shows as its source in
        mountinfo, and how two specs are compared."""
        return str(self).rstrip("/")


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
    ca_bundle: str = ""  # a PEM file of the CAs HTTPS trusts; "": AWS_CA_BUNDLE, ..., botocore's
    sources: tuple[str, ...] = ()  # the `sources` key, as written (see `config.sourcelist`)
    # The file the section was read from ("" if none): its keys are re-read from there when
    # it changes (see `config.keys`). Not part of what a remote is.
    config_file: str = field(default="", compare=False)

    @property
    def uses_default_credentials(self) -> bool:
        """True when boto3's default credential chain supplies the keys."""
        return self.env_auth or not self.access_key_id

    @classmethod
    def from_section(
        cls, name: str, section: configparser.SectionProxy, *, config_file: str = ""
    ) -> RemoteConfig:
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
            ca_bundle=os.path.expanduser(section.get("ca_bundle", "").strip()),
            env_auth=parse_bool(section.get("env_auth", ""), f"[{name}] env_auth"),
            sources=tuple(
                word.strip() for word in section.get("sources", "").split(",") if word.strip()
            ),
            config_file=config_file,
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
            ("ca_bundle", self.ca_bundle),
            ("sources", ",".join(self.sources)),
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


def normalize_spec(text: str) -> str:
    """'remote:bucket/prefix/' -> 'remote:bucket/prefix' (see `RemoteSpec.source`)."""
    return parse_spec(text.strip()).source


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
