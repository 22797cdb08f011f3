"""Drills of the cache directory: a full disk (reads, writes), a block planted where other users
could write, two prefixes of one bucket sharing one cache dir.

A full disk is a small tmpfs (`support.mounting.tmpfs`) filled to the last byte by a file that
is not modelfs's (`fill_up`), as another program would fill it. A planted block is a forgery
an attacker could make: the real block file of the object with other bytes and a checksum that
matches them (xxh3 is not a MAC), owned by another user.
"""

from __future__ import annotations

import errno
import functools
import os
import struct
from pathlib import Path

import pytest

from modelfs.cache.blockfile import HEADER_SIZE, checksum, key_digest
from support import FaultProxy, SeaweedServer, make_config
from support.drills import Drill
from support.mounting import Mounted, MountEnv, fill_up, is_mounted, run_cli, tmpfs
from support.sharedmount import MiB, payload

pytestmark = pytest.mark.mount

SLACK = 5.0  # a loaded 2-core machine
SYNC_LIMIT = 30.0  # `modelfs sync` of a few MiB to a local store
REFUSED_LIMIT = 15.0  # `mount --daemon` refusing in preflight: two Python processes start
OTHER_UID = 65534  # nobody: the attacker


@pytest.fixture
def env(seaweed: SeaweedServer, proxy: FaultProxy, bucket: str, tmp_path: Path) -> MountEnv:
    return MountEnv.create(seaweed, proxy, bucket, tmp_path, make_config)


def sync(drill: Drill, env: MountEnv) -> None:
    done = drill.call(lambda: run_cli("sync", "--timeout", "60s", env.mountpoint, timeout=90))
    assert done.returncode == 0, done.stderr


@pytest.mark.drill("cache disk full during reads", limit=SLACK)
def test_a_full_cache_disk_during_reads(drill: Drill, env: MountEnv, tmp_path: Path) -> None:
    """No block can be written: cold reads are still exact, the write errors only counted."""
    data = payload("cache/cold.bin", 6 * MiB)
    env.put("cold.bin", data)
    with tmpfs(tmp_path / "disk", "8m") as disk, env.mount(cache_dir=disk / "cache") as mounted:
        fill_up(disk / "filler")
        assert drill.read_whole(env.mountpoint / "cold.bin", data) is None
        assert mounted.status()["cache"]["write_errors"] > 0
    drill.finish()


