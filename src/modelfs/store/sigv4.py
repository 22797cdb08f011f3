"""AWS Signature Version 4 for the lean lane's bodyless GETs.

botocore's `S3SigV4Auth` does general work on every request (it builds an AWSRequest, parses
the URL again, copies header dictionaries and derives a new signing key), a large share of the
lean lane's CPU per GET (see docs/performance.md). This computes the same signature for the
only request shape the lane sends (GET, no body, headers given) with none of that, and caches
the signing key for the day. The result is the same Authorization header botocore computes for
the same request at the same instant (tested against botocore).

Inputs are taken as sent: `path` already URI-encoded (S3 does not encode it again),
`query` as (name, value) pairs already encoded with RFC 3986's unreserved set left alone.
Every header given is signed, with Host, X-Amz-Date and X-Amz-Content-SHA256 (the SHA-256 of an
empty body: these requests have none).

Thread safety: `_lock` guards replacing the cached signing key (the only lock here); readers
take the cache without it, as it is replaced whole. The cached X-Amz-Date is one tuple,
replaced whole, so a racing thread at worst formats the same second again.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ALGORITHM = "AWS4-HMAC-SHA256"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


class SigV4Signer:
    """Signs GETs for one region and service; thread safe."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self._region = region
        self._service = service
        self._keys: dict[tuple[str, str], bytes] = {}  # (secret, yyyymmdd) -> signing key
        self._lock = threading.Lock()
        self._date: tuple[int, str] = (-1, "")

    def sign(
        self,
        *,
        access_key: str,
        secret_key: str,
        token: str | None,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        now: datetime | None = None,
    ) -> dict[str, str]:
        """The headers to send: `headers` plus the date, payload hash, token and signature."""
        amz_date = self._amz_date() if now is None else now.astimezone(UTC).strftime(_AMZ_DATE)
        day = amz_date[:8]
        sent = dict(headers)
        sent["X-Amz-Date"] = amz_date
        sent["X-Amz-Content-SHA256"] = EMPTY_SHA256
        if token:
            sent["X-Amz-Security-Token"] = token
        canonical = {name.lower(): " ".join(value.split()) for name, value in sent.items()}
        canonical["host"] = host
        names = sorted(canonical)
        signed_headers = ";".join(names)
        canonical_request = "\n".join(
            (
                "GET",
                path,
                "&".join(f"{name}={value}" for name, value in sorted(query)),
                "".join(f"{name}:{canonical[name]}\n" for name in names),
                signed_headers,
                EMPTY_SHA256,
            )
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        string_to_sign = "\n".join(
            (_ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
        )
        key = self._signing_key(secret_key, day)
        signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        sent["Authorization"] = (
            f"{_ALGORITHM} Credential={access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return sent

    def _amz_date(self) -> str:
        """This second as X-Amz-Date wants it; formatted once per second."""
        second = int(time.time())
        cached = self._date
        if cached[0] != second:
            cached = self._date = (second, time.strftime(_AMZ_DATE, time.gmtime(second)))
        return cached[1]

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        cached = self._keys.get((secret_key, day))
        if cached is not None:
            return cached
        key = _hmac(f"AWS4{secret_key}".encode(), day)
        for part in (self._region, self._service, "aws4_request"):
            key = _hmac(key, part)
        with self._lock:
            self._keys = {(secret_key, day): key}  # one day, one secret: old ones are useless
        return key


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()
