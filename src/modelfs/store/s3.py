"""`S3Store`: the `ObjectStore` protocol over botocore, for AWS and S3-compatible servers.

Owns which S3 request each protocol method sends, and with which conditions. The parts:
`s3client` (session, clients, retries, the CA bundle both lanes trust), `s3errors` (the one
table from S3 error codes to domain errors, one-line messages), `s3conditions` (conditional
writes), `s3range` (ranged GETs resumed after a broken connection), and `lean` (with `http`,
`sigv4`, `listxml`: the lean lane for data GETs and LISTs).

One botocore client per store, shared by all worker threads; its pool holds `max_connections`.
Requests failing with 5xx, throttling or a broken connection are retried by botocore (at most
`max_attempts` in all); what is left becomes a domain error, botocore's as `__cause__`.

Versions: every ranged GET carries `If-Match: "<etag>"`, so a replaced object answers 412 and
surfaces as `StaleObject`, never as bytes of another version. ETags are unquoted everywhere in
modelfs; `etag` quotes them only on the way out to S3.

Streaming (`iter_range`): one GET per call, read in `chunk`-sized pieces, so memory stays at
one chunk and the caller uses each chunk as it arrives.

Data GETs and LISTs take the lean lane first; anything but a clean 206 of the range asked for,
or a 200 listing of the prefix asked for, is sent again through the client, so the retries and
errors above apply unchanged. The lane learns its URLs from botocore's own requests (the
before-send hooks registered here).

Locks: `_probe_lock` guards the lazily made probe client and is never held while taking
another; the lean lane has its own (see `lean`).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from modelfs.config.remote import RemoteConfig
from modelfs.errors import AccessDenied, BucketNotFound, InvalidArgument, ModelfsError, NotFound
from modelfs.objects import ListPage, ObjectId, ObjectInfo
from modelfs.store import etag
from modelfs.store.lean import LeanGetter
from modelfs.store.protocol import Expect, PendingUpload, UploadedPart
from modelfs.store.s3client import S3Session
from modelfs.store.s3conditions import ConditionalWrites
from modelfs.store.s3errors import S3_FAILURES, S3Errors
from modelfs.store.s3range import Body, RangeReader

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
        ca_bundle: str | None = None,
    ) -> None:
        """`ca_bundle`: a PEM file of the CA certificates HTTPS trusts, in both lanes; None:
        the remote's `ca_bundle`, else AWS_CA_BUNDLE or the profile's ca_bundle, else
        REQUESTS_CA_BUNDLE, else botocore's (`s3client.trusted_ca_bundle`)."""
        self.config = config
        self.bucket = bucket
        self.max_attempts = max_attempts
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._probe_timeout = probe_timeout
        self._copy_object_limit = copy_object_limit
        self._copy_part_size = copy_part_size
        self.session = S3Session(config, ca_bundle)
        self._client = self.session.new_client(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
            pool=max_connections,
        )
        self.endpoint: str = self._client.meta.endpoint_url
        self._translator = S3Errors(config.name, bucket, self.endpoint)
        self._writes = ConditionalWrites(self._translator)
        self._lean = LeanGetter(
            self.session.core.get_credentials,
            self._client.meta.region_name,
            max_connections=max_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            ca_bundle=self.session.lean_ca_bundle,
        )
        self._get_urls = threading.local()  # the URL of this thread's last botocore GET
        self._client.meta.events.register("before-send.s3.GetObject", self._note_get_url)
        self._client.meta.events.register("before-send.s3.ListObjectsV2", self._note_list_url)
        self._probe: S3Client | None = None
        self._probe_lock = threading.Lock()

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

    def presign(self, key: str, expires: int, *, head: bool = False) -> str:
        """A link to GET (or HEAD) `key`, signed now, valid `expires` seconds (no request)."""
        operation, params = (
            "head_object" if head else "get_object",
            {"Bucket": self.bucket, "Key": key},
        )
        return self._client.generate_presigned_url(operation, Params=params, ExpiresIn=expires)

    # -- bucket and metadata -----------------------------------------------------------------

    def check_bucket(self) -> None:
        """HEAD the bucket with short timeouts and no retries, so a dead endpoint fails fast."""
        probe = self._probe_client()
        try:
            probe.head_bucket(Bucket=self.bucket)
        except S3_FAILURES as exc:
            error = self._translator.translate(exc, "HEAD", None, missing=BucketNotFound)
            if isinstance(error, AccessDenied) and isinstance(exc, ClientError):
                error = self._explain_denial(probe) or error
            raise error from exc

    def _probe_client(self) -> S3Client:
        with self._probe_lock:
            if self._probe is None:
                self._probe = self.session.new_client(
                    connect_timeout=min(self._connect_timeout, self._probe_timeout),
                    read_timeout=min(self._read_timeout, self._probe_timeout),
                    max_attempts=1,
                    pool=1,
                )
            return self._probe

    def _explain_denial(self, probe: S3Client) -> ModelfsError | None:
        """HEAD answers a bare 403; a LIST names the reason (e.g. InvalidAccessKeyId)."""
        try:
            probe.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except S3_FAILURES as exc:
            return self._translator.translate(exc, "LIST", None, missing=BucketNotFound)
        return None

    def head(self, key: str) -> ObjectInfo:
        with self._translator.errors("HEAD", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=etag.unquote(response["ETag"]),
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
        with self._translator.errors("LIST", prefix, missing=BucketNotFound):
            response = self._client.list_objects_v2(**arguments)
        objects = tuple(_object_info(item) for item in response.get("Contents", []))
        prefixes = tuple(item["Prefix"] for item in response.get("CommonPrefixes", []))
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        return ListPage(objects=objects, prefixes=prefixes, next_token=next_token)

    # -- reads -------------------------------------------------------------------------------

    def get_range(self, obj: ObjectId, start: int, end: int) -> bytes:
        reader = self._range_reader(obj, start, end)
        try:
            return reader.read(end - start)
        finally:
            reader.close()

    def warm_up(self, key: str) -> None:
        try:
            self._client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")["Body"].close()
        except S3_FAILURES as exc:
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
        reader = self._range_reader(obj, start, end)
        try:
            while data := reader.read(chunk):
                yield data
        finally:
            reader.close()

    def _range_reader(self, obj: ObjectId, start: int, end: int) -> RangeReader:
        return RangeReader(self._open_range, self._translator, self.max_attempts, obj, start, end)

    def _open_range(self, obj: ObjectId, start: int, end: int) -> Body:
        """Send one If-Match GET for [start, end) and return its body (`read`, `close`): the
        lean lane's if it succeeds, else botocore's, whose errors and retries then apply. An
        empty ETag asks for whatever version is there (no If-Match: a caller that checks the
        bytes itself, as a pull does with the manifest's sha256)."""
        quoted = etag.quote(obj.etag) if obj.etag else None
        lean = self._lean.open(obj.key, start, end, quoted)
        if lean is not None:
            return lean
        conditions: dict[str, Any] = {"IfMatch": quoted} if quoted else {}
        with self._translator.errors("GET", obj.key):
            response = self._client.get_object(
                Bucket=self.bucket, Key=obj.key, Range=f"bytes={start}-{end - 1}", **conditions
            )
        self._learn_get_url(obj.key)
        return response["Body"]

    # -- writes ------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, expect: Expect | None = None) -> ObjectInfo:
        def send(conditions: dict[str, Any]) -> Any:
            return self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **conditions)

        response = self._writes.send("PUT", key, expect, send)
        return ObjectInfo(key, len(data), etag.unquote(response["ETag"]), _server_time(response))

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound), self._translator.errors("DELETE", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def copy(self, source_key: str, dest_key: str) -> ObjectInfo:
        """Server-side copy of the source's current version (If-Match guards a race)."""
        source = self.head(source_key)
        if source.size > self._copy_object_limit:
            return self._copy_in_parts(source, dest_key)
        with self._translator.errors("COPY", source_key):
            response = self._client.copy_object(
                Bucket=self.bucket,
                Key=dest_key,
                CopySource={"Bucket": self.bucket, "Key": source_key},
                CopySourceIfMatch=etag.quote(source.etag),
            )
        result = response["CopyObjectResult"]
        return ObjectInfo(
            key=dest_key,
            size=source.size,
            etag=etag.unquote(result["ETag"]),
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
        with self._translator.errors("COPY", source.key):
            response = self._client.upload_part_copy(
                Bucket=self.bucket,
                Key=dest_key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source.key},
                CopySourceRange=f"bytes={start}-{end - 1}",
                CopySourceIfMatch=etag.quote(source.etag),
            )
        return UploadedPart(number, etag.unquote(response["CopyPartResult"]["ETag"]))

    # -- multipart ---------------------------------------------------------------------------

    def create_multipart(self, key: str) -> str:
        with self._translator.errors("CREATE-MULTIPART", key):
            response = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        return response["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> UploadedPart:
        with self._translator.errors("UPLOAD-PART", key):
            response = self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
        return UploadedPart(number, etag.unquote(response["ETag"]))

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[UploadedPart], expect: Expect | None = None
    ) -> ObjectInfo:
        """Complete, then HEAD: the completion answer carries neither size nor mtime."""
        completed: list[CompletedPartTypeDef] = [
            {"PartNumber": part.number, "ETag": etag.quote(part.etag)}
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

        self._writes.send("COMPLETE-MULTIPART", key, expect, send)
        return self.head(key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort; an upload that no longer exists is already what the caller wants."""
        with contextlib.suppress(NotFound), self._translator.errors("ABORT-MULTIPART", key):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def list_multipart(self, prefix: str) -> list[PendingUpload]:
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        pending: list[PendingUpload] = []
        while True:
            with self._translator.errors("LIST-MULTIPART", prefix, missing=BucketNotFound):
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


def _object_info(item: ObjectTypeDef) -> ObjectInfo:
    mtime = item["LastModified"].timestamp()
    return ObjectInfo(item["Key"], item["Size"], etag.unquote(item["ETag"]), mtime)


def _server_time(response: Any) -> float:
    """The server's Date header: a PUT answer has no Last-Modified, and the Date matches it
    to the second (the resolution of LIST) without a HEAD round trip."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            return email.utils.parsedate_to_datetime(date).timestamp()
    return time.time()
