"""Drills of a mount that dies: kill -9 in the middle of a read, of an upload, of a multipart
upload, an upload whose connection dies after its headers, and a power loss after an
acknowledged append.

After each crash the dead mount is unmounted and mounted again on the same cache dir, as
`modelfs run` or a unit restart would; the next mount must read exactly and upload every
acknowledged write, with no multipart upload left open. Writes count as acknowledged once
close() returned, except across the power loss, where only fsync() promises anything.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import FaultProxy, SeaweedServer, make_config, method_is
from support.drills import Drill
from support.lazydisk import PowerEnv, power_env
from support.mounting import MountEnv, run_cli
from support.sharedmount import MiB, gets_of, payload

pytestmark = pytest.mark.mount

SLACK = 5.0  # a loaded 2-core machine
GET_DELAY = 0.3  # a slow store, so that the kill lands while a read waits
SYNC_LIMIT = 30.0  # `modelfs sync` of a few MiB to a local store, after a restart
PART_SIZE = 16 * MiB  # write-back's multipart part size: 40 MiB is three parts


@pytest.fixture
def env(seaweed: SeaweedServer, proxy: FaultProxy, bucket: str, tmp_path: Path) -> MountEnv:
    return MountEnv.create(seaweed, proxy, bucket, tmp_path, make_config)


def wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def sync(drill: Drill, env: MountEnv) -> None:
    done = drill.call(lambda: run_cli("sync", "--timeout", "60s", env.mountpoint, timeout=90))
    assert done.returncode == 0, done.stderr


@pytest.mark.drill("kill -9 mid-read", limit=GET_DELAY + SLACK)
def test_kill_9_mid_read(drill: Drill, env: MountEnv) -> None:
    """The read waiting on the dead mount returns an error at once (no hang); the next mount,
    over the half-filled cache, reads the file exactly."""
    data = payload("crash/read.bin", 16 * MiB)
    env.put("read.bin", data)
    env.proxy.delay_next(GET_DELAY, times=None, match=gets_of("read.bin"))
    failure: list[OSError] = []
    progress = threading.Event()

    def reader(fd: int) -> None:
        offset = 0
        try:
            while piece := drill.call(functools.partial(os.pread, fd, MiB, offset)):
                drill.compare(piece, data, offset)
                offset += len(piece)
                if offset >= 2 * MiB:
                    progress.set()
        except OSError as exc:
            failure.append(exc)

    mounted = env.mount("--transfers", "2", "--part-size", "1M")
    with mounted:
        fd = os.open(env.mountpoint / "read.bin", os.O_RDONLY)
        thread = threading.Thread(target=reader, args=(fd,))
        thread.start()
        try:
            assert progress.wait(30), "the read never got going"
            mounted.kill()
        finally:
            thread.join(60)
            with contextlib.suppress(OSError):  # closing on a dead mount: ENOTCONN
                os.close(fd)
        run_cli("unmount", env.mountpoint)
    assert [exc.errno for exc in failure] in (
        [errno.ENOTCONN],
        [errno.ECONNABORTED],
    ), failure
    env.proxy.clear_faults()
    with env.mount():
        assert drill.read_whole(env.mountpoint / "read.bin", data) is None
    drill.finish()


@pytest.mark.drill("kill -9 mid-upload", limit=SYNC_LIMIT)
def test_kill_9_mid_upload(drill: Drill, env: MountEnv) -> None:
    """Files closed (acknowledged) while the store is slow; the mount dies with a PUT in
    flight. The next mount uploads every one of them."""
    env.proxy.delay_next(2.0, times=None, match=method_is("PUT"))
    mounted = env.mount("--write-back", "0s")
    with mounted:
        for n in range(3):
            data = payload(f"crash/out{n}", 256 * 1024)
            drill.write_file(env.mountpoint / f"out{n}.bin", f"out{n}.bin", data)
        wait_for(
            lambda: any(r.method == "PUT" and r.status is None for r in env.proxy.requests),
            "a PUT in flight",
        )
        mounted.kill()
        run_cli("unmount", env.mountpoint)
    env.proxy.clear_faults()
    with env.mount():
        sync(drill, env)
    drill.settle(env.seaweed.client(), env.bucket)
    assert env.unfinished_uploads() == set()
    drill.finish()


@pytest.mark.drill("upload cut off after its headers", limit=SYNC_LIMIT)
def test_an_upload_cut_off_after_its_headers(drill: Drill, env: MountEnv) -> None:
    """The connection of a PUT dies right after its headers (the mount, or a middlebox, gone
    at that moment), as the server sees it. The retry lands the whole file under its name."""
    data = payload("crash/cut", 256 * 1024)
    env.proxy.cut_request_next(after_bytes=0, match=method_is("PUT"))
    with env.mount("--write-back", "0s"):
        drill.write_file(env.mountpoint / "cut.bin", "cut.bin", data)
        sync(drill, env)
    drill.settle(env.seaweed.client(), env.bucket)
    assert [r.fault for r in env.proxy.requests if r.method == "PUT"][:1] == ["cut"]
    assert env.bucket_keys() == ["cut.bin"]  # no conflict copy beside it
    drill.finish()


@pytest.mark.drill("kill -9 mid-multipart upload", limit=SYNC_LIMIT)
def test_kill_9_mid_multipart(drill: Drill, env: MountEnv) -> None:
    """A 40 MiB file goes up in three parts, each slowed down; the mount dies once the
    multipart upload has started. The next mount completes it; none is left open."""
    data = payload("crash/big", 2 * PART_SIZE + 8 * MiB)
    env.proxy.delay_next(
        1.0, times=None, match=lambda r: r.method == "PUT" and "partNumber" in r.path
    )
    mounted = env.mount("--write-back", "0s")
    with mounted:
        drill.write_file(env.mountpoint / "big.bin", "big.bin", data)
        wait_for(lambda: bool(env.open_uploads()), "the multipart upload to start")
        mounted.kill()
        run_cli("unmount", env.mountpoint)
    env.proxy.clear_faults()
    with env.mount():
        sync(drill, env)
    drill.settle(env.seaweed.client(), env.bucket)
    assert env.unfinished_uploads() == set()
    drill.finish()


@pytest.fixture
def power(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PowerEnv]:
    with power_env(seaweed, proxy, bucket, tmp_path, monkeypatch) as created:
        yield created


@pytest.mark.drill("power loss after an acknowledged append", limit=SYNC_LIMIT)
def test_power_loss_after_an_acknowledged_append(
    drill: Drill, power: PowerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log in the bucket is appended to and fsynced (acknowledged), then appended to again
    without fsync, and the power goes (the cache disk keeps only what was fsynced). After the
    reboot the object holds the old content and the acknowledged append."""
    durable = b"line 1: in the bucket before the mount\n"
    synced = b"line 2: appended and fsynced\n" * 16
    later = b"line 3: appended, never fsynced\n" * 16
    power.put("app.log", durable)
    drill.ack("app.log", 0, durable)  # the PUT that made it returned success
    mounted = power.mount_on_disk()
    with mounted:
        fd = drill.call(lambda: os.open(power.mountpoint / "app.log", os.O_WRONLY | os.O_APPEND))
        drill.call(functools.partial(os.write, fd, synced))
        drill.call(functools.partial(os.fsync, fd))
        drill.ack("app.log", len(durable), synced)
        drill.call(functools.partial(os.write, fd, later))
        power.power_cut(mounted, "drop")
        with contextlib.suppress(OSError):  # closing on a dead mount: ENOTCONN
            os.close(fd)
    with power.after_reboot(monkeypatch):
        sync(drill, power)
        assert drill.read_whole(power.mountpoint / "app.log", durable + synced) is None
    drill.settle(power.seaweed.client(), power.bucket)
    drill.finish()
