"""The S3 error table's messages that need no server: clock skew, said as such."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError

from modelfs.config.units import format_duration
from modelfs.errors import AccessDenied, ClockSkew, ModelfsError
from modelfs.store.s3errors import S3Errors, clock_skew

ENDPOINT = "https://s3.example.com"


def skewed(**times: str) -> ClientError:
    error = {"Code": "RequestTimeTooSkewed", "Message": "The difference ... is too large."}
    response = {"Error": {**error, **times}, "ResponseMetadata": {"HTTPStatusCode": 403}}
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


def translate(exc: ClientError) -> ModelfsError:
    return S3Errors("r", "bucket", ENDPOINT).translate(exc, "GET", "models/a.bin")


@pytest.mark.parametrize(
    ("request_time", "server_time", "said"),
    [
        ("20260101T000000Z", "2026-01-01T00:20:03Z", "20m 3s behind"),  # AWS's two formats
        ("20260101T030000Z", "2026-01-01T00:59:00.000Z", "2h 1m ahead of"),
    ],
)
def test_request_time_too_skewed_says_clock_skew_and_by_how_much(
    request_time: str, server_time: str, said: str
) -> None:
    error = translate(skewed(RequestTime=request_time, ServerTime=server_time))
    assert isinstance(error, ClockSkew)
    assert isinstance(error, AccessDenied)  # still EACCES at the FUSE edge
    assert error.errno == errno.EACCES
    assert not error.permanent  # NTP fixes it, then the same upload works
    assert str(error) == (
        f"clock skew: this machine's clock is {said} {ENDPOINT} ({ENDPOINT} refuses requests "
        "signed more than 15 minutes off its time); set the time (NTP) (RequestTimeTooSkewed)"
    )
    assert "access denied" not in str(error)


def test_clock_skew_without_the_times_still_says_so() -> None:
    error = translate(skewed())
    assert str(error).startswith("clock skew: this machine's clock is too far from the store's")


def test_clock_skew_of_unreadable_times_is_unknown() -> None:
    assert clock_skew("yesterday", "2026-01-01T00:00:00Z") is None
    assert clock_skew(None, None) is None


def test_format_duration() -> None:
    assert format_duration(42) == "42s"
    assert format_duration(1203) == "20m 3s"
    assert format_duration(7500) == "2h 5m"
    assert format_duration(-90061) == "1d 1h"
    assert format_duration(0) == "0s"
