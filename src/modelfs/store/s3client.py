"""The botocore side of `S3Store`: its session, its clients, and which CAs its HTTPS trusts.

One botocore session per store (not a boto3 one: boto3 adds only resources and transfer
helpers, which the store does not use, and importing it costs every `modelfs` command's start
tens of milliseconds more). Clients made from it are thread safe, the session itself is not:
the store makes its clients in its constructor and, later, only under its probe lock.
Client settings, and why:
- path-style addressing whenever an endpoint is configured: S3-compatible servers rarely
  resolve bucket.host names;
- botocore's "standard" retries (5xx, throttling, broken connections), `max_attempts` in all;
- TCP keepalive on its pooled connections (`tcp_keepalive`). botocore has no idle limit for
  its pool (the lean lane's has one, see `http`); urllib3 checks that a pooled connection is
  still open before it reuses it, and a request on one dropped silently is retried;
- no per-request checksums: they cost CPU on every byte and break on S3-compatible servers that
  do not know them; a ranged GET carries If-Match, so the bytes are of the version asked for;
- but every PutObject and UploadPart carries Content-MD5 (`_add_content_md5`), which every S3
  server checks, so a body that did not arrive whole is refused, not kept (see `etag`).

TLS trust (`trusted_ca_bundle`): both lanes must trust the same CAs, or the lean lane's
handshakes fail where botocore's succeed and every request pays a failed handshake before
botocore sends it again. The bundle is resolved the way botocore resolves `verify`: the
store's `ca_bundle` argument, else the remote's `ca_bundle` (its config section), else
AWS_CA_BUNDLE or the profile's `ca_bundle`, else REQUESTS_CA_BUNDLE. A bundle named by the
argument or the remote must exist (ConfigError otherwise, before any request). The client
gets it as `verify` (None when there is none, leaving botocore's default, its own bundle,
untouched); the lean lane gets `lean_ca_bundle`, which names that default bundle explicitly.

Credentials: keys read from a config file are `ConfigFileCredentials`, which take them from
`config.keys.KeyFile` for every request, so keys rotated in the file reach new requests of
both lanes without a remount. Without keys, botocore's default chain finds them (environment,
profile, web identity, container or instance role); the temporary ones it finds are
refreshable, and both lanes ask them for frozen keys per request too (`get_frozen_credentials`),
so they are renewed before they expire.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

import botocore.session
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    Credentials,
    ReadOnlyCredentials,
)
from botocore.httpsession import get_cert_path

from modelfs.config.keys import KeyFile
from modelfs.config.remote import RemoteConfig
from modelfs.errors import ConfigError
from modelfs.store import etag

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DEFAULT_REGION = "us-east-1"  # what S3-compatible servers expect when no region is configured


class S3Session:
    """The botocore session of one store and the CA bundle its clients trust (see the
    docstring)."""

    def __init__(self, config: RemoteConfig, ca_bundle: str | None) -> None:
        self._config = config
        arguments = _session_arguments(config)
        core = botocore.session.get_session()
        self._keys: KeyFile | None = None
        if config.config_file and "aws_access_key_id" in arguments:
            self._keys = KeyFile(config)
            keys = ConfigFileCredentials(self._keys)
            core.register_component("credential_provider", CredentialResolver([_Fixed(keys)]))
        elif "aws_access_key_id" in arguments:
            core.set_credentials(
                arguments["aws_access_key_id"],
                arguments["aws_secret_access_key"],
                arguments["aws_session_token"],
            )
        if arguments["region_name"]:
            core.set_config_variable("region", arguments["region_name"])
        self.core = core
        self.ca_bundle = trusted_ca_bundle(ca_bundle or config.ca_bundle or None, core)

    def keys_changes(self) -> int:
        """How many times the config file brought new keys (0: keys from elsewhere)."""
        return 0 if self._keys is None else self._keys.generation

    @property
    def lean_ca_bundle(self) -> str:
        """The CAs for the lean lane: the resolved bundle, else botocore's own."""
        return self.ca_bundle or str(get_cert_path(True))

    def new_client(
        self, *, connect_timeout: float, read_timeout: float, max_attempts: int, pool: int
    ) -> S3Client:
        s3_options: Any = {"addressing_style": "path"} if self._config.endpoint else {}
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=pool,
            tcp_keepalive=True,
            s3=s3_options,
            signature_version="s3v4",  # presigned links too (botocore may pick SigV2 for those)
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = cast(
            "S3Client",
            self.core.create_client(
                "s3",
                endpoint_url=self._config.endpoint or None,
                config=config,
                verify=self.ca_bundle,
            ),
        )
        for operation in ("PutObject", "UploadPart"):
            client.meta.events.register(f"before-parameter-build.s3.{operation}", _add_content_md5)
        return client


def _add_content_md5(params: dict[str, Any], **_: Any) -> None:
    """Send the MD5 of an upload's body along (Content-MD5) unless the caller gave one."""
    body = params.get("Body")
    if isinstance(body, bytes | bytearray | memoryview) and "ContentMD5" not in params:
        params["ContentMD5"] = etag.content_md5(body)


class ConfigFileCredentials(Credentials):
    """A remote's keys as its config file holds them now (see the module docstring)."""

    def __init__(self, keys: KeyFile) -> None:
        remote = keys.current()
        token = remote.session_token or None
        super().__init__(remote.access_key_id, remote.secret_access_key, token, "config-file")
        self._keys = keys

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        remote = self._keys.current()
        # Readers of the attributes see the keys of the last request signed.
        self.access_key, self.secret_key = remote.access_key_id, remote.secret_access_key
        self.token = remote.session_token or None
        return ReadOnlyCredentials(
            remote.access_key_id, remote.secret_access_key, remote.session_token or None
        )


class _Fixed(CredentialProvider):
    """The credential chain of a remote with keys in its config file: those keys only."""

    METHOD = "config-file"
    CANONICAL_NAME = "customModelfsConfigFile"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


def trusted_ca_bundle(explicit: str | None, core: botocore.session.Session) -> str | None:
    """The CA bundle botocore would verify HTTPS against, or None for its own default."""
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigError(f"ca_bundle {explicit} does not exist (or is not a file)")
        return explicit
    configured = core.get_config_variable("ca_bundle")  # AWS_CA_BUNDLE, then the profile
    if configured:
        return str(configured)
    return os.environ.get("REQUESTS_CA_BUNDLE") or None


def _session_arguments(config: RemoteConfig) -> dict[str, Any]:
    region = config.region or (DEFAULT_REGION if config.endpoint else None)
    if config.uses_default_credentials:
        return {"region_name": region}
    if not config.secret_access_key:
        raise ConfigError(f"remote {config.name!r} has access_key_id but no secret_access_key")
    return {
        "aws_access_key_id": config.access_key_id,
        "aws_secret_access_key": config.secret_access_key,
        "aws_session_token": config.session_token or None,
        "region_name": region,
    }
