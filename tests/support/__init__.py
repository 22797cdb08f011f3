"""Shared test infrastructure: a real SeaweedFS server, a fault proxy, config helpers.

Other test files and the benchmark script import from here:

    from support import SeaweedServer, FaultProxy, make_config, remote_config, unique_bucket_name

`tests/` is on sys.path under pytest (rootdir conftest); scripts outside pytest add it first.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from modelfs.config.remote import RemoteConfig

from .proxy import FaultProxy, ProxyRequest, method_is, path_contains
from .seaweed import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    SITE_ARGS,
    SeaweedError,
    SeaweedServer,
    remote_mount_commands,
)

__all__ = [
    "ACCESS_KEY",
    "REGION",
    "SECRET_KEY",
    "SITE_ARGS",
    "FaultProxy",
    "ProxyRequest",
    "SeaweedError",
    "SeaweedServer",
    "make_config",
    "method_is",
    "path_contains",
    "remote_config",
    "remote_mount_commands",
    "unique_bucket_name",
]

_bucket_serial = itertools.count(1)
_MAX_BUCKET_NAME = 63  # S3's limit


def make_config(
    directory: Path,
    endpoint: str,
    *,
    name: str = "test",
    access_key_id: str = ACCESS_KEY,
    secret_access_key: str = SECRET_KEY,
    provider: str = "SeaweedFS",
    region: str = REGION,
    extra: str = "",
    filename: str = "modelfs.conf",
) -> Path:
    """Write an rclone-style config with one s3 remote `name` (plus `extra` raw text, e.g.
    more sections) to `directory/filename` (mode 0600) and return its path. Appends if the
    file exists, so several remotes can be written into one file."""
    path = Path(directory) / filename
    section = (
        f"[{name}]\n"
        "type = s3\n"
        f"provider = {provider}\n"
        f"access_key_id = {access_key_id}\n"
        f"secret_access_key = {secret_access_key}\n"
        f"endpoint = {endpoint}\n"
        f"region = {region}\n"
    )
    with path.open("a") as file:
        file.write(section + ("\n" + extra if extra else "") + "\n")
    path.chmod(0o600)  # it holds keys: readable by others, modelfs would warn
    return path


def remote_config(
    endpoint: str,
    *,
    name: str = "test",
    access_key_id: str = ACCESS_KEY,
    secret_access_key: str = SECRET_KEY,
    region: str = REGION,
) -> RemoteConfig:
    """The RemoteConfig `make_config` would produce, without a file."""
    return RemoteConfig(
        name=name,
        type="s3",
        provider="SeaweedFS",
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        endpoint=endpoint,
        region=region,
    )


def unique_bucket_name(hint: str = "") -> str:
    """A valid, run-unique S3 bucket name, readable in server logs: 't<pid>-<n>-<hint>'."""
    stem = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    name = f"t{os.getpid()}-{next(_bucket_serial)}-{stem}"[:_MAX_BUCKET_NAME]
    return name.rstrip("-.")
