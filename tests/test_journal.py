"""The write-back journal and the staging helpers, on real files (no store, no trio); one test
runs the journal on the power-loss simulator (tests/support/lazyfs.py).

The full-disk cases mount a tiny tmpfs (root only): as root, permissions cannot fake ENOSPC.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.memstore import md5_etag, multipart_etag
from modelfs.errors import ConfigError, MountError, NoSpace
from modelfs.host.locks import hold_lock
from modelfs.store.etag import same_etag
from modelfs.store.protocol import PendingUpload
from modelfs.write.journal import JOURNAL_NAME, RESERVE_NAME, Journal, JournalRow, Synced
from modelfs.write.staging import (
    S3_MAX_PARTS,
    StagingArea,
    content_etag,
    part_size_for,
    read_at,
    take_over,
    write_at,
)
from support.lazydisk import LazyDisk

MIB = 1 << 20


def row(staging: str, key: str, base: str | None = None) -> JournalRow:
    return JournalRow(staging, key, base, None, 1000.0)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path)
    yield opened
    opened.close()


def reopened_rows(root: Path) -> list[JournalRow]:
    """What the next process would read (a fresh connection)."""
    other = Journal(root)
    try:
        return other.rows()
    finally:
        other.close()


def test_rows_round_trip_through_a_new_connection(tmp_path: Path, journal: Journal) -> None:
    journal.insert(row("s1", "logs/a.log"))
    journal.insert(row("s2", "b.json", "etag-b"))
    journal.set_base("s1", "etag-a2")
    journal.set_upload("s2", PendingUpload("b.json.conflict-1", "upload-7"))
    assert reopened_rows(tmp_path) == [
        JournalRow("s1", "logs/a.log", "etag-a2", None, 1000.0),
        JournalRow(
            "s2", "b.json", "etag-b", PendingUpload("b.json.conflict-1", "upload-7"), 1000.0
        ),
    ]
    journal.set_upload("s2", None)
    journal.delete("s1")
    assert reopened_rows(tmp_path) == [row("s2", "b.json", "etag-b")]


def test_a_key_has_one_row(journal: Journal) -> None:
    journal.insert(row("s1", "a"))
    with pytest.raises(Exception, match="UNIQUE"):
        journal.insert(row("s2", "a"))


def test_move_replaces_the_row_of_the_target_and_queues_the_delete(
    tmp_path: Path, journal: Journal
) -> None:
    journal.insert(row("s1", "a.tmp"))
    journal.insert(row("s2", "a", "old-etag"))
    journal.move(JournalRow("s1", "a", "old-etag", None, 1000.0), delete_key="a.tmp")
    assert reopened_rows(tmp_path) == [JournalRow("s1", "a", "old-etag", None, 1000.0)]
    assert journal.deletes() == ["a.tmp"]
    journal.forget_delete("a.tmp")
    assert journal.deletes() == []


def test_move_inserts_a_row_for_a_clean_file(journal: Journal) -> None:
    journal.move(row("s9", "renamed"))
    assert journal.rows() == [row("s9", "renamed")]


def test_replace_drops_a_row_and_queues_a_delete_together(journal: Journal) -> None:
    journal.insert(row("s1", "new"))
    journal.replace("s1", delete_key="old")
    assert journal.rows() == []
    assert journal.deletes() == ["old"]


def test_a_root_keeps_its_identity(tmp_path: Path) -> None:
    Journal(tmp_path, identity="hub:models").close()
    Journal(tmp_path, identity="hub:models").close()
    with pytest.raises(ConfigError, match="hub:models"):
        Journal(tmp_path, identity="other:bucket")


def test_sync_makes_commits_durable_without_error(tmp_path: Path, journal: Journal) -> None:
    journal.insert(row("s1", "a"))
    journal.sync()  # fsyncs the WAL, the database and their directory
    assert (tmp_path / "journal.sqlite3-wal").exists()


@pytest.mark.mount
def test_synced_commits_survive_a_power_loss_and_later_ones_may_not(tmp_path: Path) -> None:
    """On the power-loss simulator (tests/support/lazyfs.py): what `sync` covered is there
    after the power cut; a commit after it is lost (nothing synced it)."""
    with LazyDisk(tmp_path / "disk", tmp_path / "lazy") as disk:
        journal = Journal(disk.mountpoint)
        journal.insert(row("s1", "a"))
        journal.set_synced("s1", Synced(10, "digest"))
        journal.sync()
        journal.insert(row("s2", "b"))
        disk.power_off("drop")
        journal.close()
        disk.power_on()
        assert reopened_rows(disk.mountpoint) == [
            JournalRow("s1", "a", None, None, 1000.0, synced=Synced(10, "digest"))
        ]


def test_the_synced_state_stays_with_the_staging_file(tmp_path: Path, journal: Journal) -> None:
    journal.insert(row("s1", "a.tmp"))
    journal.set_synced("s1", Synced(42, "d42"))
    journal.move(JournalRow("s1", "a", "etag", None, 1000.0))  # a rename
    journal.set_base("s1", "etag-2")  # an upload landed
    assert reopened_rows(tmp_path) == [
        JournalRow("s1", "a", "etag-2", None, 1000.0, synced=Synced(42, "d42"))
    ]


def test_the_boot_of_the_last_check_is_kept(tmp_path: Path, journal: Journal) -> None:
    assert journal.boot() is None
    journal.set_boot("boot-1")
    journal.set_boot("boot-2")
    other = Journal(tmp_path)
    try:
        assert other.boot() == "boot-2"
    finally:
        other.close()


def test_a_journal_of_an_earlier_version_gets_the_new_columns(tmp_path: Path) -> None:
    """Written before `ours` and the synced state: its rows read as never synced, with no
    boot, so recovery checks them (and sets them aside: nothing says what was durable)."""
    old = sqlite3.connect(tmp_path / JOURNAL_NAME)
    old.executescript(
        "CREATE TABLE dirty (staging TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, base_etag TEXT,"
        " upload_key TEXT, upload_id TEXT, since REAL NOT NULL);"
        "INSERT INTO dirty VALUES ('s1', 'a', 'etag', NULL, NULL, 1000.0);"
    )
    old.close()
    journal = Journal(tmp_path)
    try:
        assert journal.rows() == [row("s1", "a", "etag")]
        assert journal.boot() is None
        journal.set_synced("s1", Synced(1, "d"))
        assert journal.rows()[0].synced == Synced(1, "d")
    finally:
        journal.close()


# -- a full disk ---------------------------------------------------------------------------------


def fill(directory: Path) -> Path:
    """Fill the disk of `directory` to the last byte with one file; returns it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        return ballast
    finally:
        os.close(fd)


