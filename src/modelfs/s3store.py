"""`S3Store`: the `ObjectStore` protocol over boto3, for AWS and S3-compatible servers.

One boto3 client is created per store and shared by all worker threads (clients are thread
safe, sessions are not); its connection pool is sized by `max_connections`. Requests that fail
with 5xx, throttling or a broken connection are retried by botocore ("standard" mode, at most
`max_attempts` in total); what is left is translated to a domain error by `_translate`, using
the one `_ERROR_FOR_CODE` table, with the boto3 exception kept as `__cause__`.

Versions: every ranged GET carries `If-Match: "<etag>"`, so a replaced object answers 412 and
surfaces as `StaleObject` instead of bytes of another version. ETags are stored unquoted
everywhere in modelfs; they are quoted only on the way out to S3. Writes given an `Expect`
carry `If-Match: "<etag>"` or `If-None-Match: *` (S3's conditional writes), so a write-back
upload never replaces a version it did not start from; a store that answers them with 501
NotImplemented gets the write again without them, and no conditions after that.

Streaming (`iter_range`): one GET per call, read from the response body in `chunk`-sized
pieces, so memory stays at one chunk and the caller can use each chunk as it arrives. If the
connection breaks mid-body, `_RangeReader` sends a new If-Match GET for the remaining bytes
(at most `max_attempts` times), so a reset costs a re-request, not a failed read.

Data GETs and LISTs take a lean lane first (`leanget.py`: requests signed by `sigv4.py` and
sent by `minihttp.py`, without the client's per-call pipeline); anything but a clean 206 of
the range asked for, or a 200 listing of the prefix asked for, is sent again through the
client, so retries and errors above apply unchanged.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from .errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    InvalidArgument,
    ModelfsError,
    NotFound,
    StaleObject,
    StoreUnavailable,
)
from .leanget import LeanGetter
from .remote import RemoteConfig
from .store import Expect, PendingUpload, UploadedPart
from .values import ListPage, ObjectId, ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectTypeDef

log = logging.getLogger(__name__)

# S3 refuses CopyObject for sources above 5 GiB; bigger objects are copied part by part.
COPY_OBJECT_LIMIT = 5 << 30
# 512 MiB parts keep a 15 GB checkpoint at ~30 UploadPartCopy requests (S3 allows 10,000).
COPY_PART_SIZE = 512 << 20
# check_bucket must fail fast on a dead endpoint: a healthy one answers HEAD bucket well
# within this, even across continents.
PROBE_TIMEOUT = 3.0
DEFAULT_REGION = "us-east-1"  # what S3-compatible servers expect when no region is configured

# The one table from S3 error codes and HTTP statuses to domain errors. Codes are checked
# first, then the status; any other 5xx is StoreUnavailable, anything else a plain ModelfsError.
_ERROR_FOR_CODE: dict[str, type[ModelfsError]] = {
    "NoSuchKey": NotFound,
    "NotFound": NotFound,
    "NoSuchUpload": NotFound,
    "404": NotFound,
    "NoSuchBucket": BucketNotFound,
    "AccessDenied": AccessDenied,
    "AllAccessDisabled": AccessDenied,
    "InvalidAccessKeyId": AccessDenied,
    "SignatureDoesNotMatch": AccessDenied,
    "ExpiredToken": AccessDenied,
    "InvalidToken": AccessDenied,
    "TokenRefreshRequired": AccessDenied,
    "RequestTimeTooSkewed": AccessDenied,
    "403": AccessDenied,
    "PreconditionFailed": StaleObject,
    "412": StaleObject,
    "InvalidRange": InvalidArgument,
    "416": InvalidArgument,
    "EntityTooSmall": InvalidArgument,
    "EntityTooLarge": InvalidArgument,
    "InvalidPart": InvalidArgument,
    "InvalidPartOrder": InvalidArgument,
    "SlowDown": StoreUnavailable,
    "Throttling": StoreUnavailable,
    "ThrottlingException": StoreUnavailable,
    "RequestTimeout": StoreUnavailable,
    "InternalError": StoreUnavailable,
    "ServiceUnavailable": StoreUnavailable,
    "429": StoreUnavailable,
}
# Codes that mean "your keys are wrong" rather than "this policy forbids it".
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "403"}
)
# Failures of the connection itself, while sending or while reading a body.
_TRANSPORT_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)


# A conditional write's condition did not hold (S3: 412; 409 when a concurrent write to the
# key raced it; 404 for If-Match on a key that no longer exists).
_CONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_MISSING = frozenset({"NoSuchKey", "404"})
_CONDITIONS_REFUSED = frozenset({"NotImplemented", "501"})


def _code_and_status(exc: ClientError) -> tuple[str, int]:
    """The S3 error code of a failed request (its HTTP status if it has none), and the status."""
    error: Any = exc.response.get("Error", {})
    metadata: Any = exc.response.get("ResponseMetadata", {})
    status = int(metadata.get("HTTPStatusCode", 0))
    return str(error.get("Code") or status), status


def quote_etag(etag: str) -> str:
    return f'"{etag}"'


def unquote_etag(etag: str) -> str:
    return etag.strip('"')


class S3Store:
    """An `ObjectStore` for one bucket of one remote (see the module docstring)."""

    def __init__(
        self,
        config: RemoteConfig,
        bucket: str,
        *,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        probe_timeout: float = PROBE_TIMEOUT,
        copy_object_limit: int = COPY_OBJECT_LIMIT,
        copy_part_size: int = COPY_PART_SIZE,
    ) -> None:
        self.config = config
        self.bucket = bucket
        self.max_attempts = max_attempts
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._probe_timeout = probe_timeout
        self._copy_object_limit = copy_object_limit
        self._copy_part_size = copy_part_size
        self._session = boto3.session.Session(**_session_arguments(config))
        self._client = self._new_client(
            connect_timeout, read_timeout, max_attempts, max_connections
        )
        self.endpoint: str = self._client.meta.endpoint_url
        self._lean = LeanGetter(
            self._session.get_credentials,
            self._client.meta.region_name,
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._get_urls = threading.local()  # the URL of this thread's last botocore GET
        self._client.meta.events.register("before-send.s3.GetObject", self._note_get_url)
        self._client.meta.events.register("before-send.s3.ListObjectsV2", self._note_list_url)
        self._probe: S3Client | None = None
        self._probe_lock = threading.Lock()
        self._conditional_writes = True  # until the store refuses If-Match on a write

    def __repr__(self) -> str:
        return f"S3Store({self.config.name!r}, bucket={self.bucket!r}, endpoint={self.endpoint!r})"

    def close(self) -> None:
        """Close the pooled connections of both lanes (and of the probe client)."""
        self._lean.close()
        self._client.close()
        with self._probe_lock:
            probe, self._probe = self._probe, None
        if probe is not None:
            probe.close()

    def _new_client(
        self, connect_timeout: float, read_timeout: float, max_attempts: int, pool: int
    ) -> S3Client:
        # S3-compatible servers rarely resolve bucket.host names: address them by path.
        s3_options: Any = {"addressing_style": "path"} if self.config.endpoint else {}
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=pool,
            tcp_keepalive=True,
            s3=s3_options,
            # Integrity is checked against the manifest's sha256; per-request CRCs only cost
            # CPU and break on S3-compatible servers that do not know them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return self._session.client("s3", endpoint_url=self.config.endpoint or None, config=config)

    # -- errors ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(
        self, operation: str, key: str | None = None, *, missing: type[ModelfsError] = NotFound
    ) -> Iterator[None]:
        """Translate boto3 failures raised inside the block into domain errors."""
        try:
            yield
        except ModelfsError:
            raise
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            raise self._translate(exc, operation, key, missing) from exc

    def _translate(
        self,
        exc: BaseException,
        operation: str,
        key: str | None = None,
        missing: type[ModelfsError] = NotFound,
    ) -> ModelfsError:
        if isinstance(exc, ClientError):
            return self._translate_response(exc, operation, key, missing)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return AccessDenied(
                f"no credentials found for remote {self.config.name!r}: set access_key_id and "
                f"secret_access_key in its config section, or AWS credentials in the environment"
            )
        if isinstance(exc, ParamValidationError):
            detail = _one_line(str(exc))
            return InvalidArgument(f"invalid S3 request {operation} {self._where(key)}: {detail}")
        return StoreUnavailable(self._transport_message(exc, operation, key))

    def _translate_response(
        self, exc: ClientError, operation: str, key: str | None, missing: type[ModelfsError]
    ) -> ModelfsError:
        error: Any = exc.response.get("Error", {})
        code, status = _code_and_status(exc)
        kind = _ERROR_FOR_CODE.get(code) or _ERROR_FOR_CODE.get(str(status))
        if kind is None:
            kind = StoreUnavailable if status >= 500 else ModelfsError
        if kind is NotFound:
            kind = missing
        return kind(self._response_message(kind, code, operation, key, error.get("Message")))

    def _response_message(
        self,
        kind: type[ModelfsError],
        code: str,
        operation: str,
        key: str | None,
        detail: str | None,
    ) -> str:
        if kind is BucketNotFound:
            return f"bucket {self.bucket!r} does not exist at {self.endpoint}"
        if kind is NotFound:
            return f"{self._where(key)} not found at {self.endpoint} ({code})"
        if kind is AccessDenied and code in _CREDENTIAL_CODES:
            return (
                f"access denied by {self.endpoint}: check access_key_id/secret_access_key "
                f"of remote {self.config.name!r} ({code})"
            )
        if kind is AccessDenied:
            return f"access denied by {self.endpoint} to {self._where(key)} ({code})"
        if kind is StaleObject:
            return f"{self._where(key)} changed in the bucket since it was opened ({code})"
        suffix = f": {_one_line(detail)}" if detail else ""
        return f"{operation} {self._where(key)} failed at {self.endpoint}: {code}{suffix}"

    def _transport_message(self, exc: BaseException, operation: str, key: str | None) -> str:
        if isinstance(exc, EndpointConnectionError):
            return f"cannot reach S3 endpoint {self.endpoint}: {_connection_reason(exc)}"
        if isinstance(exc, ConnectTimeoutError):
            return f"cannot reach S3 endpoint {self.endpoint}: connect timed out"
        if isinstance(exc, ReadTimeoutError | urllib3.exceptions.ReadTimeoutError):
            return (
                f"S3 endpoint {self.endpoint} did not answer in time "
                f"({operation} {self._where(key)})"
            )
        return (
            f"connection to S3 endpoint {self.endpoint} failed during "
            f"{operation} {self._where(key)}: {_one_line(str(exc))}"
        )

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key is not None else f"bucket {self.bucket!r}"

    # -- bucket and metadata -----------------------------------------------------------------

    def check_bucket(self) -> None:
        """HEAD the bucket with short timeouts and no retries, so a dead endpoint fails fast."""
        probe = self._probe_client()
        try:
            probe.head_bucket(Bucket=self.bucket)
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            error = self._translate(exc, "HEAD", None, missing=BucketNotFound)
            if isinstance(error, AccessDenied) and isinstance(exc, ClientError):
                error = self._explain_denial(probe) or error
            raise error from exc

    def _probe_client(self) -> S3Client:
        with self._probe_lock:
            if self._probe is None:
                self._probe = self._new_client(
                    min(self._connect_timeout, self._probe_timeout),
                    min(self._read_timeout, self._probe_timeout),
                    max_attempts=1,
                    pool=1,
                )
            return self._probe

    def _explain_denial(self, probe: S3Client) -> ModelfsError | None:
        """HEAD answers a bare 403; a LIST names the reason (e.g. InvalidAccessKeyId)."""
        try:
            probe.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            return self._translate(exc, "LIST", None, missing=BucketNotFound)
        return None

    def head(self, key: str) -> ObjectInfo:
        with self._errors("HEAD", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=unquote_etag(response["ETag"]),
            mtime=response["LastModified"].timestamp(),
        )

    def list_page(
        self,
        prefix: str,
        token: str | None = None,
        max_keys: int = 1000,
        *,
        recursive: bool = False,
    ) -> ListPage:
        lean = self._lean.list_page(prefix, token, max_keys, delimited=not recursive)
        if lean is not None:
            return lean
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if not recursive:
            arguments["Delimiter"] = "/"
        if token is not None:
            arguments["ContinuationToken"] = token
        with self._errors("LIST", prefix, missing=BucketNotFound):
            response = self._client.list_objects_v2(**arguments)
        objects = tuple(_object_info(item) for item in response.get("Contents", []))
        prefixes = tuple(item["Prefix"] for item in response.get("CommonPrefixes", []))
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return ListPage(objects=objects, prefixes=prefixes, next_token=next_token)

    # -- reads -------------------------------------------------------------------------------

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        reader = _RangeReader(self, obj, start, end)
        try:
            return reader.read(end - start)
        finally:
            reader.close()

    def warm_up(self, key: str) -> None:
        try:
            self._client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")["Body"].close()
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            log.debug("warm-up GET of %s: %s", key, exc)
        self._learn_get_url(key)  # a 404 went to the same URL a GET of a real key would
        self._lean.warm_up(key)

    def _note_get_url(self, request: Any, **_: Any) -> None:
        self._get_urls.url = request.url

    def _note_list_url(self, request: Any, **_: Any) -> None:
        self._lean.learn_list(request.url)

    def _learn_get_url(self, key: str) -> None:
        url = getattr(self._get_urls, "url", None)
        if url is not None and not self._lean.ready:
            self._lean.learn(url, key)

    def iter_range(self, obj: ObjectId, start: int, end: int, chunk: int) -> Iterator[bytes]:
        if chunk <= 0:
            raise InvalidArgument(f"iter_range chunk must be positive, not {chunk}")
        reader = _RangeReader(self, obj, start, end)
        try:
            while data := reader.read(chunk):
                yield data
        finally:
            reader.close()

    def _open_range(self, obj: ObjectId, start: int, end: int) -> Any:
        """Send one If-Match GET for [start, end) and return its body (`read`, `close`): the
        lean lane's if it succeeds, else botocore's, whose errors and retries then apply."""
        lean = self._lean.open(obj.key, start, end, quote_etag(obj.etag))
        if lean is not None:
            return lean
        with self._errors("GET", obj.key):
            response = self._client.get_object(
                Bucket=self.bucket,
                Key=obj.key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=quote_etag(obj.etag),
            )
        self._learn_get_url(obj.key)
        return response["Body"]

    # -- writes ------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, expect: Expect | None = None) -> ObjectInfo:
        def send(conditions: dict[str, Any]) -> Any:
            return self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **conditions)

        response = self._conditional_write("PUT", key, expect, send)
        return ObjectInfo(key, len(data), unquote_etag(response["ETag"]), _server_time(response))

    def _conditional_write(
        self, operation: str, key: str, expect: Expect | None, send: Callable[[dict[str, Any]], Any]
    ) -> Any:
        """`send(conditions)`, the conditions saying what `key` must hold (`expect`). A store
        that refuses them (501 NotImplemented) gets the request again without, and no
        conditions from then on; one that answers 412 (or, for If-Match, 404) raises
        StaleObject."""
        conditions = self._conditions(expect)
        with self._errors(operation, key):
            try:
                return send(conditions)
            except ClientError as exc:
                if not conditions:
                    raise
                code, status = _code_and_status(exc)
                answers = {code, str(status)}  # a server may send a code of its own
                # 404 by code only: NoSuchBucket is a 404 too, and stays BucketNotFound.
                missing = "IfMatch" in conditions and code in _MISSING
                if answers & _CONDITION_FAILED or missing:
                    raise StaleObject(
                        f"{self._where(key)} is no longer the version this write expected "
                        f"({operation} answered {code})"
                    ) from exc
                if not answers & _CONDITIONS_REFUSED:
                    raise
                self._refuse_conditions(exc)
        with self._errors(operation, key):
            return send({})

    def _conditions(self, expect: Expect | None) -> dict[str, Any]:
        if expect is None or not self._conditional_writes:
            return {}
        if expect.etag is None:
            return {"IfNoneMatch": "*"}
        return {"IfMatch": quote_etag(expect.etag)}

    def _refuse_conditions(self, exc: ClientError) -> None:
        if self._conditional_writes:
            self._conditional_writes = False
            log.warning(
                "remote %r refuses conditional writes (%s): uploads check the bucket first, "
                "but a change made between that check and the upload is overwritten",
                self.config.name,
                _one_line(str(exc)),
            )

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound), self._errors("DELETE", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def copy(self, source_key: str, dest_key: str) -> ObjectInfo:
        """Server-side copy of the source's current version (If-Match guards a race)."""
        source = self.head(source_key)
        if source.size > self._copy_object_limit:
            return self._copy_in_parts(source, dest_key)
        with self._errors("COPY", source_key):
            response = self._client.copy_object(
                Bucket=self.bucket,
                Key=dest_key,
                CopySource={"Bucket": self.bucket, "Key": source_key},
                CopySourceIfMatch=quote_etag(source.etag),
            )
        result = response["CopyObjectResult"]
        return ObjectInfo(
            key=dest_key,
            size=source.size,
            etag=unquote_etag(result["ETag"]),
            # whole seconds, as HEAD and LIST will report it later
            mtime=float(math.floor(result["LastModified"].timestamp())),
        )

    def _copy_in_parts(self, source: ObjectInfo, dest_key: str) -> ObjectInfo:
        upload_id = self.create_multipart(dest_key)
        try:
            parts = [
                self._copy_part(source, dest_key, upload_id, number, start)
                for number, start in enumerate(range(0, source.size, self._copy_part_size), 1)
            ]
            return self.complete_multipart(dest_key, upload_id, parts)
        except BaseException:
            with contextlib.suppress(ModelfsError):
                self.abort_multipart(dest_key, upload_id)
            raise

    def _copy_part(
        self, source: ObjectInfo, dest_key: str, upload_id: str, number: int, start: int
    ) -> UploadedPart:
        end = min(start + self._copy_part_size, source.size)
        with self._errors("COPY", source.key):
            response = self._client.upload_part_copy(
                Bucket=self.bucket,
                Key=dest_key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source.key},
                CopySourceRange=f"bytes={start}-{end - 1}",
                CopySourceIfMatch=quote_etag(source.etag),
            )
        return UploadedPart(number, unquote_etag(response["CopyPartResult"]["ETag"]))

    # -- multipart ---------------------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        with self._errors("CREATE-MULTIPART", key):
            response = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        return response["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        with self._errors("UPLOAD-PART", key):
            response = self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        return UploadedPart(number, unquote_etag(response["ETag"]))

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[UploadedPart], expect: Expect | None = None
    ) -> ObjectInfo:
        """Complete, then HEAD: the completion answer carries neither size nor mtime."""
        completed: list[CompletedPartTypeDef] = [
            {"PartNumber": part.number, "ETag": quote_etag(part.etag)}
            for part in sorted(parts, key=lambda part: part.number)
        ]

        def send(conditions: dict[str, Any]) -> Any:
            return self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": completed},
                **conditions,
            )

        self._conditional_write("COMPLETE-MULTIPART", key, expect, send)
        return self.head(key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort; an upload that no longer exists is already what the caller wants."""
        with contextlib.suppress(NotFound), self._errors("ABORT-MULTIPART", key):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def list_multipart(self, prefix: str) -> list[PendingUpload]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        pending: list[PendingUpload] = []
        while True:
            with self._errors("LIST-MULTIPART", prefix, missing=BucketNotFound):
                response = self._client.list_multipart_uploads(**arguments)
            pending.extend(
                PendingUpload(key=upload["Key"], upload_id=upload["UploadId"])
                for upload in response.get("Uploads", [])
            )
            key_marker = response.get("NextKeyMarker")
            upload_marker = response.get("NextUploadIdMarker")
            if not response.get("IsTruncated") or not (key_marker or upload_marker):
                return pending
            arguments["KeyMarker"] = key_marker
            arguments["UploadIdMarker"] = upload_marker


class _RangeReader:
    """Bytes [start, end) of one object version, read from one GET at a time.

    Invariant: `_position` is the offset of the next byte the caller gets. After a broken
    connection a new If-Match GET starts there, so the caller never sees a byte twice or
    bytes of another version. The GET is sent lazily, on the first read.
    """

    def __init__(self, store: S3Store, obj: ObjectId, start: int, end: int) -> None:
        self._store = store
        self._obj = obj
        self._position = start
        self._end = end
        self._body: Any = None
        self._broken_streams = 0

    def read(self, amount: int) -> bytes:
        """Exactly `amount` bytes, fewer only where the range (or the object) ends."""
        amount = min(amount, self._end - self._position)
        pieces: list[bytes] = []
        wanted = amount
        while wanted > 0:
            piece = self._read_some(wanted)
            if not piece:
                break  # the object is shorter than the range asked for
            if len(piece) == amount:
                return piece  # the common case: one piece, no copy
            pieces.append(piece)
            wanted -= len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(*_TRANSPORT_ERRORS):
                body.close()

    def _read_some(self, wanted: int) -> bytes:
        while True:
            if self._body is None:
                self._body = self._store._open_range(self._obj, self._position, self._end)
            try:
                piece: bytes = self._body.read(wanted)
            except _TRANSPORT_ERRORS as exc:
                self.close()
                self._broken_streams += 1
                if self._broken_streams >= self._store.max_attempts:
                    raise self._store._translate(exc, "GET", self._obj.key) from exc
                continue
            self._position += len(piece)
            return piece


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


def _object_info(item: ObjectTypeDef) -> ObjectInfo:
    return ObjectInfo(
        key=item["Key"],
        size=item["Size"],
        etag=unquote_etag(item["ETag"]),
        mtime=item["LastModified"].timestamp(),
    )


def _server_time(response: Any) -> float:
    """The server's Date header: a PUT answer has no Last-Modified, and the Date matches it
    to the second (the resolution of LIST) without a HEAD round trip."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            return email.utils.parsedate_to_datetime(date).timestamp()
    return time.time()


def _one_line(text: str) -> str:
    """Server and library messages may span lines; ours are printed as one."""
    return " ".join(text.split())


def _connection_reason(exc: BaseException) -> str:
    """'connection refused', 'name not resolved', ... from the OSError under `exc`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "host name not resolved"
        kwargs = getattr(current, "kwargs", {})
        nested = kwargs.get("error") if isinstance(kwargs, dict) else None
        current = nested or current.__cause__ or current.__context__
    return _one_line(str(exc))
