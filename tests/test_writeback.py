"""The write-back engine against `MemoryStore`, with trio's autojump clock: no test sleeps.

Covers: staging and reading back, upload timing (delay after close, flush interval while open),
single and multipart uploads, torn snapshots, conflicts, retries, crash recovery (a "crash" is
closing the engine without draining and starting a new one on the same root: exactly what the
next mount after kill -9 sees; real SIGKILLs are in test_writeback_s3.py), unlink and rename
racing uploads, drain and statistics, and a full cache disk (a 1 MiB tmpfs, root only).

Store calls run inline on the trio thread (`InlineRunner`), so the autojump clock only moves
when everything waits on time: due times and backoffs are asserted exactly.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes.memstore import MemoryStore, md5_etag, multipart_etag
from modelfs.cache.disk import DiskBlockCache
from modelfs.errors import (
    AccessDenied,
    ConfigError,
    MountError,
    NoSpace,
    NotFound,
    StoreUnavailable,
    UploadFailed,
)
from modelfs.memory import MemoryBudget
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.store.protocol import PendingUpload
from modelfs.write import queue as queue_module
from modelfs.write.deletes import backoff
from modelfs.write.engine import WriteBack, WriteBackStatistics, WriteHandle
from modelfs.write.journal import Journal, JournalRow
from modelfs.write.staging import STAGING_DIR
from support.engines import running

T = TypeVar("T")

PART = 1024  # tiny parts so multipart paths run on kilobytes
WALL = 1_700_000_000.0  # 2023-11-14T22:13:20Z, for conflict names


class Recorder:
    """A WriteBackListener that remembers what it heard."""

    def __init__(self) -> None:
        self.uploads: list[tuple[str, ObjectInfo]] = []
        self.conflicts: list[tuple[str, str, ObjectInfo]] = []

    def uploaded(self, key: str, info: ObjectInfo) -> None:
        self.uploads.append((key, info))

    def conflicted(self, key: str, conflict_key: str, remote: ObjectInfo) -> None:
        self.conflicts.append((key, conflict_key, remote))


def make_store() -> MemoryStore:
    return MemoryStore(min_part_size=1, clock=lambda: WALL)


class Gate:
    """Holds calls of one store operation until the test opens it."""

    def __init__(self) -> None:
        self.reached = trio.Event()
        self.opened = trio.Event()

    async def opened_after_reaching(self) -> None:
        self.reached.set()
        await self.opened.wait()


class InlineRunner:
    """A `ThreadRunner` that calls inline on the trio thread, so the autojump clock never
    advances while a "thread" works: timing in these tests is exact. `gates[op]` holds the
    calls of store method `op`."""

    def __init__(self, latency: float = 0.0) -> None:
        self.gates: dict[str, Gate] = {}
        self.latency = latency  # mock seconds each call takes: a slow network

    async def __call__(
        self, fn: Callable[..., T], *args: object, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        async with limiter if limiter is not None else nullcontext():
            await trio.lowlevel.checkpoint_if_cancelled()
            # Like a worker thread, a call once started cannot be cancelled: it completes.
            with trio.CancelScope(shield=True):
                await trio.sleep(self.latency)
                gate = self.gates.get(getattr(fn, "__name__", ""))
                if gate is not None:
                    await gate.opened_after_reaching()
                result = fn(*args)
        await trio.lowlevel.checkpoint()  # a cancelled caller notices here, as after a thread
        return result

    def gate(self, op: str) -> Gate:
        gate = self.gates[op] = Gate()
        return gate


def make_engine(
    store: MemoryStore, root: Path, runner: InlineRunner | None = None, **options: object
) -> WriteBack:
    settings: dict[str, object] = {
        "part_size": PART,
        "wall_clock": lambda: WALL,
        "run_sync": runner or InlineRunner(),
    }
    settings.update(options)
    return WriteBack(store, root, **settings)  # type: ignore[arg-type]


async def eventually(condition: Callable[[], bool], limit: float = 600.0) -> None:
    """Let (mock) time pass in small steps until `condition` holds."""
    deadline = trio.current_time() + limit
    while not condition():
        assert trio.current_time() < deadline, "condition never became true"
        await trio.sleep(0.01)


async def write_file(
    engine: WriteBack, key: str, data: bytes, base: ObjectInfo | None = None
) -> None:
    handle = await engine.open(key, base, truncate=True)
    assert engine.write(handle, 0, data) == len(data)
    engine.release(handle)


def stored(store: MemoryStore) -> list[str]:
    return store.keys()


def fill_until_full(engine: WriteBack, handle: WriteHandle, chunk: bytes) -> bytes:
    """Append `chunk` until the disk is full (NoSpace); returns what was written."""
    written = b""
    for _ in range(1000):
        try:
            written += chunk[: engine.write(handle, len(written), chunk)]
        except NoSpace:
            return written
    raise AssertionError("the disk never filled up")


def staging_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / STAGING_DIR))


def journal_rows(root: Path) -> list[JournalRow]:
    journal = Journal(root)
    try:
        return journal.rows()
    finally:
        journal.close()


class Outage:
    """A `MemoryStore.delay` hook: while `error` is set, calls of `op` raise it."""

    def __init__(self, op: str, error: Exception) -> None:
        self.op = op
        self.error: Exception | None = error
        self.calls = 0

    def __call__(self, op: str) -> None:
        if op == self.op:
            self.calls += 1
            if self.error is not None:
                raise self.error


# -- staging, reading back, timing ---------------------------------------------------------------


async def test_new_file_is_uploaded_after_the_delay_and_then_forgotten(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store, heard = make_store(), Recorder()
    async with running(make_engine(store, tmp_path, listener=heard, upload_delay=5.0)) as wb:
        handle = await wb.open("logs/a.txt", None)
        wb.write(handle, 0, b"hello ")
        wb.write(handle, 6, b"world")
        assert wb.read("logs/a.txt", 0, 100) == b"hello world"
        staged = wb.staged("logs/a.txt")
        assert staged is not None
        assert staged.size == 11
        assert staged.dirty
        released = trio.current_time()
        wb.release(handle)
        await trio.sleep(4.9)
        assert store.ops["put_bytes"] == 0
        await eventually(lambda: wb.staged("logs/a.txt") is None)
        assert trio.current_time() - released == pytest.approx(5.0, abs=0.1)
        assert store.data_of("logs/a.txt") == b"hello world"
        assert store.ops["put_bytes"] == 1
        assert [key for key, _ in heard.uploads] == ["logs/a.txt"]
        assert heard.uploads[0][1].etag == md5_etag(b"hello world")
        assert staging_files(tmp_path) == []
        assert journal_rows(tmp_path) == []


async def test_empty_new_file_lands_as_an_empty_object(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path)) as wb:
        wb.release(await wb.open("touched", None))
        await wb.drain()
        assert store.data_of("touched") == b""


async def test_writing_into_an_existing_object_fetches_it_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    original = bytes(range(256)) * 20
    base = store.put_bytes("data.bin", original)
    async with running(make_engine(store, tmp_path)) as wb:
        handle = await wb.open("data.bin", base)
        assert store.ops["iter_range"] == 1
        assert wb.read(handle, 0, len(original)) == original
        wb.write(handle, 1000, b"XYZ")
        wb.release(handle)
        await wb.drain()
    expected = original[:1000] + b"XYZ" + original[1003:]
    assert store.data_of("data.bin") == expected


async def test_o_trunc_does_not_fetch(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("prompts.json", b"old content, long")
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "prompts.json", b"{}", base)
        await wb.drain()
    assert store.ops["iter_range"] == 0
    assert store.data_of("prompts.json") == b"{}"


async def test_append_handles_write_at_the_end(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("logs/webui.log", b"day 1\n")
    async with running(make_engine(store, tmp_path)) as wb:
        first = await wb.open("logs/webui.log", base, append=True)
        second = await wb.open("logs/webui.log", base, append=True)
        wb.write(first, 0, b"day 2\n")  # the kernel's offset is ignored for O_APPEND
        wb.write(second, 3, b"day 3\n")
        wb.release(first)
        wb.release(second)
        await wb.drain()
    assert store.ops["iter_range"] == 1  # the second open shared the staged copy
    assert store.data_of("logs/webui.log") == b"day 1\nday 2\nday 3\n"


async def test_truncate_without_a_handle_stages_and_shrinks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("a", b"0123456789")
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.truncate("a", 4, base)
        staged = wb.staged("a")
        assert staged is not None
        assert staged.size == 4
        await wb.truncate("a", 6)  # grows with zeros
        assert wb.read("a", 0, 100) == b"0123\0\0"
        await wb.drain()
    assert store.data_of("a") == b"0123\0\0"


async def test_opening_for_write_without_writing_uploads_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("model.pt", b"weights")
    store.ops.clear()
    async with running(make_engine(store, tmp_path)) as wb:
        wb.release(await wb.open("model.pt", base))
        assert wb.staged("model.pt") is None
        await trio.sleep(60)
    assert store.ops["put_bytes"] == 0
    assert staging_files(tmp_path) == []


async def test_a_stale_base_is_refreshed_before_fetching(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    stale = store.put_bytes("a", b"version 1")
    store.replace_behind_back("a", b"version 2")
    async with running(make_engine(store, tmp_path)) as wb:
        handle = await wb.open("a", stale, append=True)
        wb.write(handle, 0, b"+")
        wb.release(handle)
        await wb.drain()
    assert store.data_of("a") == b"version 2+"  # no conflict: we built on the fresh version


async def test_multipart_upload_for_large_files(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    data = os.urandom(5 * PART + 17)
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "audio/out.wav", data)
        await wb.drain()
    assert store.data_of("audio/out.wav") == data
    assert store.head("audio/out.wav").etag == multipart_etag(
        [data[i : i + PART] for i in range(0, len(data), PART)]
    )
    assert store.ops["create_multipart"] == 1
    assert store.ops["upload_part"] == 6
    assert store.list_multipart("") == []
    assert journal_rows(tmp_path) == []


async def test_an_open_file_is_uploaded_every_flush_interval_while_it_changes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, flush_interval=30.0)) as wb:
        log = await wb.open("logs/webui.log", None, append=True)
        snapshots: list[bytes] = []
        for line in range(100):  # one line a second for 100 s, never closed
            wb.write(log, 0, b"line %03d\n" % line)
            await trio.sleep(1.0)
            if "logs/webui.log" in stored(store):
                data = store.data_of("logs/webui.log")
                if not snapshots or snapshots[-1] != data:
                    snapshots.append(data)
        assert len(snapshots) == 3  # at ~30 s, ~60 s and ~90 s
        for data in snapshots:  # every snapshot is a whole prefix of the log
            assert data.endswith(b"\n")
            assert wb.read(log, 0, len(data)) == data
        await trio.sleep(200)  # not changing any more: no more uploads
        puts = store.ops["put_bytes"]
        await trio.sleep(200)
        assert store.ops["put_bytes"] == puts
        wb.release(log)
        await wb.drain()
        assert store.data_of("logs/webui.log") == b"".join(b"line %03d\n" % n for n in range(100))


async def test_reopening_again_and_again_does_not_postpone_uploads_forever(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=5.0, flush_interval=30.0)) as wb:
        for second in range(40):
            handle = await wb.open("counter", None, truncate=True)
            wb.write(handle, 0, b"%d" % second)
            wb.release(handle)
            await trio.sleep(1.0)
            if second == 33:
                assert "counter" in stored(store)


# -- snapshots that change while uploading ------------------------------------------------------


async def test_a_change_while_completing_is_uploaded_next(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    runner = InlineRunner()
    gate = runner.gate("complete_multipart")
    first = b"a" * (3 * PART)
    async with running(make_engine(store, tmp_path, runner, upload_delay=1.0)) as wb:
        handle = await wb.open("f", None)
        wb.write(handle, 0, first)
        wb.release(handle)
        await gate.reached.wait()  # parts sent and checked, completion in flight
        handle = await wb.open("f", None)
        wb.write(handle, PART, b"b" * PART)
        wb.release(handle)
        gate.opened.set()
        await wb.drain()
    assert store.data_of("f") == b"a" * PART + b"b" * PART + b"a" * PART
    assert store.list_multipart("") == []


async def test_torn_snapshot_is_never_committed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    runner = InlineRunner()
    gate = runner.gate("upload_part")
    async with running(make_engine(store, tmp_path, runner, upload_delay=1.0)) as wb:
        handle = await wb.open("f", None)
        wb.write(handle, 0, b"a" * (3 * PART))
        wb.release(handle)
        await gate.reached.wait()  # the first part is being sent
        handle = await wb.open("f", None)
        wb.write(handle, 2 * PART, b"b" * PART)  # below the snapshot's size: tears it
        wb.release(handle)
        gate.opened.set()
        await wb.drain()
        completed = store.ops["complete_multipart"]
    assert completed == 1  # the torn attempt was aborted, not completed
    assert store.ops["abort_multipart"] >= 1
    assert store.data_of("f") == b"a" * (2 * PART) + b"b" * PART
    assert store.list_multipart("") == []


async def test_a_change_during_an_upload_stays_journaled_across_a_crash(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    runner = InlineRunner()
    gate = runner.gate("put_bytes")
    async with running(make_engine(store, tmp_path, runner, upload_delay=60.0)) as wb:
        await write_file(wb, "a", b"version 1")
        await gate.reached.wait()  # version 1 is being uploaded
        await write_file(wb, "a", b"version 2")
        gate.opened.set()
        await eventually(lambda: "a" in stored(store))
        assert store.data_of("a") == b"version 1"
    # modelfs dies before version 2's upload is due
    async with running(make_engine(store, tmp_path)) as wb:
        assert wb.recovered == ("a",)
        await wb.drain()
    assert store.data_of("a") == b"version 2"


async def test_appends_during_an_upload_do_not_tear_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    runner = InlineRunner()
    gate = runner.gate("upload_part")
    async with running(make_engine(store, tmp_path, runner, flush_interval=10.0)) as wb:
        log = await wb.open("log", None, append=True)
        wb.write(log, 0, b"x" * (3 * PART))
        await gate.reached.wait()
        wb.write(log, 0, b"y" * 10)  # past the snapshot: the upload stays valid
        gate.opened.set()
        await eventually(lambda: "log" in stored(store))
        assert store.data_of("log") == b"x" * (3 * PART)
        assert store.ops["abort_multipart"] == 0
        wb.release(log)
        await wb.drain()
    assert store.data_of("log") == b"x" * (3 * PART) + b"y" * 10


# -- conflicts ----------------------------------------------------------------------------------


async def test_conflict_keeps_the_remote_version_and_uploads_ours_aside(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store, heard = make_store(), Recorder()
    base = store.put_bytes("prompts.json", b'{"v": 1}')
    async with running(make_engine(store, tmp_path, listener=heard)) as wb:
        await write_file(wb, "prompts.json", b'{"v": "ours"}', base)
        theirs = store.replace_behind_back("prompts.json", b'{"v": "theirs"}')
        await wb.drain()
        assert wb.staged("prompts.json") is None
    conflict_key = "prompts.json.conflict-20231114T221320Z"
    assert store.data_of("prompts.json") == b'{"v": "theirs"}'
    assert store.data_of(conflict_key) == b'{"v": "ours"}'
    assert heard.conflicts == [("prompts.json", conflict_key, theirs)]
    assert "conflict" in caplog.text
    assert conflict_key in caplog.text
    assert journal_rows(tmp_path) == []


async def test_a_new_file_conflicts_with_one_created_meanwhile(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "out.wav", b"ours")
        store.replace_behind_back("out.wav", b"theirs")
        store.replace_behind_back("out.wav.conflict-20231114T221320Z", b"an older conflict")
        await wb.drain()
        assert wb.statistics().conflicts == 1
    assert store.data_of("out.wav") == b"theirs"
    assert store.data_of("out.wav.conflict-20231114T221320Z-2") == b"ours"


async def test_an_open_log_keeps_writing_to_its_conflict_copy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("log", b"1\n")
    async with running(make_engine(store, tmp_path)) as wb:
        log = await wb.open("log", base, append=True)
        wb.write(log, 0, b"2\n")
        store.replace_behind_back("log", b"rotated\n")
        await wb.drain()
        assert log.key == "log.conflict-20231114T221320Z"
        wb.write(log, 0, b"3\n")
        wb.release(log)
        await wb.drain()
    assert store.data_of("log") == b"rotated\n"
    assert store.data_of("log.conflict-20231114T221320Z") == b"1\n2\n3\n"


async def test_deleted_remotely_is_not_a_conflict(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("a", b"old")
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "a", b"new", base)
        store.remove_behind_back("a")
        await wb.drain()
    assert store.keys() == ["a"]
    assert store.data_of("a") == b"new"


class ChangeBefore:
    """A `MemoryStore.delay` hook: another client writes `key` just before the first `op`,
    i.e. after the upload's check (HEAD) and before its write lands."""

    def __init__(self, store: MemoryStore, op: str, key: str, data: bytes) -> None:
        self.store, self.op, self.key, self.data = store, op, key, data
        self.changed: ObjectInfo | None = None

    def __call__(self, op: str) -> None:
        if op == self.op and self.changed is None:
            self.changed = self.store.replace_behind_back(self.key, self.data)


