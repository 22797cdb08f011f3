"""sigv4: the lean lane's signature must be exactly botocore's for the same request and
instant. (A wrong one would not show as wrong bytes: the server answers 403 and the request
goes to botocore, so the lane-usage tests in test_store_contract.py would fail instead.)"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import pytest
from botocore import auth as botocore_auth
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from modelfs.store.sigv4 import SigV4Signer

INSTANT = datetime(2026, 11, 22, 5, 4, 3, tzinfo=UTC)


def botocore_headers(
    url: str, headers: dict[str, str], token: str | None, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    monkeypatch.setattr(botocore_auth, "get_current_datetime", lambda: INSTANT.replace(tzinfo=None))
    request = AWSRequest(method="GET", url=url, headers=headers)
    S3SigV4Auth(Credentials("AKID", "secret/key+x", token), "s3", "eu-west-3").add_auth(request)
    return dict(request.headers.items())


def ours(url: str, headers: dict[str, str], token: str | None) -> dict[str, str]:
    parts = urlsplit(url)
    query = [tuple(pair.split("=", 1)) for pair in parts.query.split("&")] if parts.query else []
    host = parts.netloc.removesuffix(":443") if parts.scheme == "https" else parts.netloc
    return SigV4Signer("eu-west-3").sign(
        access_key="AKID",
        secret_key="secret/key+x",
        token=token,
        host=host,
        path=parts.path,
        query=query,  # type: ignore[arg-type]
        headers=headers,
        now=INSTANT,
    )


def encoded(value: str) -> str:
    return quote(value, safe="-_.~")


@pytest.mark.parametrize("token", [None, "session/token=="])
@pytest.mark.parametrize(
    ("url", "headers"),
    [
        (
            "http://127.0.0.1:8333/bucket/dir/a%20b%2Bc~.bin",
            {"Range": "bytes=0-1048575", "If-Match": '"0123abcd"'},
        ),
        ("https://bucket.s3.eu-west-3.amazonaws.com:443/model.safetensors", {"Range": "bytes=5-9"}),
        (
            "http://127.0.0.1:8333/bucket?list-type=2&encoding-type=url&max-keys=1000"
            f"&prefix={encoded('odd dir/ä+&=')}&delimiter=%2F"
            f"&continuation-token={encoded('t+1/=')}",
            {},
        ),
    ],
)
def test_same_headers_and_signature_as_botocore(
    url: str, headers: dict[str, str], token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = botocore_headers(url, headers, token, monkeypatch)
    assert ours(url, headers, token) == expected


def test_the_signing_key_is_kept_for_the_day_only() -> None:
    signer = SigV4Signer("us-east-1")
    common = {"access_key": "A", "secret_key": "S", "token": None, "host": "h", "path": "/b/k"}
    first = signer.sign(query=[], headers={}, now=INSTANT, **common)  # type: ignore[arg-type]
    later = signer.sign(
        query=[],
        headers={},
        now=INSTANT.replace(hour=23),
        **common,  # type: ignore[arg-type]
    )
    next_day = signer.sign(
        query=[],
        headers={},
        now=INSTANT.replace(day=23),
        **common,  # type: ignore[arg-type]
    )
    assert "20261122/us-east-1/s3/aws4_request" in first["Authorization"]
    assert first["Authorization"] != later["Authorization"]  # the instant is signed
    assert "20261123/us-east-1/s3/aws4_request" in next_day["Authorization"]
