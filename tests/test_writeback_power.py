"""Power loss under write-back, on real mounts: the cache dir lives on the power-loss simulator.

`support.lazyfs.LazyDisk` holds every write to the cache dir until it is fsynced; a "power cut"
ends it (dropping what was not synced, or keeping a torn part of it, as the mode says), kills
the mount with SIGKILL, and brings the disk back with only what was durable. The next mount
runs as after a reboot ($MODELFS_BOOT_ID stands for the kernel's boot id, which a test cannot
change). The bucket must never end up with less than the durable content under the file's name,
and whatever a power loss may have torn goes to a conflict key, never over the object.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import FaultProxy, SeaweedServer
from support.lazydisk import PowerEnv, power_env
from support.mounting import run_cli

pytestmark = pytest.mark.mount

DURABLE = b"old.log, line 1: in the bucket before the mount\n"
SYNCED = b"new.log, line 1: written and fsynced\n"
LATER = b"line 2: written, never fsynced\n" * 64


@pytest.fixture
def env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PowerEnv]:
    with power_env(seaweed, proxy, bucket, tmp_path, monkeypatch) as created:
        yield created


def sync(mountpoint: Path) -> None:
    result = run_cli("sync", mountpoint, timeout=120)
    assert result.returncode == 0, result.stderr


def conflict_copies(objects: dict[str, bytes], key: str) -> list[bytes]:
    return [data for name, data in objects.items() if name.startswith(f"{key}.conflict-")]


@pytest.mark.parametrize(
    ("mode", "old_copies", "new_copies"),
    [
        # Nothing unsynced survives: old.log's staging file is empty (only its creation is on
        # the disk), new.log's holds exactly what was fsynced.
        ("drop", [b""], []),
        # The sizes of unsynced writes survive, not their bytes: zeros where they went.
        ("zeros", [bytes(len(DURABLE + LATER))], [SYNCED + bytes(len(LATER))]),
    ],
)
def test_a_power_cut_never_leaves_less_than_the_durable_content_under_a_name(
    env: PowerEnv,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    old_copies: list[bytes],
    new_copies: list[bytes],
) -> None:
    """old.log is in the bucket; it is appended to, never fsynced, so its staging file (the
    object's copy and the append) is not on the disk, while its journal row is: new.log's
    fsync synced the journal. new.log is written, fsynced, then appended to."""
    env.put("old.log", DURABLE)
    mounted = env.mount_on_disk()
    with mounted:
        with (env.mountpoint / "old.log").open("ab") as log:
            log.write(LATER)
        fd = os.open(env.mountpoint / "new.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, SYNCED)
        os.fsync(fd)
        os.write(fd, LATER)
        env.power_cut(mounted, mode)
        with contextlib.suppress(OSError):  # closing on a dead mount reports ENOTCONN
            os.close(fd)
    with env.after_reboot(monkeypatch):
        sync(env.mountpoint)
        assert (env.mountpoint / "old.log").read_bytes() == DURABLE
        assert (env.mountpoint / "new.log").read_bytes() == SYNCED
    objects = env.objects()
    assert objects["old.log"] == DURABLE  # not replaced by what the disk held
    assert objects["new.log"] == SYNCED  # what fsync made durable, under its name
    assert conflict_copies(objects, "old.log") == old_copies
    assert conflict_copies(objects, "new.log") == new_copies
