"""S3 failures as modelfs errors: the one table, and the one-line messages.

`ERROR_FOR_CODE` is the only place that maps S3 error codes and HTTP statuses to domain
errors: codes are looked up first, then the status; any other 5xx is `StoreUnavailable`,
anything else a plain `ModelfsError`. `S3Errors` turns what boto3, botocore and urllib3 raise
into those errors, with a one-line message that names the endpoint, the bucket or key, and
what to check (credentials, bucket name); the original exception is kept as `__cause__` by
`S3Errors.errors`, the context manager every S3 request runs in.

`error_code` names a failure for counting (the metrics' errors by code): the S3 code of the
response behind it, else the domain error's class.

RequestTimeTooSkewed is `ClockSkew`, which says "clock skew" and by how much when the answer
carries RequestTime and ServerTime, instead of "access denied".

Conditional writes have their own outcomes (`write_condition_failed`,
`write_conditions_refused`): S3 answers a condition that does not hold with 412, with 409 when
a concurrent write to the key raced it, and with 404 for If-Match on a key that is gone; a
store that does not implement conditions answers 501.

Stateless apart from the names it quotes; thread safe.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
from collections.abc import Iterator
from typing import Any

import urllib3.exceptions
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

from modelfs.config.units import format_duration
from modelfs.errors import (
    AccessDenied,
    BucketNotFound,
    ClockSkew,
    InvalidArgument,
    ModelfsError,
    NameTooLong,
    NotFound,
    StaleObject,
    StoreUnavailable,
)

# The one table from S3 error codes and HTTP statuses to domain errors (see the docstring).
ERROR_FOR_CODE: dict[str, type[ModelfsError]] = {
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
    "RequestTimeTooSkewed": ClockSkew,
    "403": AccessDenied,
    "PreconditionFailed": StaleObject,
    "412": StaleObject,
    "InvalidRange": InvalidArgument,
    "416": InvalidArgument,
    "EntityTooSmall": InvalidArgument,
    "EntityTooLarge": InvalidArgument,
    "InvalidPart": InvalidArgument,
    "InvalidPartOrder": InvalidArgument,
    "KeyTooLongError": NameTooLong,
    "SlowDown": StoreUnavailable,
    "Throttling": StoreUnavailable,
    "ThrottlingException": StoreUnavailable,
    "RequestTimeout": StoreUnavailable,
    "BadDigest": StoreUnavailable,  # the body arrived damaged or short: send it again
    "IncompleteBody": StoreUnavailable,
    "InternalError": StoreUnavailable,
    "ServiceUnavailable": StoreUnavailable,
    "429": StoreUnavailable,
}
# Codes that mean "your keys are wrong" rather than "this policy forbids it".
CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "403"}
)
# Failures of the connection itself, while sending or while reading a body.
TRANSPORT_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)
# Everything a boto3 call raises that `S3Errors.translate` knows how to explain (botocore
# raises UnicodeEncodeError for a key that is not UTF-8, before sending anything).
S3_FAILURES = (ClientError, UnicodeEncodeError, *TRANSPORT_ERRORS)

# A conditional write's condition did not hold (S3: 412; 409 when a concurrent write to the
# key raced it; 404 for If-Match on a key that no longer exists).
CONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
MISSING = frozenset({"NoSuchKey", "404"})
CONDITIONS_REFUSED = frozenset({"NotImplemented", "501"})


def code_and_status(exc: ClientError) -> tuple[str, int]:
    """The S3 error code of a failed request (its HTTP status if it has none), and the status."""
    error: Any = exc.response.get("Error", {})
    metadata: Any = exc.response.get("ResponseMetadata", {})
    status = int(metadata.get("HTTPStatusCode", 0))
    return str(error.get("Code") or status), status


def error_code(exc: BaseException) -> str:
    """'NoSuchKey', 'SlowDown', '503', ...: the S3 error code (or status) of the response
    behind `exc`, found along its causes; else its class name ('StoreUnavailable' for a
    connection that failed, 'StaleObject', ...)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ClientError):
            return code_and_status(current)[0]
        current = current.__cause__
    return type(exc).__name__


