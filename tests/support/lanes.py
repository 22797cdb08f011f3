"""Which lane of `S3Store` sent a request, as the FaultProxy recorded it.

botocore sends a User-Agent that names it ("Boto3/... Botocore/..."); the lean lane
(`modelfs.store.lean`) sends none. Tests use that to prove which lane served a GET or a LIST.
"""

from __future__ import annotations

from .proxy import FaultProxy, ProxyRequest


def lane_of(request: ProxyRequest) -> str:
    """The lane that sent `request`: "botocore" or "lean"."""
    return "botocore" if "Botocore" in request.headers.get("User-Agent", "") else "lean"


def data_gets(proxy: FaultProxy, key: str) -> list[ProxyRequest]:
    """The GETs of `key` (as it appears, quoted, at the end of the request path)."""
    return [r for r in proxy.requests if r.method == "GET" and r.path.endswith(f"/{key}")]


def list_requests(proxy: FaultProxy) -> list[ProxyRequest]:
    """The ListObjectsV2 requests."""
    return [r for r in proxy.requests if r.method == "GET" and "list-type=2" in r.path]
