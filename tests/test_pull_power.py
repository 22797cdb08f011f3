"""A pull cut by a power loss: what its record of blocks may vouch for afterwards.

Within one boot the kernel's page cache holds every write a killed pull made, so its record
stands whole (tests/test_pull.py kills one with SIGKILL). A power loss can keep a record and
lose the block it names, whose bytes then read back as zeros; a pull without a manifest has no
sha256 to catch that. The record of an earlier boot stands only up to its last checkpoint mark.
The end-to-end test puts DEST on the power-loss simulator (`support.lazydisk.LazyDisk`, which
holds every write until it is fsynced) and changes $MODELFS_BOOT_ID, which stands for the
kernel's boot id, as a reboot would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from modelfs.host.boot import BOOT_ID_ENV
from modelfs.objects import ObjectId
from modelfs.pull.partfiles import (
    HEADER_SIZE,
    PULL_DIR,
    TAG_SIZE,
    PartFiles,
    boot_tag,
    read_records,
    version_tag,
)
from support import FaultProxy, SeaweedServer, make_config
from support.lazydisk import LazyDisk
from support.mounting import MODELFS, run_cli

MiB = 1 << 20


def put_blocks(parts: PartFiles, path: str, indexes: range) -> None:
    for index in indexes:
        parts.put(ObjectId(path, "etag"), index, bytes([index]) * MiB)


def test_a_record_stands_whole_in_its_boot_and_up_to_its_last_mark_in_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")
    parts = PartFiles(dest, MiB)
    parts.open("model.bin", "etag-1")
    put_blocks(parts, "model.bin", range(4))
    parts.mark_durable()
    put_blocks(parts, "model.bin", range(4, 6))
    parts.close()
    assert PartFiles(dest, MiB).open("model.bin", "etag-1") == set(range(6))  # a process died
    monkeypatch.setenv(BOOT_ID_ENV, "boot-2")
    again = PartFiles(dest, MiB)
    assert again.open("model.bin", "etag-1") == set(range(4))  # blocks 4, 5 were never synced
    put_blocks(again, "model.bin", range(6, 8))
    again.close()
    monkeypatch.setenv(BOOT_ID_ENV, "boot-3")  # the record was rewritten for boot 2, marked
    last = PartFiles(dest, MiB)
    assert last.open("model.bin", "etag-1") == set(range(4))
    last.close()
    part = next((dest / PULL_DIR / "partial").glob("*.part"))
    with part.open("rb") as file:
        for index in range(4):
            assert file.read(MiB) == bytes([index]) * MiB
    other = PartFiles(dest, MiB)
    assert other.open("model.bin", "etag-2") == set()  # another version: none of these
    other.close()
    assert part.stat().st_size == 0


def test_a_record_a_power_loss_filled_with_zeros_vouches_for_nothing() -> None:
    """A file system journaling metadata but not data keeps the size of unsynced appends and
    none of their bytes: zeros, which would read as records of block 0."""
    version = version_tag("etag-1")
    tag = boot_tag() + version
    assert read_records(tag + bytes(64), tag) == ({0}, 0)  # this boot: it was written so
    other = b"another boot 16b" + version
    assert read_records(other + bytes(64), tag) == (set(), 0)
    marked = other + (3).to_bytes(8, "little") + ((1 << 63) | 40).to_bytes(8, "little")
    assert read_records(marked + bytes(16), tag) == ({3}, 40)
    torn = marked + (9).to_bytes(8, "little")[:5]
    assert read_records(torn, tag) == ({3}, 40)
    early = other + ((1 << 63) | 56).to_bytes(8, "little") + (3).to_bytes(8, "little")
    assert read_records(early, tag) == (set(), 0)  # a mark vouches only for what precedes it
    assert read_records(marked, boot_tag() + version_tag("etag-2")) == (set(), 0)


@pytest.mark.mount
def test_a_pull_cut_by_a_power_loss_resumes_with_the_right_bytes(
    seaweed: SeaweedServer,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = os.urandom(24 * MiB)
    seaweed.client().put_object(Bucket=bucket, Key="big/model.bin", Body=data)
    monkeypatch.setenv(BOOT_ID_ENV, "boot-before-the-power-cut")
    with (
        FaultProxy(seaweed.endpoint) as proxy,
        LazyDisk(tmp_path / "disk", tmp_path / "lazy") as disk,
    ):
        config = make_config(tmp_path, proxy.endpoint, name="a")
        dest = disk.mountpoint / "dest"
        proxy.throttle_next(1e6, times=None, match=lambda r: r.range is not None)
        command = [*MODELFS, "--config", str(config), "pull", f"a:{bucket}/big", str(dest)]
        command += ["--transfers", "2", "--part-size", "2M"]
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            vouched = wait_for_a_mark_and_more(dest)
        finally:
            disk.power_off("zeros")  # unsynced appends keep their size, not their bytes
            first.send_signal(signal.SIGKILL)
            first.wait()
        disk.power_on()
        monkeypatch.setenv(BOOT_ID_ENV, "boot-after-the-power-cut")
        proxy.clear_faults()
        proxy.clear_requests()
        second = run_cli("--config", config, "pull", f"a:{bucket}/big", dest, timeout=120)
        assert second.returncode == 0, second.stderr
        assert (dest / "model.bin").read_bytes() == data
        fetched = blocks_fetched(proxy)
    assert not fetched & vouched, sorted(fetched & vouched)  # what a mark vouched for stood
    assert fetched | vouched == set(range(24))


def wait_for_a_mark_and_more(dest: Path) -> set[int]:
    """Wait until a checkpoint has marked blocks durable and more blocks came after it; the
    blocks the mark vouches for."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in (dest / PULL_DIR / "partial").glob("*.blocks"):
            data = record.read_bytes()
            next_boot = b"\xff" * TAG_SIZE + data[TAG_SIZE:HEADER_SIZE]  # as the next boot reads it
            vouched, marked = read_records(data, next_boot)
            if marked and len(data) >= marked + 3 * 8:
                return vouched
        time.sleep(0.1)
    raise AssertionError("no checkpoint marked the pull's record within 60 s")


def blocks_fetched(proxy: FaultProxy) -> set[int]:
    fetched: set[int] = set()
    for request in proxy.requests:
        if request.method != "GET" or request.range is None:
            continue
        first, last = (int(x) for x in request.range.removeprefix("bytes=").split("-"))
        fetched |= set(range(first // MiB, last // MiB + 1))
    return fetched
