"""Write-back through a real mount: the CLI over /dev/fuse, SeaweedFS behind a counting proxy.

Crash tests kill the mount process with SIGKILL and mount again with the same cache dir; the
bucket must end with exactly the bytes written, and no multipart upload may be left open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import FaultProxy, SeaweedServer, method_is
from support.mounting import MountEnv, run_cli, tmpfs

pytestmark = pytest.mark.mount

MiB = 1 << 20


class Env(MountEnv):
    """The bucket helpers (object, bucket_keys, unfinished_uploads, ...) are MountEnv's."""


@pytest.fixture
def env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    make_config: Callable[..., Path],
) -> Env:
    return Env.create(seaweed, proxy, bucket, tmp_path, make_config)


def fill(path: Path, size: int) -> None:
    with path.open("wb") as file:
        for _ in range(size // MiB):
            file.write(bytes(MiB))


def write_in_chunks(path: Path, data: bytes, sizes: Iterator[int]) -> None:
    with path.open("wb", buffering=0) as file:
        offset = 0
        while offset < len(data):
            size = next(sizes)
            file.write(data[offset : offset + size])
            offset += size


def test_200mb_round_trip_in_1mib_and_odd_chunks(env: Env) -> None:
    data = random.Random(2).randbytes(200 * MiB)
    odd = random.Random(3)
    with env.mount("--write-back", "0s"):
        write_in_chunks(env.mountpoint / "one.bin", data, iter(lambda: MiB, None))
        write_in_chunks(
            env.mountpoint / "odd.bin", data, iter(lambda: odd.randrange(1, 3 * MiB), None)
        )
        assert (env.mountpoint / "odd.bin").read_bytes() == data  # readers see it at once
        assert run_cli("sync", env.mountpoint).returncode == 0
        assert env.object("one.bin") == data
        assert env.object("odd.bin") == data
    assert env.unfinished_uploads() == set()


def test_random_writes_into_an_existing_object(env: Env) -> None:
    base = random.Random(4).randbytes(5 * MiB)
    env.seaweed.client().put_object(Bucket=env.bucket, Key="r.bin", Body=base)
    expected = bytearray(base)
    rng = random.Random(5)
    with env.mount():
        with (env.mountpoint / "r.bin").open("r+b", buffering=0) as file:
            for _ in range(100):
                offset, size = rng.randrange(0, 6 * MiB), rng.randrange(1, 70000)
                chunk = rng.randbytes(size)
                file.seek(offset)
                file.write(chunk)
                if offset > len(expected):
                    expected.extend(bytes(offset - len(expected)))
                expected[offset : offset + size] = chunk
        assert (env.mountpoint / "r.bin").read_bytes() == bytes(expected)
        assert run_cli("sync", env.mountpoint).returncode == 0
    assert env.object("r.bin") == bytes(expected)


def test_append_from_two_sequential_writers_and_truncate(env: Env) -> None:
    env.seaweed.client().put_object(Bucket=env.bucket, Key="logs/app.log", Body=b"start\n")
    with env.mount():
        log = env.mountpoint / "logs" / "app.log"
        for writer in ("a", "b"):
            with log.open("a") as file:
                for i in range(50):
                    file.write(f"{writer}{i}\n")
        expected = b"start\n" + b"".join(f"{w}{i}\n".encode() for w in "ab" for i in range(50))
        assert log.read_bytes() == expected
        trunc = env.mountpoint / "t.txt"
        trunc.write_bytes(b"0123456789")
        os.truncate(trunc, 4)
        with trunc.open("r+b") as file:  # O_TRUNC through open(..., "w") too
            file.truncate(2)
        (env.mountpoint / "over.txt").write_bytes(b"long content")
        (env.mountpoint / "over.txt").write_bytes(b"short")  # O_TRUNC overwrite
        assert run_cli("sync", env.mountpoint).returncode == 0
    assert env.object("logs/app.log") == expected
    assert env.object("t.txt") == b"01"
    assert env.object("over.txt") == b"short"


def test_a_log_held_open_reaches_the_bucket_every_flush_interval(env: Env) -> None:
    # The scenario (a line every 100 ms for 60 s into a log that stays open, a 10 s
    # flush interval), a quarter as long: a line every 100 ms for 15 s with a 2.5 s flush
    # interval; the bucket's copy must grow several times while the file is open.
    with env.mount("--flush-interval", "2.5s", "--write-back", "1s"):
        sizes_seen: list[int] = []
        with (env.mountpoint / "webui.log").open("a", buffering=1) as log:
            started = time.monotonic()
            line = 0
            while time.monotonic() - started < 15:
                log.write(f"line {line}\n")
                line += 1
                time.sleep(0.1)
                if line % 10 == 0 and "webui.log" in env.bucket_keys():
                    sizes_seen.append(len(env.object("webui.log")))
        assert len(set(sizes_seen)) >= 4, sizes_seen  # uploaded again and again while open
        assert sizes_seen == sorted(sizes_seen)
        assert run_cli("sync", env.mountpoint).returncode == 0
        expected = "".join(f"line {i}\n" for i in range(line)).encode()
    assert env.object("webui.log") == expected


def test_unmount_uploads_everything_first(env: Env) -> None:
    data = random.Random(9).randbytes(20 * MiB)
    with env.mount("--write-back", "1h"):  # nothing is due before the unmount
        (env.mountpoint / "late.bin").write_bytes(data)
        (env.mountpoint / "notes.txt").write_text("written just before unmount")
        assert "late.bin" not in env.bucket_keys()
    # `with` unmounted through `modelfs unmount`, which waits for the mount process to exit.
    assert env.object("late.bin") == data
    assert env.object("notes.txt") == b"written just before unmount"


def test_sigterm_uploads_everything_before_exit(env: Env) -> None:
    mounted = env.mount("--write-back", "1h")
    with mounted:
        (env.mountpoint / "term.txt").write_text("drained on SIGTERM")
        mounted.kill(signal.SIGTERM)
    assert env.object("term.txt") == b"drained on SIGTERM"


def test_kill_9_before_upload_loses_nothing(env: Env) -> None:
    data = random.Random(6).randbytes(100 * MiB)
    mounted = env.mount("--write-back", "1h")  # nothing would be uploaded before the kill
    with mounted:
        (env.mountpoint / "out.bin").write_bytes(data)
        mounted.kill()
        assert "out.bin" not in env.bucket_keys()
        assert run_cli("unmount", env.mountpoint).returncode == 0  # the dead mount
    with env.mount():
        env.wait_for_object("out.bin", data)
        assert (env.mountpoint / "out.bin").read_bytes() == data
    assert env.unfinished_uploads() == set()


def test_fsync_then_kill_9_is_recovered(env: Env) -> None:
    mounted = env.mount("--write-back", "1h")
    with mounted:
        fd = os.open(env.mountpoint / "fsynced.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"durable after fsync")
        os.fsync(fd)
        mounted.kill()
        with contextlib.suppress(OSError):  # closing on a dead mount reports ENOTCONN
            os.close(fd)
        run_cli("unmount", env.mountpoint)
    with env.mount():
        env.wait_for_object("fsynced.txt", b"durable after fsync")


def test_the_save_pattern_with_a_directory_fsync_survives_kill_9(env: Env) -> None:
    """write tmp, fsync, rename over the target, fsync the directory: what careful apps do."""
    mounted = env.mount("--write-back", "1h")
    with mounted:
        fd = os.open(env.mountpoint / "state.json.tmp", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b'{"step": 2}')
        os.fsync(fd)
        os.close(fd)
        os.rename(env.mountpoint / "state.json.tmp", env.mountpoint / "state.json")
        directory = os.open(env.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        mounted.kill()
        run_cli("unmount", env.mountpoint)
    with env.mount():
        env.wait_for_object("state.json", b'{"step": 2}')
    assert env.bucket_keys() == ["state.json"]


def test_two_prefixes_of_one_bucket_one_after_the_other_on_one_cache_dir(env: Env) -> None:
    """Both prefixes use the bucket's cache root, and on one mountpoint its write-back root:
    what one left pending, the other uploads. At the same time, a mount of the bucket on
    another mountpoint works beside it (the block cache is shared, its write-back its own)."""
    first = env.mount("--write-back", "1h", prefix="a")
    with first:
        (env.mountpoint / "pending.txt").write_text("written under a/")
        first.kill()  # kill -9: its journal row stays
        run_cli("unmount", env.mountpoint)
    with env.mount("--write-back", "0s", prefix="b"):
        (env.mountpoint / "own.txt").write_text("written under b/")
        env.wait_for_object("a/pending.txt", b"written under a/")
        env.wait_for_object("b/own.txt", b"written under b/")
        assert sorted(os.listdir(env.mountpoint)) == ["own.txt"]
        other = env.mountpoint.parent / "mnt-a"
        other.mkdir()
        beside = run_cli(
            "--config", env.config, "mount", "--daemon", "--cache-dir", env.cache_dir,
            "--write-back", "0s", f"test:{env.bucket}/a", other,
        )  # fmt: skip
        assert beside.returncode == 0, beside.stderr
        try:
            assert (other / "pending.txt").read_text() == "written under a/"
            (other / "beside.txt").write_text("written beside")
            env.wait_for_object("a/beside.txt", b"written beside")
        finally:
            assert run_cli("unmount", other).returncode == 0
    assert env.bucket_keys() == ["a/beside.txt", "a/pending.txt", "b/own.txt"]


def test_kill_9_during_a_multipart_upload_leaves_nothing_billing(env: Env) -> None:
    data = random.Random(7).randbytes(80 * MiB)  # 5 parts of 16 MiB
    # Slow down part uploads so the kill lands in the middle of the multipart upload.
    env.proxy.delay_next(
        1.0, times=None, match=lambda r: r.method == "PUT" and "partNumber" in r.path
    )
    mounted = env.mount("--write-back", "0s")
    with mounted:
        (env.mountpoint / "big.bin").write_bytes(data)
        deadline = time.monotonic() + 30
        while not env.open_uploads():
            assert time.monotonic() < deadline, "the multipart upload never started"
            time.sleep(0.05)
        mounted.kill()
        run_cli("unmount", env.mountpoint)
    env.proxy.clear_faults()
    with env.mount():
        env.wait_for_object("big.bin", data)
    assert env.unfinished_uploads() == set()


def test_conflict_keeps_the_remote_version_and_uploads_ours_aside(env: Env) -> None:
    client = env.seaweed.client()
    client.put_object(Bucket=env.bucket, Key="shared.json", Body=b'{"v": 1}')
    with env.mount("--write-back", "1s"):
        with (env.mountpoint / "shared.json").open("r+b") as file:
            file.write(b'{"v": 2}')
            client.put_object(Bucket=env.bucket, Key="shared.json", Body=b'{"v": 3}')
        assert run_cli("sync", env.mountpoint).returncode == 0
    conflicts = [k for k in env.bucket_keys() if k.startswith("shared.json.conflict-")]
    assert env.object("shared.json") == b'{"v": 3}'
    assert len(conflicts) == 1
    assert env.object(conflicts[0]) == b'{"v": 2}'


def test_disk_full_in_the_cache_gives_enospc_and_keeps_written_data(env: Env) -> None:
    with tmpfs(env.cache_dir.parent / "smallcache", "8m") as small:
        env.seaweed.client().put_object(Bucket=env.bucket, Key="read.txt", Body=b"still readable")
        with env.mount("--write-back", "1h", cache_dir=small):
            first = random.Random(8).randbytes(2 * MiB)
            (env.mountpoint / "first.bin").write_bytes(first)
            huge = env.mountpoint / "huge.bin"
            with pytest.raises(OSError, match="No space") as caught:
                fill(huge, 64 * MiB)
            assert caught.value.errno == errno.ENOSPC
            assert (env.mountpoint / "first.bin").read_bytes() == first
            assert (env.mountpoint / "read.txt").read_bytes() == b"still readable"
            (env.mountpoint / "huge.bin").unlink()
            assert run_cli("sync", env.mountpoint).returncode == 0
        assert env.object("first.bin") == first


def assert_private(top: Path) -> None:
    """Every directory under `top` is 0700 and every file 0600: only we can read or plant.
    The mount runs meanwhile: a file renamed away between the listing and its look (a
    snapshot's temporary file) is looked at no more."""
    wrong = []
    for path in [top, *top.rglob("*")]:
        try:
            status = path.lstat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(status.st_mode)
        if mode != (0o700 if stat.S_ISDIR(status.st_mode) else 0o600):
            wrong.append(f"{path.relative_to(top)} {mode:04o}")
    assert wrong == []


def test_a_full_cache_disk_gives_blocks_back_to_written_files(env: Env) -> None:
    """Blocks can be fetched again, written bytes cannot: on a full cache disk a write makes
    the block cache give room back instead of failing with ENOSPC."""
    with tmpfs(env.cache_dir.parent / "smallcache", "12m") as small:
        model = random.Random(11).randbytes(7 * MiB)
        env.put("model.bin", model)
        with env.mount("--write-back", "1h", "--cache-max-size", "1G", cache_dir=small):
            assert (env.mountpoint / "model.bin").read_bytes() == model
            deadline = time.monotonic() + 30
            while len(list(small.rglob("*.blk"))) < 7:
                assert time.monotonic() < deadline, "the blocks never reached the cache"
                time.sleep(0.05)
            out = random.Random(12).randbytes(8 * MiB)  # more than is left on the disk
            (env.mountpoint / "out.bin").write_bytes(out)
            assert run_cli("sync", env.mountpoint).returncode == 0
            assert len(list(small.rglob("*.blk"))) < 7
        assert env.object("out.bin") == out
        assert "evicted" in (small / "modelfs.log").read_text()


def test_cache_blocks_journal_staging_and_log_are_private(env: Env) -> None:
    env.put("model.bin", random.Random(10).randbytes(3 * MiB))
    umask = os.umask(0o022)  # what a mount inherits from a shell or a unit without UMask=
    try:
        with env.mount("--write-back", "1h"):
            (env.mountpoint / "model.bin").read_bytes()
            (env.mountpoint / "out.txt").write_text("staged, journaled, not uploaded")
            deadline = time.monotonic() + 30
            while len(list(env.cache_dir.rglob("*.blk"))) < 3:  # written in the background
                assert time.monotonic() < deadline, "the blocks never reached the cache"
                time.sleep(0.05)
            assert list(env.cache_dir.rglob("journal.sqlite3-wal"))
            assert list(env.cache_dir.rglob("staging/*"))
            assert (env.cache_dir / "modelfs.log").stat().st_size > 0
            assert_private(env.cache_dir)
    finally:
        os.umask(umask)
    assert_private(env.cache_dir)


def test_a_permanent_403_holds_the_file_and_sync_says_so(env: Env) -> None:
    """Uploads refused for good (403) are not retried on their own: the file stays staged,
    `status` shows why, `sync` tries once more and fails in one line; once the policy is
    fixed, `sync` uploads it."""
    denied = env.proxy.fail_next(403, times=None, match=method_is("PUT"))
    with env.mount("--write-back", "0s") as mounted:
        (env.mountpoint / "report.json").write_text('{"ok": true}')
        deadline = time.monotonic() + 30
        while not mounted.status()["writeback"]["failures"]:
            assert time.monotonic() < deadline, "the upload never failed"
            time.sleep(0.1)
        puts = env.proxy.count(method="PUT")
        time.sleep(3)  # a retried upload would have been sent again by now (backoff 1 s, 2 s)
        assert env.proxy.count(method="PUT") == puts
        shown = run_cli("status", env.mountpoint)
        assert "not uploaded, held until `modelfs sync` or the next mount: report.json:" in (
            shown.stdout
        )
        synced = run_cli("sync", "--timeout", "60s", env.mountpoint)
        assert synced.returncode == 1
        assert synced.stderr.startswith(f"modelfs: error: sync of {env.mountpoint} failed: 1 ")
        assert "report.json: access denied" in synced.stderr
        assert len(synced.stderr.strip().splitlines()) == 1
        env.proxy.remove_fault(denied)
        assert run_cli("sync", env.mountpoint).returncode == 0
        assert env.object("report.json") == b'{"ok": true}'


def test_sync_timeout_gives_up_in_one_line(env: Env) -> None:
    with env.mount("--write-back", "0s"):
        env.proxy.delay_next(8.0, match=method_is("PUT"))  # a store far too slow for 2 s
        (env.mountpoint / "stuck.txt").write_text("the store never answers")
        started = time.monotonic()
        synced = run_cli("sync", "--timeout", "2s", env.mountpoint)
        assert time.monotonic() - started < 20
        assert synced.returncode == 1
        assert synced.stderr.strip() == (
            f"modelfs: error: sync of {env.mountpoint} failed: not done within 2s: 1 file(s), "
            "23B still to upload"
        )
    assert env.object("stuck.txt") == b"the store never answers"  # unmount waited for it


def test_a_key_longer_than_s3_allows_is_refused_at_create_and_rename(env: Env) -> None:
    with env.mount():
        deep = env.mountpoint
        for letter in "abcd":
            deep = deep / (letter * 250)
            deep.mkdir()  # markers of 251 bytes each: 1004 bytes of key so far
        with pytest.raises(OSError, match="File name too long") as created:
            (deep / ("x" * 30)).write_text("never")
        assert created.value.errno == errno.ENAMETOOLONG
        (deep / "ok").write_text("short enough")
        with pytest.raises(OSError, match="File name too long") as renamed:
            os.rename(deep / "ok", deep / ("y" * 30))
        assert renamed.value.errno == errno.ENAMETOOLONG
        with pytest.raises(OSError, match="File name too long") as made:
            os.mkdir(deep / ("z" * 20))
        assert made.value.errno == errno.ENAMETOOLONG
        assert run_cli("sync", env.mountpoint).returncode == 0
    assert env.bucket_keys()[-1] == f"{'a' * 250}/{'b' * 250}/{'c' * 250}/{'d' * 250}/ok"


def test_a_name_that_is_not_utf8_is_einval_not_eio_with_a_traceback(env: Env) -> None:
    env.put("ok.txt", b"x")
    with env.mount("--write-back", "0s"):
        mp = os.fsencode(env.mountpoint)
        bad = mp + b"/\xffname"
        for action in (
            lambda: os.close(os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)),
            lambda: os.mkdir(bad),
            lambda: os.rename(mp + b"/ok.txt", bad),
        ):
            with pytest.raises(OSError, match="Invalid argument"):
                action()
        assert run_cli("sync", "--timeout", "30s", env.mountpoint).returncode == 0
    log = (env.cache_dir / "modelfs.log").read_text()
    assert "Traceback" not in log
    assert env.bucket_keys() == ["ok.txt"]


def test_refused_operations_return_their_errno(env: Env) -> None:
    client = env.seaweed.client()
    client.put_object(Bucket=env.bucket, Key="dir/file.txt", Body=b"x")
    with env.mount():
        mp = env.mountpoint
        cases: list[tuple[Callable[[], object], int]] = [
            (lambda: os.rmdir(mp / "dir"), errno.ENOTEMPTY),
            (lambda: os.unlink(mp / "dir"), errno.EISDIR),
            (lambda: os.rename(mp / "dir", mp / "dir2"), errno.EXDEV),
            (lambda: os.mkdir(mp / "dir"), errno.EEXIST),
            (lambda: os.unlink(mp / "missing"), errno.ENOENT),
            (lambda: os.rmdir(mp / "dir" / "file.txt"), errno.ENOTDIR),
        ]
        for action, expected in cases:
            with pytest.raises(OSError) as caught:  # noqa: PT011 - the errno is checked below
                action()
            assert caught.value.errno == expected, (action, caught.value)
        os.mkdir(mp / "empty")
        assert (mp / "empty").is_dir()
        os.rmdir(mp / "empty")
        assert not (mp / "empty").exists()
