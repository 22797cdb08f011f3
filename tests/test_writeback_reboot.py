"""Recovery after a reboot (`write.recovery`, `write.durable`): MemoryStore, autojump clock.

A "power loss" here is a crash (the engine closed without draining, as in test_writeback.py),
then the staging file set to what a power loss can leave on the disk, then a new engine in
another boot ($MODELFS_BOOT_ID). The real thing, with a file system that drops unsynced writes
and real mounts, is test_writeback_power.py.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.memstore import MemoryStore
from modelfs.errors import StoreUnavailable
from modelfs.host.boot import BOOT_ID_ENV
from modelfs.objects import ObjectInfo
from modelfs.write.durable import CHUNK, Digests, digests_of
from modelfs.write.engine import WriteBack
from modelfs.write.journal import Journal
from modelfs.write.staging import STAGING_DIR
from support.engines import running
from test_writeback import (
    InlineRunner,
    eventually,
    journal_rows,
    make_engine,
    make_store,
    staging_files,
    stored,
)

SYNCED = b"fsynced line\n" * 10
LATER = b"appended, never fsynced\n"
CONFLICT = "log.conflict-20231114T221320Z"  # the conflict name at test_writeback.WALL


@pytest.fixture(autouse=True)
def first_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BOOT_ID_ENV, "boot-1")


def reboot(monkeypatch: pytest.MonkeyPatch, boot: str = "boot-2") -> None:
    monkeypatch.setenv(BOOT_ID_ENV, boot)


def the_staging_file(root: Path) -> Path:
    (name,) = staging_files(root)
    return root / STAGING_DIR / name


async def fsynced_then_appended(wb: WriteBack, base: ObjectInfo | None = None) -> None:
    """log: SYNCED written and fsynced, then LATER appended without fsync."""
    handle = await wb.open("log", base, truncate=True)
    wb.write(handle, 0, SYNCED)
    await wb.fsync(handle)
    wb.write(handle, len(SYNCED), LATER)
    wb.release(handle)


def conflict_copies(store: MemoryStore, key: str) -> list[bytes]:
    return [store.data_of(name) for name in stored(store) if name.startswith(f"{key}.conflict-")]


@pytest.mark.parametrize(
    ("left_on_disk", "under_name", "copied_aside"),
    [
        # exactly what was fsynced: uploaded as usual
        (SYNCED, SYNCED, []),
        # the append's size without its bytes (metadata journaled, data not)
        (SYNCED + bytes(len(LATER)), SYNCED, [SYNCED + bytes(len(LATER))]),
        # part of the append
        (SYNCED + LATER[:5], SYNCED, [SYNCED + LATER[:5]]),
        # shorter than what was fsynced, or other bytes below its end: nothing to trust
        (SYNCED[:-1], None, [SYNCED[:-1]]),
        (b"X" + SYNCED[1:], None, [b"X" + SYNCED[1:]]),
    ],
)
async def test_after_a_reboot_only_what_was_fsynced_lands_under_the_name(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    left_on_disk: bytes,
    under_name: bytes | None,
    copied_aside: list[bytes],
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=3600.0)) as wb:
        await fsynced_then_appended(wb)
    the_staging_file(tmp_path).write_bytes(left_on_disk)
    reboot(monkeypatch)
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.drain()
    assert (store.data_of("log") if "log" in stored(store) else None) == under_name
    assert conflict_copies(store, "log") == copied_aside
    assert staging_files(tmp_path) == []
    assert journal_rows(tmp_path) == []


async def test_after_a_reboot_a_file_never_fsynced_never_replaces_its_object(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object is copied into the staging file and appended to; the row is durable (another
    file's fsync), the staging file's bytes are not: the power loss leaves it empty."""
    store = make_store()
    base = store.put_bytes("log", b"durable in the bucket\n")
    async with running(make_engine(store, tmp_path, upload_delay=3600.0)) as wb:
        handle = await wb.open("log", base, append=True)
        wb.write(handle, 0, LATER)
        wb.release(handle)
        other = await wb.open("other", None)
        wb.write(other, 0, b"x")
        await wb.fsync(other)
        wb.release(other)
    (log_row,) = [row for row in journal_rows(tmp_path) if row.key == "log"]
    os.truncate(tmp_path / STAGING_DIR / log_row.staging, 0)
    reboot(monkeypatch)
    async with running(make_engine(store, tmp_path)) as wb:
        assert sorted(wb.recovered) == [CONFLICT, "other"]
        await wb.drain()
    assert store.data_of("log") == b"durable in the bucket\n"
    assert conflict_copies(store, "log") == [b""]
    assert store.data_of("other") == b"x"


