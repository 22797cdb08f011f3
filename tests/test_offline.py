"""Serving through an outage (docs/semantics.md, "When the store is down"): real mounts of
SeaweedFS behind the FaultProxy, the store taken away by 503s or by stopping the proxy."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import FaultProxy, SeaweedServer
from support.metrics import free_port, gauge
from support.mounting import Mounted, MountEnv, drop_page_cache, run_cli

pytestmark = pytest.mark.mount

MiB = 1 << 20
TTL = "1s"  # --dir-cache-time: every test outlives it
WAIT = 60.0  # for what takes a second or two (a probe, retries); generous for a loaded box
FILES = {
    "model/config.json": b'{"dim": 64}',
    "model/weights.bin": os.urandom(3 * MiB + 5),
    "model/sub/tokenizer.json": b'{"vocab": []}',
}
NOT_READ = "model/later.bin"  # listed, never read: its data is not in the cache


@pytest.fixture
def env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    make_config: Callable[..., Path],
) -> Iterator[MountEnv]:
    created = MountEnv.create(seaweed, proxy, bucket, tmp_path, make_config)
    for key, data in FILES.items():
        created.put(key, data)
    created.put(NOT_READ, os.urandom(2 * MiB))
    yield created
    created.proxy.clear_faults()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def store_of(mounted: Mounted) -> dict[str, object]:
    store: dict[str, object] = mounted.status()["store"]
    return store


def read_everything(root: Path) -> None:
    for key, data in FILES.items():
        assert (root / key).read_bytes() == data


def log_lines(env: MountEnv, text: str) -> list[str]:
    return [
        line for line in (env.cache_dir / "modelfs.log").read_text().splitlines() if text in line
    ]


def test_a_read_tree_is_served_while_the_store_is_down_past_the_ttl(env: MountEnv) -> None:
    port = free_port()
    with env.mount("--dir-cache-time", TTL, "--metrics", f"127.0.0.1:{port}") as mounted:
        read_everything(env.mountpoint)
        assert store_of(mounted)["state"] == "online"
        assert gauge(port, "modelfs_offline") == 0
        env.proxy.fail_next(503, times=None)  # every request: 5xx after retries
        time.sleep(1.5)  # listings and the kernel's entries are out of date now
        drop_page_cache()
        assert sorted(os.listdir(env.mountpoint / "model")) == [
            "config.json", "later.bin", "sub", "weights.bin"
        ]  # fmt: skip
        assert os.listdir(env.mountpoint / "model" / "sub") == ["tokenizer.json"]
        read_everything(env.mountpoint)  # byte-exact, from the block cache
        wait_for(lambda: store_of(mounted)["state"] == "offline", "the store to be offline")
        with pytest.raises(OSError, match="Input/output error") as failed:
            (env.mountpoint / NOT_READ).read_bytes()  # needs the store: fails, never hangs
        assert failed.value.errno == errno.EIO
        time.sleep(1.5)
        read_everything(env.mountpoint)  # past the TTL again, and offline for sure
        shown = run_cli("status", env.mountpoint, check=True).stdout
        assert "store: offline since " in shown
        assert "s, offline)" in shown.splitlines()[0]
        assert mounted.status()["offline"] is True
        assert gauge(port, "modelfs_offline") == 1
        env.proxy.clear_faults()
        wait_for(lambda: store_of(mounted)["state"] == "online", "the store to be back")
        assert gauge(port, "modelfs_offline") == 0
        assert len((env.mountpoint / NOT_READ).read_bytes()) == 2 * MiB
        # 403 means the store answers: nothing old is served in its place
        env.proxy.fail_next(403, times=None)
        time.sleep(1.5)
        with pytest.raises(PermissionError):
            os.listdir(env.mountpoint / "model")
        assert store_of(mounted)["state"] != "offline"
    assert len(log_lines(env, "store unreachable")) == 1
    assert len(log_lines(env, "store reachable again")) == 1
    assert log_lines(env, "Traceback") == []


def snapshot_files(env: MountEnv) -> list[Path]:
    return sorted(env.cache_dir.glob("*/snapshots/*.json"))


def test_a_mount_started_while_the_store_is_down_serves_its_snapshot(env: MountEnv) -> None:
    with env.mount("--dir-cache-time", TTL):
        read_everything(env.mountpoint)
    [snapshot] = snapshot_files(env)
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert stat.S_IMODE(snapshot.parent.stat().st_mode) == 0o700
    port = env.proxy.port
    env.proxy.stop()  # connection refused from now on
    with env.mount("--dir-cache-time", TTL) as mounted:
        assert "modelfs: warning: cannot reach S3 endpoint" in mounted.stderr
        assert "read-only from its metadata snapshot" in mounted.stderr
        assert store_of(mounted)["state"] == "offline"
        assert "store: offline since " in run_cli("status", env.mountpoint, check=True).stdout
        assert sorted(os.listdir(env.mountpoint)) == ["model"]
        read_everything(env.mountpoint)
        with pytest.raises(OSError, match="Read-only file system") as refused:
            (env.mountpoint / "model" / "new.txt").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS
        with pytest.raises(OSError, match="Input/output error") as failed:
            (env.mountpoint / NOT_READ).read_bytes()
        assert failed.value.errno == errno.EIO
        with FaultProxy(env.seaweed.endpoint, port=port):  # the store answers again
            wait_for(lambda: store_of(mounted)["state"] == "online", "the store to answer")
            assert store_of(mounted)["read_only"] is False
            (env.mountpoint / "model" / "new.txt").write_bytes(b"written after the outage")
            assert run_cli("sync", env.mountpoint).returncode == 0
            body = env.seaweed.client().get_object(Bucket=env.bucket, Key="model/new.txt")
            assert body["Body"].read() == b"written after the outage"
            assert len((env.mountpoint / NOT_READ).read_bytes()) == 2 * MiB


def test_without_a_snapshot_a_mount_while_the_store_is_down_is_one_clear_error(
    env: MountEnv,
) -> None:
    env.proxy.stop()
    env.mountpoint.mkdir()
    result = run_cli(
        "--config", env.config, "mount", "--daemon", "--cache-dir", env.cache_dir,
        f"test:{env.bucket}", env.mountpoint,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("modelfs: error: cannot reach S3 endpoint")
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot_files(env) == []


def test_a_snapshot_belongs_to_its_prefix_and_a_read_only_mount_stays_so(env: MountEnv) -> None:
    """A mount of another prefix of the same bucket and cache never serves this one's; a
    mount asked to be read-only stays read-only when the store comes back."""
    with env.mount("--read-only", prefix="model"):
        assert (env.mountpoint / "config.json").read_bytes() == FILES["model/config.json"]
    assert len(snapshot_files(env)) == 1
    port = env.proxy.port
    env.proxy.stop()
    with pytest.raises(AssertionError, match="cannot reach S3 endpoint"), env.mount(prefix="sub"):
        pass
    with env.mount("--read-only", prefix="model") as mounted:
        assert (env.mountpoint / "config.json").read_bytes() == FILES["model/config.json"]
        assert "read-only from its metadata snapshot" in mounted.stderr
        assert "read-write once" not in mounted.stderr
        with FaultProxy(env.seaweed.endpoint, port=port):
            wait_for(lambda: store_of(mounted)["state"] == "online", "the store to answer")
            assert store_of(mounted)["read_only"] is True