def answered(exc: BaseException) -> bool:
    """Whether the server answered the request behind `exc` (an S3 error response, a 5xx
    among them), rather than the connection failing or timing out."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ClientError):
            return True
        current = current.__cause__
    return False


def write_condition_failed(exc: ClientError, *, if_match: bool) -> bool:
    """Whether a conditional write failed because its condition did not hold."""
    code, status = code_and_status(exc)
    answers = {code, str(status)}  # a server may send a code of its own
    # 404 by code only: NoSuchBucket is a 404 too, and stays BucketNotFound.
    return bool(answers & CONDITION_FAILED) or (if_match and code in MISSING)


def write_conditions_refused(exc: ClientError) -> bool:
    """Whether the store does not implement conditional writes (501 NotImplemented)."""
    code, status = code_and_status(exc)
    return bool({code, str(status)} & CONDITIONS_REFUSED)


class S3Errors:
    """Translates failures of requests to one bucket of one remote (see the docstring)."""

    def __init__(self, remote: str, bucket: str, endpoint: str) -> None:
        self.remote = remote
        self.bucket = bucket
        self.endpoint = endpoint

    @contextlib.contextmanager
    def errors(
        self, operation: str, key: str | None = None, *, missing: type[ModelfsError] = NotFound
    ) -> Iterator[None]:
        """Translate boto3 failures raised inside the block into domain errors."""
        try:
            yield
        except ModelfsError:
            raise
        except S3_FAILURES as exc:
            raise self.translate(exc, operation, key, missing) from exc

    def translate(
        self,
        exc: BaseException,
        operation: str,
        key: str | None = None,
        missing: type[ModelfsError] = NotFound,
    ) -> ModelfsError:
        """The domain error for `exc`, raised by `operation` on `key` (None: the bucket);
        `missing` is what a NotFound becomes (BucketNotFound for bucket-wide requests)."""
        if isinstance(exc, ClientError):
            return self._translate_response(exc, operation, key, missing)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return AccessDenied(
                f"no credentials found for remote {self.remote!r}: set access_key_id and "
                f"secret_access_key in its config section, or AWS credentials in the environment"
            )
        if isinstance(exc, UnicodeEncodeError):
            return InvalidArgument(f"{operation} {self.where(key)!r}: the key is not UTF-8")
        if isinstance(exc, ParamValidationError):
            detail = one_line(str(exc))
            return InvalidArgument(f"invalid S3 request {operation} {self.where(key)}: {detail}")
        return StoreUnavailable(self._transport_message(exc, operation, key))

    def where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{key}" if key is not None else f"bucket {self.bucket!r}"

    def _translate_response(
        self, exc: ClientError, operation: str, key: str | None, missing: type[ModelfsError]
    ) -> ModelfsError:
        error: Any = exc.response.get("Error", {})
        code, status = code_and_status(exc)
        kind = ERROR_FOR_CODE.get(code) or ERROR_FOR_CODE.get(str(status))
        if kind is None:
            kind = StoreUnavailable if status >= 500 else ModelfsError
        if kind is NotFound:
            kind = missing
        if kind is ClockSkew:
            return ClockSkew(self._skew_message(error))
        return kind(self._response_message(kind, code, operation, key, error.get("Message")))

    def _skew_message(self, error: Any) -> str:
        """How far this machine's clock is from the store's, when the store says."""
        allowed = f"{self.endpoint} refuses requests signed more than 15 minutes off its time"
        skew = clock_skew(error.get("RequestTime"), error.get("ServerTime"))
        if skew is None:
            mine = "this machine's clock is too far from the store's"
        else:
            side = "ahead of" if skew > 0 else "behind"
            mine = f"this machine's clock is {format_duration(skew)} {side} {self.endpoint}"
        return f"clock skew: {mine} ({allowed}); set the time (NTP) (RequestTimeTooSkewed)"

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
            return f"{self.where(key)} not found at {self.endpoint} ({code})"
        if kind is AccessDenied and code in CREDENTIAL_CODES:
            return (
                f"access denied by {self.endpoint}: check access_key_id/secret_access_key "
                f"of remote {self.remote!r} ({code})"
            )
        if kind is AccessDenied:
            return f"access denied by {self.endpoint} to {self.where(key)} ({code})"
        if kind is StaleObject:
            return f"{self.where(key)} changed in the bucket since it was opened ({code})"
        suffix = f": {one_line(detail)}" if detail else ""
        return f"{operation} {self.where(key)} failed at {self.endpoint}: {code}{suffix}"

    def _transport_message(self, exc: BaseException, operation: str, key: str | None) -> str:
        if isinstance(exc, EndpointConnectionError):
            return f"cannot reach S3 endpoint {self.endpoint}: {connection_reason(exc)}"
        if isinstance(exc, ConnectTimeoutError):
            return f"cannot reach S3 endpoint {self.endpoint}: connect timed out"
        if isinstance(exc, ReadTimeoutError | urllib3.exceptions.ReadTimeoutError):
            return (
                f"S3 endpoint {self.endpoint} did not answer in time "
                f"({operation} {self.where(key)})"
            )
        return (
            f"connection to S3 endpoint {self.endpoint} failed during "
            f"{operation} {self.where(key)}: {one_line(str(exc))}"
        )


_TIME_FORMATS = ("%Y%m%dT%H%M%SZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ")


def clock_skew(request_time: object, server_time: object) -> float | None:
    """Seconds our request's time was ahead of the server's (negative: behind), from the
    RequestTime and ServerTime of a RequestTimeTooSkewed answer; None if either is missing."""
    times = [_parse_time(value) for value in (request_time, server_time)]
    if times[0] is None or times[1] is None:
        return None
    return (times[0] - times[1]).total_seconds()


def _parse_time(value: object) -> datetime.datetime | None:
    for layout in _TIME_FORMATS:
        try:
            return datetime.datetime.strptime(str(value), layout)
        except ValueError:
            continue
    return None


def one_line(text: str) -> str:
    """Server and library messages may span lines; ours are printed as one."""
    return " ".join(text.split())


def connection_reason(exc: BaseException) -> str:
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
    return one_line(str(exc))