async def test_in_the_same_boot_an_unsynced_file_is_trusted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Only modelfs died: the page cache still holds every write."""
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=3600.0)) as wb:
        await fsynced_then_appended(wb)
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.drain()
    assert store.data_of("log") == SYNCED + LATER
    assert conflict_copies(store, "log") == []


async def test_the_verdict_of_a_reboot_outlives_a_crash_before_the_upload(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery moves a torn file to its conflict name in the journal: a crash in the new boot
    (trusted: same boot) still uploads it there, and another reboot finds it intact."""
    store = make_store()
    base = store.put_bytes("log", b"v0")
    async with running(make_engine(store, tmp_path, upload_delay=3600.0)) as wb:
        await fsynced_then_appended(wb, base)
    the_staging_file(tmp_path).write_bytes(b"X" + SYNCED[1:])
    reboot(monkeypatch)
    make_engine(store, tmp_path).close()  # recovered, then died before any upload
    (row,) = journal_rows(tmp_path)
    assert row.key == CONFLICT
    assert row.base_etag is None
    reboot(monkeypatch, "boot-3")
    async with running(make_engine(store, tmp_path)) as wb:
        assert wb.recovered == (CONFLICT,)
        await wb.drain()
    assert store.data_of("log") == b"v0"
    assert conflict_copies(store, "log") == [b"X" + SYNCED[1:]]


async def test_a_file_whose_uploads_failed_until_the_power_cut_is_trusted_after_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never fsynced by the application, but modelfs made it durable before each attempt."""
    store = make_store()
    store.fail_next("head", StoreUnavailable("the store is down"), times=2)
    async with running(make_engine(store, tmp_path, upload_delay=1.0)) as wb:
        handle = await wb.open("log", None)
        wb.write(handle, 0, SYNCED)
        wb.release(handle)
        await eventually(lambda: wb.statistics().retries >= 2)
    (row,) = journal_rows(tmp_path)
    assert row.synced is not None
    assert row.synced.size == len(SYNCED)
    reboot(monkeypatch)
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.drain()
    assert store.data_of("log") == SYNCED
    assert conflict_copies(store, "log") == []


async def test_an_upload_that_landed_before_a_power_cut_is_never_rolled_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SYNCED is fsynced, LATER appended; the PUT of both lands but the crash loses its answer,
    and the power cut leaves what was synced. modelfs made the file durable before sending it,
    so recovery finds all of it synced, not the older SYNCED it would put over the bucket's
    newer object (which the journal says is ours)."""
    store, runner = make_store(), InlineRunner()
    gate = runner.gate("put_bytes")
    async with running(make_engine(store, tmp_path, runner, upload_delay=0.0)) as wb:
        await fsynced_then_appended(wb)
        await gate.reached.wait()
        gate.opened.set()  # the PUT is sent as the engine dies: it lands, unrecorded
    assert store.data_of("log") == SYNCED + LATER
    (row,) = journal_rows(tmp_path)
    assert row.synced is not None
    os.truncate(the_staging_file(tmp_path), row.synced.size)  # the disk: only what was synced
    reboot(monkeypatch)
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.drain()
    assert store.data_of("log") == SYNCED + LATER
    assert conflict_copies(store, "log") == []


async def test_a_reboot_with_nothing_pending_only_records_the_boot(tmp_path: Path) -> None:
    make_engine(make_store(), tmp_path).close()
    journal = Journal(tmp_path)
    try:
        assert journal.boot() == "boot-1"
    finally:
        journal.close()


# -- digests ------------------------------------------------------------------------------------

Change = tuple[str, int, int]  # ("write", offset, length), ("truncate", size, 0), ("update", 0, 0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 3 * CHUNK), st.integers(1, CHUNK)),
            st.tuples(st.just("truncate"), st.integers(0, 3 * CHUNK), st.just(0)),
            st.tuples(st.just("update"), st.just(0), st.just(0)),
        ),
        max_size=12,
    )
)
def test_incremental_digests_equal_fresh_ones(
    tmp_path_factory: pytest.TempPathFactory, changes: list[Change]
) -> None:
    """Whatever changed since the last update (reported as the file's writers do), an update
    gives the digest of the whole file, as hashing it afresh does."""
    path = tmp_path_factory.mktemp("digests") / "file"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    noise = random.Random(len(changes))
    digests = Digests()
    try:
        for kind, at, length in [*changes, ("update", 0, 0)]:
            size = os.fstat(fd).st_size
            if kind == "write":
                os.pwrite(fd, noise.randbytes(length), at)
                digests.changed(at)
            elif kind == "truncate":
                os.ftruncate(fd, at)
                digests.changed(min(at, size))
            else:
                digest = digests.update(fd, digests.begin(), size)
                assert digest == digests_of(fd, size)[1]
    finally:
        os.close(fd)