def insert_until_full(journal: Journal) -> None:
    """Insert rows until the WAL needs a page it cannot have."""
    for number in range(1000):
        try:
            journal.insert(row(f"n{number}", f"new-{number}"))
        except NoSpace:
            return
    raise AssertionError("the journal never ran out of space")


def test_on_a_full_disk_new_rows_fail_but_upload_bookkeeping_uses_the_reserve(
    tiny_disk: Path,
) -> None:
    journal = Journal(tiny_disk)
    try:
        assert (tiny_disk / RESERVE_NAME).stat().st_size == (1 * MIB) // 8
        journal.insert(row("s1", "a"))
        ballast = fill(tiny_disk)
        insert_until_full(journal)
        assert (tiny_disk / RESERVE_NAME).exists()  # a new dirty file never takes it
        for number in range(20):  # what finishing uploads needs still works
            journal.set_base("s1", f"etag-{number}")
        assert journal.reserve_used
        assert journal.rows()[0].base_etag == "etag-19"
        ballast.unlink()
        journal.restore_reserve()
        assert not journal.reserve_used
    finally:
        journal.close()


def test_a_short_write_on_enospc_keeps_what_fit(tiny_disk: Path) -> None:
    fd = os.open(tiny_disk / "data", os.O_RDWR | os.O_CREAT)
    try:
        chunk = os.urandom(3 * MIB)
        written = write_at(fd, 0, chunk)
        assert 0 < written < len(chunk)
        assert read_at(fd, 0, len(chunk)) == chunk[:written]
        with pytest.raises(NoSpace):
            write_at(fd, written, b"more")
    finally:
        os.close(fd)