@pytest.mark.parametrize(
    ("size", "op"), [(10, "put_bytes"), (4 * PART, "complete_multipart")], ids=["put", "multipart"]
)
async def test_a_change_between_the_check_and_the_write_is_not_overwritten(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    size: int,
    op: str,
) -> None:
    caplog.set_level(logging.INFO, logger="modelfs.write.queue")
    store, heard = make_store(), Recorder()
    base = store.put_bytes("out.json", b"v1")
    ours = os.urandom(size)
    store.delay = change = ChangeBefore(store, op, "out.json", b"theirs")
    async with running(make_engine(store, tmp_path, listener=heard, upload_delay=0.0)) as wb:
        await write_file(wb, "out.json", ours, base)
        await wb.drain()
    conflict_key = "out.json.conflict-20231114T221320Z"
    assert store.data_of("out.json") == b"theirs"
    assert store.data_of(conflict_key) == ours
    assert heard.conflicts == [("out.json", conflict_key, change.changed)]
    assert "out.json changed in the bucket during its upload" in caplog.text
    assert store.list_multipart("") == []  # the refused completion was aborted
    assert journal_rows(tmp_path) == []


async def test_a_new_file_created_meanwhile_in_the_bucket_is_not_overwritten(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    store.delay = ChangeBefore(store, "put_bytes", "out.wav", b"theirs")
    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "out.wav", b"ours")
        await wb.drain()
    assert store.data_of("out.wav") == b"theirs"
    assert store.data_of("out.wav.conflict-20231114T221320Z") == b"ours"


