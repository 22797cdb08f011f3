"""The power-loss simulator itself (tests/support/lazyfs.py): what the power-loss tests rely on.

Programs on it see their own writes at once; the backing directory ("the disk") holds exactly
what was fsynced, plus what each power-off mode says survives of the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.lazydisk import LazyDisk

pytestmark = pytest.mark.mount

SYNCED = b"fsynced:" * 4
UNSYNCED = b"held" * 8


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[LazyDisk]:
    with LazyDisk(tmp_path / "disk", tmp_path / "lazy") as running:
        yield running


def write_synced_then_more(path: Path) -> None:
    """SYNCED, fsynced; then UNSYNCED appended and the first byte rewritten, not synced."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, SYNCED)
        os.fsync(fd)
        os.write(fd, UNSYNCED)
        os.pwrite(fd, b"X", 0)
        assert os.pread(fd, 100, 0) == b"X" + SYNCED[1:] + UNSYNCED  # seen at once
        assert os.fstat(fd).st_size == len(SYNCED + UNSYNCED)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("mode", "survives"),
    [
        ("drop", SYNCED),
        ("zeros", SYNCED + bytes(len(UNSYNCED))),
        # Half of the 33 unsynced bytes, in order: the append cut at 16 bytes.
        ("torn", SYNCED + UNSYNCED[:16]),
    ],
)
def test_a_power_off_keeps_what_was_fsynced_and_what_the_mode_says(
    disk: LazyDisk, mode: str, survives: bytes
) -> None:
    write_synced_then_more(disk.mountpoint / "file")
    (disk.mountpoint / "never-synced").write_bytes(b"lost")
    (disk.mountpoint / "dir").mkdir()  # the namespace is always durable here
    disk.power_off(mode)
    assert (disk.backing / "file").read_bytes() == survives
    never = {"drop": b"", "zeros": bytes(4), "torn": b"lo"}[mode]
    assert (disk.backing / "never-synced").read_bytes() == never
    assert (disk.backing / "dir").is_dir()
    disk.power_on()
    assert (disk.mountpoint / "file").read_bytes() == survives


def test_a_clean_shutdown_writes_everything(tmp_path: Path) -> None:
    with LazyDisk(tmp_path / "disk", tmp_path / "lazy") as disk:
        write_synced_then_more(disk.mountpoint / "file")
        os.rename(disk.mountpoint / "file", disk.mountpoint / "renamed")
        os.truncate(disk.mountpoint / "renamed", 10)
    assert (tmp_path / "disk" / "renamed").read_bytes() == (b"X" + SYNCED[1:])[:10]
