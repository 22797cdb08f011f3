"""Raw boto3 reads of the same objects: the yardsticks the mounters are measured against.

* `single_stream`: one `get_object`, body read in 1 MiB pieces.
* `parallel_ranged`: the object cut into 8 MiB ranges, 16 threads each issuing ranged GETs
  on one shared client (boto3 clients are thread-safe; its pool is sized to 16 connections).
* "best boto3" (computed in report.py) is the faster of the two in the same run.

Both throw the bytes away (a `/dev/null`-like sink) instead of writing a file: that is an
upper bound on what any mounter can do, since a mounter also writes its cache.

* `first_byte`: a fresh client's first ranged GET of 4 KiB (it includes the TCP connect, as a
  freshly mounted filesystem's first read would).
* `list_all`: ListObjectsV2 pages (1,000 keys each) over a prefix: the raw cost of `ls -lR`.
* `get_each`: one GET per small file, one after another: the raw cost of reading them all.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from workloads import Throughput

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART_BYTES = 8 << 20
THREADS = 16
_BODY_CHUNK = 1 << 20
_FIRST_BYTES = 4096


@dataclass(frozen=True, slots=True)
class S3Target:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, connections: int = THREADS) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                max_pool_connections=connections,
                retries={"total_max_attempts": 3},
                read_timeout=120,
            ),
        )

    def answers(self) -> bool:
        """Whether the server lists buckets with these keys now (one try)."""
        try:
            self.client(1).list_buckets()
        except Exception:
            return False
        return True


def _drain(client: S3Client, bucket: str, key: str, byte_range: str | None) -> int:
    if byte_range is None:
        response = client.get_object(Bucket=bucket, Key=key)
    else:
        response = client.get_object(Bucket=bucket, Key=key, Range=byte_range)
    body = response["Body"]
    received = 0
    while chunk := body.read(_BODY_CHUNK):
        received += len(chunk)
    return received


def single_stream(target: S3Target, key: str, limit: int | None = None) -> Throughput:
    """One GET of the whole object (or of its first `limit` bytes)."""
    client = target.client(1)
    byte_range = f"bytes=0-{limit - 1}" if limit else None
    start = time.perf_counter()
    received = _drain(client, target.bucket, key, byte_range)
    return Throughput(received, time.perf_counter() - start)


def parallel_ranged(
    target: S3Target, key: str, size: int, threads: int = THREADS, part: int = PART_BYTES
) -> Throughput:
    client = target.client(threads)
    ranges = [f"bytes={offset}-{min(offset + part, size) - 1}" for offset in range(0, size, part)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        received = sum(pool.map(lambda r: _drain(client, target.bucket, key, r), ranges))
    elapsed = time.perf_counter() - start
    if received != size:
        raise RuntimeError(f"parallel GET of {key} returned {received} of {size} bytes")
    return Throughput(received, elapsed)


def first_byte(target: S3Target, key: str) -> float:
    client = target.client(1)
    start = time.perf_counter()
    _drain(client, target.bucket, key, f"bytes=0-{_FIRST_BYTES - 1}")
    return time.perf_counter() - start


def list_all(target: S3Target, prefix: str) -> tuple[float, int]:
    """Seconds to list every key under `prefix`, and how many there were."""
    client = target.client(1)
    paginator = client.get_paginator("list_objects_v2")
    start = time.perf_counter()
    count = sum(
        page.get("KeyCount", 0) for page in paginator.paginate(Bucket=target.bucket, Prefix=prefix)
    )
    return time.perf_counter() - start, count


def get_each(target: S3Target, keys: tuple[str, ...]) -> float:
    client = target.client(1)
    start = time.perf_counter()
    for key in keys:
        _drain(client, target.bucket, key, None)
    return time.perf_counter() - start