async def test_without_conditional_writes_such_a_change_is_overwritten(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The limit on a store that refuses conditional writes (and the control for the tests
    above: the same race, unchecked, loses the other writer's version)."""
    store = make_store()
    store.conditional_writes = False
    base = store.put_bytes("out.json", b"v1")
    store.delay = ChangeBefore(store, "put_bytes", "out.json", b"theirs")
    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "out.json", b"ours", base)
        await wb.drain()
    assert store.keys() == ["out.json"]
    assert store.data_of("out.json") == b"ours"


# -- failures and retries -----------------------------------------------------------------------


def test_backoff_doubles_up_to_a_minute_with_jitter() -> None:
    assert [backoff(n, jitter=lambda: 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff(n, jitter=lambda: 0.0) for n in range(1, 9)] == [
        0.5, 1, 2, 4, 8, 16, 30, 30,
    ]  # fmt: skip
    spread = {backoff(3) for _ in range(100)}
    assert len(spread) > 50  # two files failing together do not retry together
    assert all(2.0 <= delay <= 4.0 for delay in spread)


async def test_unavailable_store_is_retried_with_backoff(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_module, "backoff", functools.partial(backoff, jitter=lambda: 1.0))
    store = make_store()
    store.fail_next("put_bytes", StoreUnavailable("503 SlowDown"), times=3)
    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "a", b"data")
        start = trio.current_time()
        await eventually(lambda: wb.statistics().retries == 3)
        assert "503 SlowDown" in (wb.statistics().last_error or "")
        await eventually(lambda: "a" in stored(store))
        took = trio.current_time() - start
        stats = wb.statistics()
    assert store.data_of("a") == b"data"
    assert store.ops["put_bytes"] == 4
    assert took == pytest.approx(1.0 + 2.0 + 4.0, abs=0.05)  # backoff 1 s, 2 s, 4 s
    assert stats.last_error is None
    assert stats.files == 0


async def test_a_permanent_error_is_final_and_never_drops_the_data(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """403: retrying cannot help until someone changes the policy. One attempt, then the file
    waits, staged, with the error in the statistics; a drain (`modelfs sync`) tries it once
    more and says why it failed, instead of waiting forever."""
    store = make_store()
    store.delay = denied = Outage("put_bytes", AccessDenied("AccessDenied: PutObject"))
    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "a", b"data")
        await trio.sleep(3600)
        stats = wb.statistics()
        assert denied.calls == 1  # not ~65 times an hour
        assert stats.files == 1
        assert stats.failed == 1
        assert stats.failures == ("a: AccessDenied: PutObject",)
        assert wb.staged("a") is not None
        assert [row.key for row in journal_rows(tmp_path)] == ["a"]
        with trio.fail_after(60), pytest.raises(UploadFailed, match="a: AccessDenied"):
            await wb.drain()  # one more try, then the verdict
        assert denied.calls == 2
        denied.error = None  # the policy is fixed
        await wb.drain()
        assert wb.statistics().failures == ()
    assert store.data_of("a") == b"data"


async def test_a_drain_waits_for_transient_failures_but_not_for_permanent_ones(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    store.fail_next("put_bytes", StoreUnavailable("503 SlowDown"), times=2)
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        await write_file(wb, "slow", b"1")
        await wb.drain()  # waits out the 503s
        assert store.data_of("slow") == b"1"
        store.delay = Outage("put_bytes", AccessDenied("AccessDenied"))
        await write_file(wb, "denied", b"2")
        await write_file(wb, "also-denied", b"3")
        with pytest.raises(UploadFailed, match=r"2 written file\(s\) or delete\(s\)"):
            await wb.drain()
        assert sorted(wb.statistics().failures) == [
            "also-denied: AccessDenied",
            "denied: AccessDenied",
        ]


async def test_a_delete_denied_for_good_does_not_hold_a_drain_forever(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "old", b"x")
        await wb.drain()
        store.delay = denied = Outage("delete", AccessDenied("AccessDenied: DeleteObject"))
        await wb.rename("old", "new")
        with trio.fail_after(600), pytest.raises(UploadFailed, match="delete old"):
            await wb.drain()
        calls = denied.calls
        await trio.sleep(3600)
        assert denied.calls == calls  # not retried on its own
        denied.error = None
        await wb.drain()
    assert store.keys() == ["new"]


async def test_retry_failed_tries_what_failed_for_good_once_more_without_a_drain(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """New credentials (the daemon's store watch calls `retry_failed`): the uploads and the
    deletes refused for good go out again on their own, once; what fails again stays held."""
    store = make_store()
    expired = AccessDenied("ExpiredToken")
    denied_put, denied_delete = Outage("put_bytes", expired), Outage("delete", expired)

    def refuse(op: str) -> None:
        denied_put(op)
        denied_delete(op)

    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "old", b"x")
        await wb.drain()
        store.delay = refuse
        await write_file(wb, "a", b"data")
        await wb.rename("old", "new")
        await trio.sleep(3600)
        assert (denied_put.calls, denied_delete.calls) == (1, 1)
        assert sorted(wb.statistics().failures) == ["a: ExpiredToken", "delete old: ExpiredToken"]
        wb.retry_failed()  # the keys are still refused: one more try each, then held again
        await trio.sleep(3600)
        assert (denied_put.calls, denied_delete.calls) == (2, 2)
        assert len(wb.statistics().failures) == 2
        denied_put.error = denied_delete.error = None
        wb.retry_failed()  # refreshed keys
        await trio.sleep(60)
        assert wb.statistics().failures == ()
    assert store.data_of("a") == b"data"
    assert store.keys() == ["a", "new"]


async def test_a_failed_multipart_is_aborted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    store.fail_next("upload_part", StoreUnavailable("connection reset"), times=1)
    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "big", b"z" * (4 * PART))
        await wb.drain()
    assert store.data_of("big") == b"z" * (4 * PART)
    assert store.ops["abort_multipart"] == 1
    assert store.list_multipart("") == []


# -- memory -------------------------------------------------------------------------------------


async def test_upload_bodies_count_against_the_memory_budget(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store, budget = make_store(), MemoryBudget(2 * PART)
    data = os.urandom(8 * PART)
    runner = InlineRunner(latency=1.0)  # each call takes a (mock) second: parts overlap
    engine = make_engine(store, tmp_path, runner, upload_delay=0.0, budget=budget)
    async with running(engine) as wb:
        await write_file(wb, "big", data)
        await wb.drain()
    assert store.data_of("big") == data
    stats = budget.statistics()
    assert stats.peak == 2 * PART  # 4 part slots, room for 2 parts: the budget was the bound
    assert stats.waits >= 1
    assert stats.in_use == 0


async def test_uploads_wait_while_reads_hold_the_whole_budget(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store, budget = make_store(), MemoryBudget(4 * PART)
    assert budget.try_acquire(4 * PART)  # blocks of a cold read, say
    async with running(make_engine(store, tmp_path, upload_delay=0.0, budget=budget)) as wb:
        await write_file(wb, "out.wav", b"x" * PART)
        await trio.sleep(30)
        assert store.keys() == []
        budget.release(4 * PART)
        await wb.drain()
    assert store.data_of("out.wav") == b"x" * PART
    assert budget.statistics().in_use == 0


# -- crash recovery -----------------------------------------------------------------------------


async def test_pending_files_survive_a_crash_and_are_uploaded_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        await write_file(wb, "logs/a.log", b"pending a")
        handle = await wb.open("b.json", None)  # still open when modelfs dies
        wb.write(handle, 0, b"pending b")
    assert store.keys() == []
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        assert sorted(wb.recovered) == ["b.json", "logs/a.log"]
        await eventually(lambda: wb.statistics().files == 0, limit=1.0)  # first, not after 60 s
    assert store.data_of("logs/a.log") == b"pending a"
    assert store.data_of("b.json") == b"pending b"
    assert store.ops["put_bytes"] == 2
    assert staging_files(tmp_path) == []
    assert journal_rows(tmp_path) == []
    async with running(make_engine(store, tmp_path)) as wb:  # and nothing a third time
        assert wb.recovered == ()


async def test_recovered_files_go_before_new_ones(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store, heard = make_store(), Recorder()
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        await write_file(wb, "old", b"1")
    engine = make_engine(store, tmp_path, upload_delay=0.0, transfers=1, listener=heard)
    await write_file(engine, "new", b"2")  # written before the uploader even starts
    async with running(engine) as wb:
        await wb.drain()
    assert [key for key, _ in heard.uploads] == ["old", "new"]


async def test_upload_that_landed_before_the_crash_is_not_repeated_or_called_a_conflict(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    data = b"m" * (3 * PART)
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        await write_file(wb, "small", b"s")
        await write_file(wb, "multi", data)
    # The PUTs completed but the process died before journaling it:
    store.replace_behind_back("small", b"s")
    upload = store.create_multipart("multi")
    parts = [
        store.upload_part("multi", upload, n + 1, data[n * PART : (n + 1) * PART]) for n in range(3)
    ]
    store.complete_multipart("multi", upload, parts)
    store.ops.clear()
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.drain()
        assert wb.statistics().conflicts == 0
    assert store.ops["put_bytes"] == 0
    assert store.ops["create_multipart"] == 0
    assert store.keys() == ["multi", "small"]


async def test_crash_in_the_middle_of_a_multipart_upload(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    data = os.urandom(4 * PART)
    runner = InlineRunner()
    gate = runner.gate("upload_part")
    engine = make_engine(store, tmp_path, runner, upload_delay=0.0)
    # kill -9: no abort may run, so the abort the engine tries on the way down fails.
    store.fail_next("abort_multipart", StoreUnavailable("process is dead"), times=1)
    async with running(engine) as wb:
        await write_file(wb, "big", data)
        await gate.reached.wait()
        gate.opened.set()
    assert len(store.list_multipart("")) == 1
    (row,) = journal_rows(tmp_path)
    assert row.upload is not None
    assert row.upload.key == "big"
    assert row.upload.upload_id != ""
    store.delay = None
    async with running(make_engine(store, tmp_path, runner)) as wb:
        await wb.drain()
    assert store.data_of("big") == data
    assert store.list_multipart("") == []


async def test_a_multipart_conflict_copy_left_by_a_crash_is_aborted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("big", b"v1")
    store.fail_next("upload_part", StoreUnavailable("network down"))
    store.fail_next("abort_multipart", StoreUnavailable("still down"))
    async with running(make_engine(store, tmp_path, upload_delay=0.0)) as wb:
        await write_file(wb, "big", b"ours" * PART, base)
        store.replace_behind_back("big", b"theirs")
        await eventually(lambda: wb.statistics().retries == 1)
    (pending,) = store.list_multipart("")
    assert pending.key.startswith("big.conflict-")
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.drain()
    assert store.list_multipart("") == []
    assert store.data_of("big") == b"theirs"
    assert store.data_of(pending.key) == b"ours" * PART


async def test_crash_while_creating_a_multipart_upload(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        await write_file(wb, "big", b"q" * (2 * PART))
    journal = Journal(tmp_path)
    (row,) = journal.rows()
    journal.set_upload(row.staging, PendingUpload("big", ""))  # the id never got journaled
    journal.close()
    orphan = store.create_multipart("big")
    other = store.create_multipart("big2")  # someone else's upload of another key
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.drain()
    assert store.data_of("big") == b"q" * (2 * PART)
    assert [(u.key, u.upload_id) for u in store.list_multipart("")] == [("big2", other)]
    assert orphan != other


async def test_a_lost_staging_file_drops_only_its_row(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        await write_file(wb, "a", b"1")
        await write_file(wb, "b", b"2")
    journal = Journal(tmp_path)
    lost = next(row for row in journal.rows() if row.key == "a")
    journal.close()
    os.unlink(tmp_path / STAGING_DIR / lost.staging)
    (tmp_path / STAGING_DIR / "stray").write_bytes(b"garbage of a clean file")
    async with running(make_engine(store, tmp_path)) as wb:
        assert wb.recovered == ("b",)
        await wb.drain()
    assert store.keys() == ["b"]
    assert staging_files(tmp_path) == []


async def test_fsynced_data_is_on_disk_and_journaled(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        handle = await wb.open("a", None)
        wb.write(handle, 0, b"durable")
        await wb.fsync(handle)
        (row,) = journal_rows(tmp_path)
        assert row.key == "a"
        assert row.base_etag is None
        assert (tmp_path / STAGING_DIR / row.staging).read_bytes() == b"durable"


class RecordingRunner(InlineRunner):
    """Remembers the name of every blocking call it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def __call__(
        self, fn: Callable[..., T], *args: object, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        self.calls.append(getattr(fn, "__name__", "?"))
        return await super().__call__(fn, *args, limiter=limiter)


async def test_fsync_of_the_directory_makes_a_rename_durable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The save pattern: write tmp, fsync it, rename it over the target, fsync the directory.
    A rename is a journal transaction (the row moves); the directory's fsync syncs the journal
    and the staging directory."""
    runner = RecordingRunner()
    store = make_store()
    async with running(make_engine(store, tmp_path, runner, upload_delay=60.0)) as wb:
        handle = await wb.open("model.json.tmp", None, truncate=True)
        wb.write(handle, 0, b"{}")
        await wb.fsync(handle)
        wb.release(handle)
        await wb.rename("model.json.tmp", "model.json")
        runner.calls.clear()
        await wb.fsync_names()
        assert runner.calls == ["fsync_dir", "sync"]
        assert [row.key for row in journal_rows(tmp_path)] == ["model.json"]


def test_a_second_engine_on_the_same_root_is_refused(tmp_path: Path) -> None:
    first = WriteBack(make_store(), tmp_path)
    try:
        with pytest.raises(MountError, match="in use"):
            WriteBack(make_store(), tmp_path)
    finally:
        first.close()
    WriteBack(make_store(), tmp_path).close()  # free again after close (and after kill -9)


def test_a_root_of_another_bucket_is_refused(tmp_path: Path) -> None:
    WriteBack(make_store(), tmp_path, identity="https://s3.example|bucket").close()
    with pytest.raises(ConfigError, match=r"belongs to 'https://s3.example\|bucket'"):
        WriteBack(make_store(), tmp_path, identity="https://s3.example|other")


@pytest.mark.parametrize("legacy", ["test:bucket", "test:bucket/a", "renamed:bucket/x/y"])
def test_a_journal_of_the_same_bucket_from_before_is_taken_over(
    tmp_path: Path, legacy: str
) -> None:
    """Journals used to name the remote and the prefix; any prefix of the bucket is the
    same root now (it was already chosen by endpoint and bucket)."""
    WriteBack(make_store(), tmp_path, identity=legacy).close()
    WriteBack(make_store(), tmp_path, identity="http://127.0.0.1:1|bucket").close()
    WriteBack(make_store(), tmp_path, identity="http://127.0.0.1:1|bucket").close()
    with pytest.raises(ConfigError, match="belongs to"):
        WriteBack(make_store(), tmp_path, identity="http://127.0.0.1:1|other")


def test_a_journal_of_another_bucket_from_before_is_refused(tmp_path: Path) -> None:
    WriteBack(make_store(), tmp_path, identity="test:other/a").close()
    with pytest.raises(ConfigError, match="belongs to 'test:other/a'"):
        WriteBack(make_store(), tmp_path, identity="http://127.0.0.1:1|bucket")


# -- unlink and rename --------------------------------------------------------------------------


async def test_unlink_before_upload_uploads_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "tmp", b"scratch")
        await wb.unlink("tmp")
        assert wb.staged("tmp") is None
        await trio.sleep(60)
    assert store.keys() == []
    assert store.ops["put_bytes"] == 0
    assert store.ops["delete"] == 0
    assert staging_files(tmp_path) == []
    assert journal_rows(tmp_path) == []


async def test_unlink_during_an_upload_leaves_nothing_in_the_bucket(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    runner = InlineRunner()
    gate = runner.gate("put_bytes")
    async with running(make_engine(store, tmp_path, runner, upload_delay=0.0)) as wb:
        await write_file(wb, "a", b"data")
        await gate.reached.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.unlink, "a")
            await trio.sleep(1)
            gate.opened.set()
        assert store.keys() == []
        await trio.sleep(60)
    assert store.keys() == []
    assert journal_rows(tmp_path) == []


async def test_unlink_of_an_uploaded_file_deletes_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("a", b"old")
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "a", b"new", base)
        await wb.unlink("a")
        await wb.unlink("only-in-bucket")  # not staged: deleted directly (idempotent)
        await trio.sleep(60)
    assert store.keys() == []


async def test_an_unlinked_open_file_keeps_working_and_is_never_uploaded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path)) as wb:
        handle = await wb.open("tmpfile", None)
        wb.write(handle, 0, b"abc")
        await wb.unlink("tmpfile")
        wb.write(handle, 3, b"def")
        assert wb.read(handle, 0, 10) == b"abcdef"
        assert handle.key is None
        again = await wb.open("tmpfile", None)  # a new file of the same name
        wb.write(again, 0, b"new")
        wb.release(again)
        await trio.sleep(60)
        wb.release(handle)
        await wb.drain()
    assert store.keys() == ["tmpfile"]
    assert store.data_of("tmpfile") == b"new"
    assert staging_files(tmp_path) == []


async def test_rename_of_a_new_file_uploads_only_the_new_name(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    target = store.put_bytes("out.json", b"previous")
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "out.json.tmp", b"saved atomically")
        await wb.rename("out.json.tmp", "out.json", replaced=target)
        assert wb.staged("out.json.tmp") is None
        assert wb.staged("out.json") is not None
        await wb.drain()
    assert store.keys() == ["out.json"]
    assert store.data_of("out.json") == b"saved atomically"
    assert store.ops["delete"] == 0  # the temp name never reached the bucket


async def test_rename_of_an_uploaded_file_moves_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path)) as wb:
        handle = await wb.open("a", None)
        wb.write(handle, 0, b"content")
        await wb.drain()  # uploaded, still open
        await wb.rename("a", "b")
        wb.write(handle, 7, b"!")
        wb.release(handle)
        await wb.drain()
    assert store.keys() == ["b"]
    assert store.data_of("b") == b"content!"


async def test_rename_during_an_upload_never_leaves_the_old_name(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    runner = InlineRunner()
    gate = runner.gate("put_bytes")
    async with running(make_engine(store, tmp_path, runner, upload_delay=0.0)) as wb:
        await write_file(wb, "a", b"data")
        await gate.reached.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wb.rename, "a", "b")
            await trio.sleep(1)
            gate.opened.set()
        await wb.drain()
        await trio.sleep(60)
    assert store.keys() == ["b"]
    assert store.data_of("b") == b"data"


async def test_rename_over_a_staged_file_replaces_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "a", b"A")
        await write_file(wb, "b", b"B")
        await wb.rename("a", "b")
        await wb.drain()
    assert store.keys() == ["b"]
    assert store.data_of("b") == b"A"
    assert len(journal_rows(tmp_path)) == 0
    assert staging_files(tmp_path) == []


async def test_rename_of_a_bucket_only_file_copies_and_deletes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store, heard = make_store(), Recorder()
    store.put_bytes("a", b"remote")
    async with running(make_engine(store, tmp_path, listener=heard)) as wb:
        await write_file(wb, "b", b"staged, to be replaced")
        await wb.rename("a", "b")
        assert wb.staged("b") is None
        await trio.sleep(60)
    assert store.keys() == ["b"]
    assert store.data_of("b") == b"remote"
    assert [key for key, _ in heard.uploads] == ["b"]


async def test_a_failed_delete_after_rename_is_retried_and_survives_a_crash(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    store.put_bytes("a", b"remote")
    store.delay = outage = Outage("delete", StoreUnavailable("down"))
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.rename("a", "b")  # succeeds: the delete is queued
        await trio.sleep(10)
        assert outage.calls >= 3  # retried in the background
    assert store.keys() == ["a", "b"]
    outage.error = None
    async with running(make_engine(store, tmp_path)) as wb:  # after a crash
        await wb.drain()
    assert store.keys() == ["b"]


async def test_rename_to_itself_changes_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path)) as wb:
        await write_file(wb, "a", b"1")
        await wb.rename("a", "a")
        await wb.drain()
    assert store.keys() == ["a"]
    assert store.data_of("a") == b"1"


# -- drain and statistics -----------------------------------------------------------------------


async def test_drain_reports_progress_until_the_bucket_has_everything(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    store.fail_next("put_bytes", StoreUnavailable("slow"), times=4)
    seen: list[WriteBackStatistics] = []
    async with running(make_engine(store, tmp_path, upload_delay=3600.0)) as wb:
        await write_file(wb, "a", b"12345")
        await write_file(wb, "b", b"678")
        await trio.sleep(10)
        stats = wb.statistics()
        assert (stats.files, stats.bytes) == (2, 8)
        assert stats.oldest_age is not None
        await wb.drain(seen.append, interval=1.0)
        assert wb.statistics().files == 0
    assert seen
    assert seen[0].files >= 1
    assert store.keys() == ["a", "b"]


async def test_sync_waits_for_open_files_written_before_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, flush_interval=3600.0)) as wb:
        log = await wb.open("log", None)
        wb.write(log, 0, b"before sync\n")
        await wb.drain()
        assert store.data_of("log") == b"before sync\n"
        wb.release(log)