# -- the staging area and helpers -----------------------------------------------------------------


def test_the_staging_area_is_locked_while_in_use(tmp_path: Path) -> None:
    area = StagingArea(tmp_path)
    with pytest.raises(MountError, match="in use"):
        StagingArea(tmp_path)
    area.close()
    StagingArea(tmp_path).close()


def test_sweep_removes_files_nobody_keeps(tmp_path: Path) -> None:
    area = StagingArea(tmp_path)
    try:
        kept, fd1 = area.create()
        stray, fd2 = area.create()
        os.close(fd1)
        os.close(fd2)
        assert area.sweep({kept}) == [stray]
        assert sorted(os.listdir(area.dir)) == [kept]
    finally:
        area.close()


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 9000), part=st.integers(1, 3000))
def test_content_etag_is_what_s3_computes(
    tmp_path_factory: pytest.TempPathFactory, size: int, part: int
) -> None:
    data = os.urandom(size)
    path = tmp_path_factory.mktemp("etag") / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        ours = content_etag(fd, size, part)
    finally:
        os.close(fd)
    if size <= part:
        assert ours == md5_etag(data)
    else:
        assert ours == multipart_etag([data[i : i + part] for i in range(0, size, part)])


@given(size=st.integers(0, 1 << 50), part=st.sampled_from([5 * MIB, 8 * MIB, 16 * MIB]))
def test_part_size_stays_within_s3s_part_count(size: int, part: int) -> None:
    chosen = part_size_for(size, part)
    assert chosen >= part
    assert -(-size // chosen) <= S3_MAX_PARTS
    if chosen != part:
        assert chosen % MIB == 0


def test_etags_compare_without_quotes() -> None:
    assert same_etag('"abc"', "abc")
    assert not same_etag("abc", None)
    assert not same_etag("abc", "abd")


def test_a_journal_of_the_old_identity_is_taken_over_by_its_bucket(tmp_path: Path) -> None:
    """Journals used to belong to `REMOTE:BUCKET[/PREFIX]`; now to the cache root's
    `ENDPOINT|BUCKET`, so a mount of another prefix of the bucket may take one over."""
    Journal(tmp_path, identity="hub:models/v23").close()
    Journal(tmp_path, identity="http://s3.lan|models").close()  # same bucket: taken over
    Journal(tmp_path, identity="http://s3.lan|models").close()
    with pytest.raises(ConfigError, match="models"):
        Journal(tmp_path, identity="http://s3.lan|other")
    (tmp_path / "b").mkdir()
    Journal(tmp_path / "b", identity="hub:other/v1").close()  # an old journal of another bucket
    with pytest.raises(ConfigError, match="hub:other/v1"):
        Journal(tmp_path / "b", identity="http://s3.lan|models")


def test_the_old_write_back_root_moves_whole_to_a_mounts_own(tmp_path: Path) -> None:
    old, root = tmp_path / "writeback", tmp_path / "writeback-1234"
    old.mkdir()
    journal = Journal(old, identity="hub:models")
    journal.insert(row("s1", "logs/a.log"))
    journal.close()
    held = hold_lock(old, "write-back root")  # an older modelfs still uses it: left alone
    assert not take_over(old, root)
    os.close(held)
    assert take_over(old, root)
    assert not old.exists()
    moved = Journal(root, identity="http://s3.lan|models")
    assert [r.key for r in moved.rows()] == ["logs/a.log"]
    moved.close()
    assert not take_over(old, root)  # nothing left to take over
