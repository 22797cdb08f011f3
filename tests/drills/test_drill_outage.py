"""Drills of a store that goes away: at mount time, for longer than the TTL while files are read,
and coming back.

The store is an `Outage` (`support.outage`): a proxy on a fixed port that stops listening while
the store is down (connections refused at once) and listens again when it comes back; a
blackholed store is the same proxy answering nothing. SeaweedFS itself keeps running.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelfs.store.health import PROBE_INTERVAL
from modelfs.store.s3 import PROBE_TIMEOUT
from support import SeaweedServer, make_config, unique_bucket_name
from support.drills import Drill
from support.mounting import MountEnv, drop_page_cache, is_mounted, run_cli
from support.outage import Outage
from support.sharedmount import MiB, payload

pytestmark = pytest.mark.mount

TTL = 1.0  # --dir-cache-time
STORE_TIMEOUT = 1.0  # --store-timeout
OPTIONS = ("--dir-cache-time", f"{TTL:g}s", "--store-timeout", f"{STORE_TIMEOUT:g}s")
SLACK = 5.0  # a loaded 2-core machine
# `mount --daemon` starts two Python processes, then probes the bucket for at most PROBE_TIMEOUT.
MOUNT_REFUSED_LIMIT = PROBE_TIMEOUT + 2 * SLACK
# A refused connection fails at once; botocore tries 3 times, backing off at most 1 s + 2 s.
REFUSED_READ_LIMIT = 3.0 + SLACK
# Known offline, a read that needs the store fails at once; the mount probes the store every
# PROBE_INTERVAL (for at most STORE_TIMEOUT) and serves again once it answers.
BACK_LIMIT = PROBE_INTERVAL + STORE_TIMEOUT + SLACK


@pytest.fixture
def outage(seaweed: SeaweedServer) -> Iterator[Outage]:
    with Outage(seaweed.endpoint) as store:
        yield store


@pytest.fixture
def env(seaweed: SeaweedServer, outage: Outage, bucket: str, tmp_path: Path) -> MountEnv:
    return MountEnv.create(seaweed, outage.proxy, bucket, tmp_path, make_config)


@dataclass
class Served:
    """One mount for the drills of a running mount, its store an `Outage`, its files `files`."""

    env: MountEnv
    outage: Outage
    files: dict[str, bytes]

    def path(self, key: str) -> Path:
        return self.env.mountpoint / key


@pytest.fixture(scope="module")
def served(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not seaweed.running:
        seaweed.start()
    directory = tmp_path_factory.mktemp("drill-outage")
    files = {key: payload(f"outage/{key}", 4 * MiB) for key in ("held.bin", "later.bin")}
    with Outage(seaweed.endpoint) as store:
        bucket = seaweed.create_bucket(unique_bucket_name(directory.name))
        env = MountEnv.create(seaweed, store.proxy, bucket, directory, make_config)
        for key, data in files.items():
            env.put(key, data)
        with env.mount(*OPTIONS):
            yield Served(env, store, files)
            store.up()


def mount_while_down(drill: Drill, env: MountEnv) -> str:
    """`modelfs mount --daemon`, timed; it must fail with one line (returned) and mount nothing."""
    env.mountpoint.mkdir(exist_ok=True)
    done = drill.call(lambda: run_cli(*env.mount(*OPTIONS).command()))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not is_mounted(env.mountpoint)
    return lines[0]


@pytest.mark.drill(
    "store down at mount time, no snapshot (refused, then blackholed)", limit=MOUNT_REFUSED_LIMIT
)
def test_the_store_down_at_mount_time(drill: Drill, env: MountEnv, outage: Outage) -> None:
    """No snapshot of the prefix in the cache: a clear one-line error, quickly, for a store that
    refuses connections and for one that accepts them and never answers."""
    env.put("model.bin", b"never read")
    outage.down()
    line = mount_while_down(drill, env)
    assert f"127.0.0.1:{outage.port}" in line
    outage.up()
    outage.proxy.blackhole_next(times=None)
    line = mount_while_down(drill, env)
    assert f"127.0.0.1:{outage.port}" in line
    drill.finish()


def read_held(drill: Drill, fd: int, data: bytes) -> None:
    """Read an open file to its end with pread, every call timed, every byte compared."""
    offset = 0
    while piece := drill.call(functools.partial(os.pread, fd, MiB, offset)):
        drill.compare(piece, data, offset)
        offset += len(piece)
    assert offset == len(data)


@pytest.mark.drill(
    "store down at mount time, with a snapshot (starts offline)", limit=MOUNT_REFUSED_LIMIT
)
def test_the_store_down_at_mount_time_with_a_snapshot(
    drill: Drill, env: MountEnv, outage: Outage
) -> None:
    """A mount of this prefix ran before and left its metadata snapshot: with the store down,
    the mount comes up read-only from it and serves what the cache holds exactly; writes are
    refused (EROFS); once the store answers it turns normal and reads the rest."""
    read, unread = payload("outage/read.bin", 2 * MiB), payload("outage/unread.bin", 2 * MiB)
    env.put("read.bin", read)
    env.put("unread.bin", unread)
    with env.mount(*OPTIONS):
        assert drill.read_whole(env.mountpoint / "read.bin", read) is None
    outage.down()
    mounted = env.mount(*OPTIONS)
    drill.call(mounted.__enter__)
    try:
        assert "read-only from its metadata snapshot" in mounted.stderr
        assert drill.read_whole(env.mountpoint / "read.bin", read) is None
        with pytest.raises(OSError, match="Read-only file system"):
            drill.call(lambda: (env.mountpoint / "new.txt").write_bytes(b"x"))
        outage.up()
        with drill.timed():  # from the store's return until the mount is normal again
            while mounted.status()["store"]["state"] != "online":
                time.sleep(0.1)
        assert drill.read_whole(env.mountpoint / "unread.bin", unread) is None
    finally:
        mounted.__exit__(None, None, None)
    drill.finish()


@pytest.mark.drill("store down longer than the TTL during reads", limit=REFUSED_READ_LIMIT)
def test_the_store_down_longer_than_the_ttl(drill: Drill, served: Served) -> None:
    """A file read once is in the block cache: with the store gone for several TTLs, an app
    holding it open reads it again exactly, and so does one that opens it anew."""
    data, path = served.files["held.bin"], served.path("held.bin")
    assert drill.read_whole(path, data) is None  # cold: fills the block cache
    fd = drill.call(lambda: os.open(path, os.O_RDONLY))
    try:
        served.outage.down()
        time.sleep(3 * TTL)
        drop_page_cache()  # so the reads reach the mount, not the kernel's pages
        read_held(drill, fd, data)
        assert drill.read_whole(path, data) is None
    finally:
        os.close(fd)
        served.outage.up()
    drill.finish()


@pytest.mark.drill("store coming back", limit=BACK_LIMIT)
def test_the_store_coming_back(drill: Drill, served: Served) -> None:
    """A file never read fails (EIO) while the store is down, without waiting long; once the
    store listens again, the same mount reads it exactly (an app retrying its read waits for
    the mount's next probe), without a remount."""
    data, path = served.files["later.bin"], served.path("later.bin")
    served.outage.down()
    try:
        failed = drill.read_whole(path, data)
        assert failed is not None
        assert failed.errno == errno.EIO
    finally:
        served.outage.up()
    drill.read_until_exact(path, data, give_up=60)
    drill.finish()
