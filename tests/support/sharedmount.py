"""A mount shared by the drills of a module: one lane, one bucket of files, one fault proxy.

Mounting costs seconds, so the read drills of one lane share one mount and one bucket; each
drill reads its own files, and its faults match its own keys only (`gets_of`). The lean lane is
on by default; `lean=False` mounts with a proxy named in the environment, which turns it off
(the lane does not implement proxies: `modelfs.store.lean`), so botocore sends every request.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import make_config, unique_bucket_name
from .lanes import lane_of
from .mounting import Mounted, MountEnv
from .proxy import FaultProxy, Predicate, ProxyRequest
from .seaweed import SeaweedServer

MiB = 1 << 20
STORE_TIMEOUT = 1.0  # --store-timeout of the shared mounts: a blackhole costs seconds, not minutes
TTL = 1.0  # --dir-cache-time: a replaced object is seen a second later
# A proxy no request ever reaches (TEST-NET-1): its presence alone turns the lean lane off,
# and NO_PROXY sends botocore straight to 127.0.0.1.
NO_LEAN_LANE = {"HTTP_PROXY": "http://192.0.2.1:3128", "NO_PROXY": "127.0.0.1,localhost"}


def payload(name: str, size: int) -> bytes:
    """Random bytes, the same for the same name in every run."""
    return random.Random(name).randbytes(size)


def gets_of(key: str) -> Predicate:
    """Predicate: the data GETs of `key` (not its LISTs or HEADs)."""

    def match(request: ProxyRequest) -> bool:
        return request.method == "GET" and request.path.split("?")[0].endswith(f"/{key}")

    return match


@dataclass
class SharedMount:
    """A mounted bucket whose files are `files` (key -> bytes), reached through `proxy`."""

    env: MountEnv
    mounted: Mounted
    files: dict[str, bytes]
    lane: str  # "lean" or "botocore": the lane data GETs take first

    @property
    def proxy(self) -> FaultProxy:
        return self.env.proxy

    def path(self, key: str) -> Path:
        return self.env.mountpoint / key

    def lanes_faulted(self, key: str) -> set[str]:
        """The lanes of the requests for `key` that a fault hit."""
        return {lane_of(r) for r in self.proxy.requests if r.fault and r.path.endswith(f"/{key}")}


@contextmanager
def shared_mount(
    seaweed: SeaweedServer,
    directory: Path,
    files: dict[str, bytes],
    *options: str,
    lean: bool = True,
) -> Iterator[SharedMount]:
    """Mount a new bucket holding `files` through a new proxy, with the lean lane on or off."""
    if not seaweed.running:
        seaweed.start()  # an earlier test stopped it to simulate an outage
    bucket = seaweed.create_bucket(unique_bucket_name(directory.name))
    with FaultProxy(seaweed.endpoint) as proxy:
        env = MountEnv.create(seaweed, proxy, bucket, directory, make_config)
        for key, data in files.items():
            env.put(key, data)
        mounted = env.mount(
            "--store-timeout", f"{STORE_TIMEOUT:g}s", "--dir-cache-time", f"{TTL:g}s", *options
        )
        with pytest.MonkeyPatch.context() as patch:
            if not lean:
                for name, value in NO_LEAN_LANE.items():
                    patch.setenv(name, value)
            mounted.__enter__()
        try:
            yield SharedMount(env, mounted, files, "lean" if lean else "botocore")
        finally:
            mounted.__exit__(None, None, None)
