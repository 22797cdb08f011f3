"""Fixtures shared by the whole suite.

- `seaweed`  (session): one real SeaweedFS S3 server per test run, always killed at the end;
- `bucket`:    a fresh, empty bucket on it, named after the test;
- `proxy`:     a FaultProxy in front of the server (counts requests, injects faults);
- `make_config`: `make_config(tmp_path, endpoint, name="test", ...) -> Path` (rclone format);
- `s3_store`:  an S3Store bound to `bucket`;
- `tiny_disk`: a 1 MiB tmpfs mounted for the test (ENOSPC tests; needs root).

Every S3Store a test makes is closed when the test ends (`_close_stores`): an unclosed one
leaves sockets for the garbage collector, whose ResourceWarning (an error here) then fails
whichever later test the collection happens to run in.

The helpers themselves live in `tests/support` so scripts can use them without pytest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from modelfs.store.s3 import S3Store
from support import FaultProxy, SeaweedServer, remote_config, unique_bucket_name
from support import make_config as _make_config
from support.mounting import tmpfs


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    created: list[S3Store] = []
    construct = S3Store.__init__

    def construct_and_track(self: S3Store, *args: Any, **kwargs: Any) -> None:
        construct(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(S3Store, "__init__", construct_and_track)
    yield
    for store in created:
        store.close()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(seaweed: SeaweedServer, request: pytest.FixtureRequest) -> str:
    if not seaweed.running:
        seaweed.start()  # an earlier test stopped it to simulate an outage
    return seaweed.create_bucket(unique_bucket_name(request.node.name))


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.endpoint) as running:
        yield running


@pytest.fixture
def make_config() -> Callable[..., Path]:
    return _make_config


@pytest.fixture
def s3_store(seaweed: SeaweedServer, bucket: str) -> S3Store:
    return S3Store(remote_config(seaweed.endpoint), bucket)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: as root, only a really full disk says ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with tmpfs(tmp_path / "tiny", "1m") as disk:
        yield disk