async def test_staged_under_lists_new_files_for_readdir(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    async with running(make_engine(store, tmp_path, upload_delay=60.0)) as wb:
        await write_file(wb, "out/a.wav", b"1")
        await write_file(wb, "out/sub/b.wav", b"22")
        await write_file(wb, "other", b"3")
        found = {info.key: info.size for info in wb.staged_under("out/")}
    assert found == {"out/a.wav": 1, "out/sub/b.wav": 2}


async def test_reading_an_unstaged_key_is_not_found(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(make_engine(make_store(), tmp_path)) as wb:
        with pytest.raises(NotFound):
            wb.read("nothing", 0, 10)


# -- a full cache disk --------------------------------------------------------------------------


async def test_a_full_cache_disk_fails_writes_with_enospc_and_keeps_what_was_written(
    tiny_disk: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    chunk = os.urandom(64 << 10)
    async with running(make_engine(store, tiny_disk, upload_delay=60.0)) as wb:
        handle = await wb.open("out.wav", None)
        written = fill_until_full(wb, handle, chunk)
        assert 0 < len(written) < (1 << 20)
        assert wb.read("out.wav", 0, 2 << 20) == written  # reads keep working
        staged = wb.staged("out.wav")
        assert staged is not None
        assert staged.size == len(written)
        with pytest.raises(NoSpace):
            wb.write(handle, len(written), chunk)
        assert wb.read(handle, 0, 2 << 20) == written
        wb.release(handle)
        await wb.drain()  # and what was written still lands in the bucket
    assert store.data_of("out.wav") == written


async def test_fetching_an_object_bigger_than_the_free_space_fails_cleanly(
    tiny_disk: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    base = store.put_bytes("model.pt", os.urandom(2 << 20))
    async with running(make_engine(store, tiny_disk)) as wb:
        with pytest.raises(NoSpace):
            await wb.open("model.pt", base, append=True)
        assert wb.staged("model.pt") is None
        assert staging_files(tiny_disk) == []
        await write_file(wb, "small", b"still works once space is back")
        await wb.drain()
    assert store.data_of("small") == b"still works once space is back"


def fill_with_blocks(cache: DiskBlockCache) -> int:
    """Put blocks until the disk is full; how many made it."""
    for index in range(10_000):
        cache.put(ObjectId("model.bin", '"v1"'), index, os.urandom(32 << 10))
        if cache.statistics().write_errors:
            return cache.statistics().blocks
    raise AssertionError("the disk never filled up")


@pytest.mark.parametrize("room", [True, False])
async def test_the_block_cache_gives_room_back_to_write_back_on_a_full_disk(
    tiny_disk: Path, autojump_clock: trio.testing.MockClock, room: bool
) -> None:
    """Written data matters more than cached blocks, which can be fetched again: a staging
    write (or a copy into staging) that finds the disk full makes the cache give back blocks
    and is tried once more. (The mount passes the cache's `give_back`: write/ never imports
    cache/.)"""
    store = make_store()
    base = store.put_bytes("log.txt", os.urandom(96 << 10))
    cache = DiskBlockCache(tiny_disk / "blocks", 32 << 10, 64 << 20)
    make_room = cache.give_back if room else None
    data = os.urandom(160 << 10)
    try:
        async with running(
            make_engine(store, tiny_disk / "writeback", make_room=make_room, upload_delay=60.0)
        ) as wb:
            blocks = fill_with_blocks(cache)
            if not room:  # as before: ENOSPC (at the open's journal row or the write), or
                try:  # a short write of what fit
                    written = wb.write(await wb.open("out.bin", None), 0, data)
                except NoSpace:
                    written = 0
                assert written < len(data)
                return
            handle = await wb.open("out.bin", None)
            assert wb.write(handle, 0, data) == len(data)
            appended = await wb.open("log.txt", base, append=True)  # a copy into staging
            assert wb.read(appended, 0, base.size) == store.data_of("log.txt")
            for opened in (handle, appended):
                wb.release(opened)
            await wb.drain()
    finally:
        cache.close()
    assert store.data_of("out.bin") == data
    assert cache.statistics().blocks < blocks
    assert cache.statistics().evictions > 0


async def test_a_new_file_over_a_name_whose_delete_is_pending_replaces_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = make_store()
    store.put_bytes("a", b"remote")
    store.delay = outage = Outage("delete", StoreUnavailable("down"))
    async with running(make_engine(store, tmp_path)) as wb:
        await wb.rename("a", "b")  # the delete of "a" fails and stays queued
        await write_file(wb, "a", b"a new file")  # the app creates "a" again
        outage.error = None
        await wb.drain()
        assert wb.statistics().conflicts == 0
    assert stored(store) == ["a", "b"]
    assert store.data_of("a") == b"a new file"
    assert store.data_of("b") == b"remote"


# -- randomized: any sequence of operations ends with the bucket equal to the mount's view ----

KEYS = st.sampled_from(["a", "b", "dir/c"])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            KEYS,
            st.integers(0, 3 * PART),
            st.binary(min_size=1, max_size=2 * PART),
        ),
        st.tuples(st.just("append"), KEYS, st.binary(min_size=1, max_size=PART)),
        st.tuples(st.just("truncate"), KEYS, st.integers(0, 3 * PART)),
        st.tuples(st.just("rename"), KEYS, KEYS),
        st.tuples(st.just("unlink"), KEYS),
        st.tuples(st.just("wait"), st.sampled_from([0.3, 3.0, 5.2, 40.0])),
        st.tuples(st.just("crash")),
        st.tuples(st.just("drain")),
    ),
    max_size=25,
)


class Scenario:
    """Runs operations against the engine and a plain dict model of what the mount shows."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = make_store()
        self.model: dict[str, bytes] = {}
        self.engine = self.new_engine()

    def new_engine(self) -> WriteBack:
        # Slow calls, so uploads are still running while later operations change the files.
        return make_engine(self.store, self.root, InlineRunner(latency=0.2))

    def base(self, key: str) -> ObjectInfo | None:
        return self.store.head(key) if key in stored(self.store) else None

    async def apply(self, op: tuple[object, ...]) -> None:
        wb, model = self.engine, self.model
        match op:
            case ("write", str(key), int(offset), bytes(data)):
                handle = await wb.open(key, self.base(key) if key in model else None)
                wb.write(handle, offset, data)
                wb.release(handle)
                old = model.get(key, b"")
                old += bytes(max(0, offset - len(old)))
                model[key] = old[:offset] + data + old[offset + len(data) :]
            case ("append", str(key), bytes(data)):
                handle = await wb.open(key, self.base(key) if key in model else None, append=True)
                wb.write(handle, 0, data)
                wb.release(handle)
                model[key] = model.get(key, b"") + data
            case ("truncate", str(key), int(size)) if key in model:
                await wb.truncate(key, size, self.base(key))
                model[key] = (model[key] + bytes(size))[:size]
            case ("rename", str(old), str(new)) if old in model and old != new:
                await wb.rename(old, new, replaced=self.base(new) if new in model else None)
                model[new] = model.pop(old)
            case ("unlink", str(key)) if key in model:
                await wb.unlink(key)
                del model[key]
            case ("wait", float(seconds)):
                await trio.sleep(seconds)
            case ("drain",):
                await wb.drain()

    def check_view(self) -> None:
        """What the mount would show equals the model: staged content, else the bucket's."""
        for key in ["a", "b", "dir/c"]:
            if self.engine.staged(key) is not None:
                assert self.engine.read(key, 0, 1 << 20) == self.model.get(key), key
            elif key in self.model:
                assert self.store.data_of(key) == self.model[key], key
            else:
                assert key not in stored(self.store), key


@settings(max_examples=40, deadline=None)
@given(operations=OPERATIONS)
def test_any_sequence_of_operations_lands_exactly(
    tmp_path_factory: pytest.TempPathFactory, operations: list[tuple[object, ...]]
) -> None:
    play_and_check(Scenario(tmp_path_factory.mktemp("scenario")), operations)


def rename_after_an_unrecorded_upload() -> list[tuple[object, ...]]:
    """b's upload lands but is not recorded (a crash), then a is renamed onto b."""
    return [
        ("write", "b", 1, b"\x00"),
        ("append", "a", b"\x00"),
        ("crash",),
        ("wait", 0.3),
        ("rename", "a", "b"),
    ]


def test_rename_onto_a_file_whose_upload_landed_unrecorded(tmp_path: Path) -> None:
    """Found by the sequence test: after a restart both files upload; the rename stops b's
    upload after its PUT landed but before its answer was recorded. The rename must see that
    version as our own (same content), not as someone else's change (a false conflict that
    kept the old b and put the renamed file under b.conflict-*)."""
    scenario = Scenario(tmp_path)
    play_and_check(scenario, rename_after_an_unrecorded_upload())
    assert scenario.engine.statistics().conflicts == 0


def test_an_upload_that_landed_unrecorded_is_ours_not_a_conflict(tmp_path: Path) -> None:
    """Found by the sequence test: a's upload lands but the crash comes before its answer is
    recorded, and a changed since. After the restart the bucket holds a's own older bytes;
    they are recognised by the ETag journaled before the upload (`ours`), and replaced, not
    kept as someone else's version with ours moved to a conflict copy."""
    scenario = Scenario(tmp_path)
    play_and_check(
        scenario,
        [
            ("write", "b", 0, b"\x00"),
            ("drain",),
            ("append", "a", b"\x00"),
            ("wait", 5.2),
            ("write", "b", 0, b"\x00"),
            ("append", "a", b"\x00"),
            ("crash",),
        ],
    )
    assert scenario.engine.statistics().conflicts == 0


def test_a_rename_deletes_the_old_key_of_an_upload_that_landed_unrecorded(
    tmp_path: Path,
) -> None:
    """Found by the sequence test: b's upload lands unrecorded (a crash), then b is renamed
    onto a. The bucket does hold b, though nothing recorded it: the rename must delete it."""
    play_and_check(
        Scenario(tmp_path),
        [
            ("write", "a", 0, b"\x00"),
            ("drain",),
            ("append", "b", b"\x00"),
            ("crash",),
            ("append", "a", b"\x00"),
            ("wait", 0.3),
            ("crash",),
            ("rename", "b", "a"),
        ],
    )


class CallerRecordingBudget(MemoryBudget):
    """A budget that notes which trio task each `acquire_async` came from."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.callers: list[str] = []

    async def acquire_async(self, size: int) -> None:
        self.callers.append(trio.lowlevel.current_task().name)
        await super().acquire_async(size)


def test_a_rename_over_an_unrecorded_upload_reads_nothing_back(tmp_path: Path) -> None:
    """The rename above recognises b's landed upload without reading b back: the ETag that
    upload gives b was journaled before it was sent (`StagedFile.ours`). So the rename holds
    no memory of the mount's budget (`--max-memory`); only the uploads do, in their tasks."""
    budget = CallerRecordingBudget(4 * PART)

    class BudgetedScenario(Scenario):
        def new_engine(self) -> WriteBack:
            return make_engine(self.store, self.root, InlineRunner(latency=0.2), budget=budget)

    scenario = BudgetedScenario(tmp_path)
    play_and_check(scenario, rename_after_an_unrecorded_upload())
    assert scenario.engine.statistics().conflicts == 0
    # the play task is the one that renamed; uploads take their memory in the engine's tasks
    assert budget.callers
    assert not any(name.endswith("play_and_check.<locals>.play") for name in budget.callers)
    assert budget.statistics().in_use == 0


def play_and_check(scenario: Scenario, operations: list[tuple[object, ...]]) -> None:
    async def play() -> None:
        while True:
            crashed = False
            async with running(scenario.engine) as wb:
                while operations:
                    op = operations.pop(0)
                    if op[0] == "crash":
                        crashed = True
                        break
                    await scenario.apply(op)
                    scenario.check_view()
                if not crashed:
                    await wb.drain()
                    scenario.check_view()
                    return
            scenario.engine = scenario.new_engine()

    trio.run(play, clock=trio.testing.MockClock(autojump_threshold=0))
    assert scenario.store.keys() == sorted(scenario.model)
    for key, data in scenario.model.items():
        assert scenario.store.data_of(key) == data
    assert scenario.store.list_multipart("") == []
    assert journal_rows(scenario.root) == []
    assert staging_files(scenario.root) == []