@pytest.mark.drill("cache disk full during writes", limit=SYNC_LIMIT)
def test_a_full_cache_disk_during_writes(drill: Drill, env: MountEnv, tmp_path: Path) -> None:
    """Written files are staged on the cache disk. Once it is full a write says ENOSPC, and
    every write that had returned success reaches the bucket, the cut-off file's included."""
    first = payload("cache/first.bin", 2 * MiB)
    second = payload("cache/second.bin", 8 * MiB)
    disk = tmp_path / "disk"
    with tmpfs(disk, "8m"), env.mount("--write-back", "1h", cache_dir=disk / "cache"):
        drill.write_file(env.mountpoint / "first.bin", "first.bin", first)
        path = env.mountpoint / "second.bin"
        fd = drill.call(lambda: os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        refused, filled = 0, False
        for offset in range(0, len(second), 256 * 1024):
            if offset == MiB:
                fill_up(disk / "filler")  # another program takes the rest of the disk
                filled = True
            piece = second[offset : offset + 256 * 1024]
            try:
                drill.call(functools.partial(os.write, fd, piece))
            except OSError as exc:
                refused = exc.errno or -1
                break
            drill.ack("second.bin", offset, piece)
        (disk / "filler").unlink()  # the disk has room again
        drill.call(functools.partial(os.close, fd))
        assert filled
        assert refused == errno.ENOSPC
        assert drill.read_whole(env.mountpoint / "first.bin", first) is None
        sync(drill, env)
    drill.settle(env.seaweed.client(), env.bucket)
    drill.finish()


def plant_a_block(cache: Path, key: str, forged: bytes) -> Path:
    """Overwrite the first block file of `key` with `forged` bytes (as long as its payload)
    and a checksum that matches them, owned by another user; returns its path."""
    block = sorted(cache.glob(f"**/{key_digest(key).hex()}-*-0.blk"))[0]
    raw = block.read_bytes()
    payload_bytes = forged[: len(raw) - HEADER_SIZE]
    prefix = raw[:56]
    header = prefix + struct.pack("<Q", checksum(prefix, payload_bytes)) + raw[64:HEADER_SIZE]
    block.write_bytes(header + payload_bytes)
    os.chown(block, OTHER_UID, OTHER_UID)
    return block


def cache_root(cache: Path) -> Path:
    (root,) = [path for path in cache.iterdir() if path.is_dir()]
    return root


@pytest.mark.parametrize(
    "opened",
    [
        pytest.param(
            "cache dir",
            marks=pytest.mark.drill(
                "planted block, cache dir writable by others (refused)", limit=REFUSED_LIMIT
            ),
        ),
        pytest.param(
            "bucket's cache root",
            marks=pytest.mark.drill(
                "planted block, bucket cache root writable by others (refused)",
                limit=REFUSED_LIMIT,
            ),
        ),
    ],
)
def test_a_planted_block_where_others_could_write(drill: Drill, env: MountEnv, opened: str) -> None:
    """A directory of the cache was left writable by everyone (mode 0777) and another user
    planted a block there: the mount refuses the directory; once its mode is fixed as the error
    says, the mount drops the planted block (not ours) and serves the object's own bytes."""
    data = payload("cache/model.bin", 2 * MiB)
    env.put("model.bin", data)
    with env.mount():
        assert drill.read_whole(env.mountpoint / "model.bin", data) is None
    evil = payload("cache/evil", MiB)
    plant_a_block(env.cache_dir, "model.bin", evil)
    directory = env.cache_dir if opened == "cache dir" else cache_root(env.cache_dir)
    os.chmod(directory, 0o777)
    mount = env.mount()
    done = drill.call(lambda: run_cli(*mount.command()))
    if done.returncode == 0:  # it mounted: whatever it serves is checked before failing
        try:
            drill.read_whole(env.mountpoint / "model.bin", data)
        finally:
            run_cli("unmount", env.mountpoint)
    assert done.returncode == 2, "mounted over a directory others can write"
    assert done.stderr.strip().splitlines() == [
        f"modelfs: error: cache dir {directory} is not safe to use: mode 0777 lets other "
        "users in (chmod 0755 it)"
    ]
    assert not is_mounted(env.mountpoint)
    os.chmod(directory, 0o755)  # what the message says to do; the planted block is still there
    with mount:
        assert drill.read_whole(env.mountpoint / "model.bin", data) is None
    drill.finish()


@pytest.mark.drill("two prefixes of one bucket on one cache dir", limit=SYNC_LIMIT)
def test_two_prefixes_of_one_bucket_on_one_cache_dir(drill: Drill, env: MountEnv) -> None:
    """Prefix a/ writes and dies (kill -9) with its upload pending; prefix b/, on the same
    mountpoint and cache dir, reads and writes its own files and uploads a/'s. Beside it, a
    mount of a/ on another mountpoint and the same cache dir reads a/ (blocks shared) and
    writes its own file: every acknowledged write lands."""
    a_model, b_model = payload("cache/a", 2 * MiB), payload("cache/b", 2 * MiB)
    env.put("a/model.bin", a_model)
    env.put("b/model.bin", b_model)
    first = env.mount("--write-back", "1h", prefix="a")
    with first:
        assert drill.read_whole(env.mountpoint / "model.bin", a_model) is None
        drill.write_file(env.mountpoint / "pending.txt", "a/pending.txt", b"written under a/")
        first.kill()
        run_cli("unmount", env.mountpoint)
    with env.mount("--write-back", "0s", prefix="b"):
        assert drill.read_whole(env.mountpoint / "model.bin", b_model) is None
        drill.write_file(env.mountpoint / "own.txt", "b/own.txt", b"written under b/")
        sync(drill, env)
        spec = f"test:{env.bucket}/a"
        beside = Mounted(env.config, spec, env.mountpoint.parent / "mnt-a", env.cache_dir)
        with beside:
            assert drill.read_whole(beside.mountpoint / "model.bin", a_model) is None
            drill.write_file(beside.mountpoint / "beside.txt", "a/beside.txt", b"beside")
            done = drill.call(lambda: run_cli("sync", "--timeout", "60s", beside.mountpoint))
            assert done.returncode == 0, done.stderr
    drill.settle(env.seaweed.client(), env.bucket)
    drill.finish()
