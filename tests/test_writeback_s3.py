"""The write-back engine against a real SeaweedFS: bytes, multipart, kill -9, conflicts, 503s.

Crashes are real: a child process runs the engine and is killed with SIGKILL, so nothing of
the engine's shutdown path runs; the parent then starts a new engine on the same root, as the
next mount would. Byte checks download the object with boto3 and compare SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from modelfs.objects import ObjectInfo
from modelfs.store.protocol import Expect
from modelfs.store.s3 import S3Store
from modelfs.write.engine import WriteBack
from modelfs.write.staging import STAGING_DIR
from support import FaultProxy, SeaweedServer, method_is, remote_config
from support.engines import running
from test_writeback import eventually, fill_until_full

MIB = 1 << 20
S3_MIN_PART = 5 * MIB  # S3 (and SeaweedFS) refuse smaller parts except the last
TESTS_DIR = Path(__file__).parent


def sha256_of(seaweed: SeaweedServer, bucket: str, key: str) -> tuple[int, str]:
    body = seaweed.client().get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for piece in iter(lambda: body.read(MIB), b""):
        digest.update(piece)
        size += len(piece)
    return size, digest.hexdigest()


def object_bytes(seaweed: SeaweedServer, bucket: str, key: str) -> bytes:
    data: bytes = seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def bucket_keys(seaweed: SeaweedServer, bucket: str) -> list[str]:
    listing = seaweed.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


async def test_200mb_written_in_odd_chunks_round_trips_byte_exact(
    tmp_path: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    rng = random.Random(200)
    sizes = [MIB, 777_777, MIB, 12_345, 1]
    digest, offset, total = hashlib.sha256(), 0, 200 * 1000 * 1000
    async with running(WriteBack(s3_store, tmp_path, upload_delay=0.0)) as wb:
        handle = await wb.open("audio/long.wav", None)
        step = 0
        while offset < total:
            chunk = rng.randbytes(min(sizes[step % len(sizes)], total - offset))
            assert wb.write(handle, offset, chunk) == len(chunk)
            digest.update(chunk)
            offset += len(chunk)
            step += 1
        wb.release(handle)
        await wb.drain()
        stats = wb.statistics()
    assert sha256_of(seaweed, bucket, "audio/long.wav") == (total, digest.hexdigest())
    assert stats.uploaded_files == 1
    assert stats.files == 0
    etag = seaweed.client().head_object(Bucket=bucket, Key="audio/long.wav")["ETag"]
    assert etag.endswith('-12"')  # 200 MB in 16 MiB parts: a multipart upload of 12 parts
    assert s3_store.list_multipart("") == []


async def test_random_writes_into_an_existing_object(
    tmp_path: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    rng = random.Random(7)
    model = bytearray(rng.randbytes(12 * MIB + 3))
    base = s3_store.put_bytes("data.bin", bytes(model))
    async with running(WriteBack(s3_store, tmp_path, part_size=S3_MIN_PART)) as wb:
        handle = await wb.open("data.bin", base)
        for _ in range(200):
            offset = rng.randrange(0, len(model) + MIB)
            data = rng.randbytes(rng.randrange(1, 70_000))
            wb.write(handle, offset, data)
            if offset > len(model):
                model.extend(bytes(offset - len(model)))
            model[offset : offset + len(data)] = data
        assert wb.read(handle, 0, len(model) + 1) == bytes(model)
        wb.release(handle)
        await wb.drain()
    assert object_bytes(seaweed, bucket, "data.bin") == bytes(model)


async def test_append_to_an_existing_log(
    tmp_path: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    base = s3_store.put_bytes("logs/webui.log", b"started\n")
    async with running(WriteBack(s3_store, tmp_path)) as wb:
        handle = await wb.open("logs/webui.log", base, append=True)
        for n in range(1000):
            wb.write(handle, 0, b"request %d\n" % n)
        wb.release(handle)
        await wb.drain()
    expected = b"started\n" + b"".join(b"request %d\n" % n for n in range(1000))
    assert object_bytes(seaweed, bucket, "logs/webui.log") == expected


async def test_conflict_on_the_real_server(
    tmp_path: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    base = s3_store.put_bytes("prompts.json", b"v1")
    wall = 1_700_000_000.0
    async with running(WriteBack(s3_store, tmp_path, wall_clock=lambda: wall)) as wb:
        handle = await wb.open("prompts.json", base, truncate=True)
        wb.write(handle, 0, b"ours")
        wb.release(handle)
        seaweed.client().put_object(Bucket=bucket, Key="prompts.json", Body=b"theirs")
        await wb.drain()
    assert object_bytes(seaweed, bucket, "prompts.json") == b"theirs"
    assert object_bytes(seaweed, bucket, "prompts.json.conflict-20231114T221320Z") == b"ours"


class ChangesBeforePut:
    """An S3Store whose first PUT is preceded by another client's write of the same key: a
    change landing between the upload's HEAD and its PUT."""

    def __init__(self, store: S3Store, change: Callable[[], object]) -> None:
        self._store = store
        self._change: Callable[[], object] | None = change

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def put_bytes(self, key: str, data: bytes, expect: Expect | None = None) -> ObjectInfo:
        change, self._change = self._change, None
        if change is not None:
            change()
        return self._store.put_bytes(key, data, expect)


async def test_a_change_between_head_and_put_is_not_overwritten_on_the_real_server(
    tmp_path: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    base = s3_store.put_bytes("prompts.json", b"v1")
    wall = 1_700_000_000.0

    def theirs() -> object:
        return seaweed.client().put_object(Bucket=bucket, Key="prompts.json", Body=b"theirs")

    racing = ChangesBeforePut(s3_store, theirs)
    engine = WriteBack(racing, tmp_path, wall_clock=lambda: wall, upload_delay=0.0)  # type: ignore[arg-type]
    async with running(engine) as wb:
        handle = await wb.open("prompts.json", base, truncate=True)
        wb.write(handle, 0, b"ours")
        wb.release(handle)
        await wb.drain()
        assert wb.statistics().conflicts == 1
    assert object_bytes(seaweed, bucket, "prompts.json") == b"theirs"
    assert object_bytes(seaweed, bucket, "prompts.json.conflict-20231114T221320Z") == b"ours"


async def test_503s_are_retried_with_backoff(
    tmp_path: Path,
    proxy: FaultProxy,
    bucket: str,
    seaweed: SeaweedServer,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One attempt per request in boto3, so every 503 reaches the engine's own backoff.
    store = S3Store(remote_config(proxy.endpoint), bucket, max_attempts=1)
    proxy.fail_next(503, times=3, match=method_is("PUT"))
    async with running(WriteBack(store, tmp_path, upload_delay=0.0)) as wb:
        handle = await wb.open("a", None)
        wb.write(handle, 0, b"after three 503s")
        wb.release(handle)
        await wb.drain()
        stats = wb.statistics()
    statuses = [request.status for request in proxy.requests if request.method == "PUT"]
    assert statuses[:3] == [503, 503, 503]
    assert stats.retries >= 3
    assert stats.last_error is None
    assert stats.conflicts == 0
    assert bucket_keys(seaweed, bucket) == ["a"]
    assert object_bytes(seaweed, bucket, "a") == b"after three 503s"


async def test_a_file_held_open_is_uploaded_every_flush_interval(
    tmp_path: Path,
    s3_store: S3Store,
    seaweed: SeaweedServer,
    bucket: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(WriteBack(s3_store, tmp_path, flush_interval=30.0)) as wb:
        log = await wb.open("logs/app.log", None, append=True)

        def uploaded(count: int) -> Callable[[], bool]:
            return lambda: wb.statistics().uploaded_files == count

        for minute in range(3):
            wb.write(log, 0, b"minute %d\n" % minute)
            await trio.sleep(30.0)  # mock time: jumps
            await eventually(uploaded(minute + 1))
            assert object_bytes(seaweed, bucket, "logs/app.log") == b"".join(
                b"minute %d\n" % m for m in range(minute + 1)
            )
        wb.release(log)


# -- a full cache disk --------------------------------------------------------------------------


async def test_enospc_keeps_written_data_and_it_still_reaches_the_bucket(
    tiny_disk: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    chunk = os.urandom(100_000)
    async with running(WriteBack(s3_store, tiny_disk, upload_delay=3600.0)) as wb:
        handle = await wb.open("out.wav", None)
        written = fill_until_full(wb, handle, chunk)
        assert wb.read(handle, 0, 1 << 21) == written
        wb.release(handle)
        await wb.drain()
    assert object_bytes(seaweed, bucket, "out.wav") == written


# -- kill -9 ------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, time, trio
    from pathlib import Path
    from modelfs.store.s3 import S3Store
    from modelfs.write.engine import WriteBack
    from support import remote_config

    endpoint, bucket, root, mode = sys.argv[1:5]


    class SlowParts(S3Store):
        # A slow uplink: each part takes 2 s, so the kill lands mid-upload.

        def upload_part(self, *args, **kwargs):
            time.sleep(2.0)
            return super().upload_part(*args, **kwargs)


    async def main() -> None:
        store = SlowParts(remote_config(endpoint), bucket)
        if mode == "pending":
            wb = WriteBack(store, Path(root), upload_delay=3600.0)
            synced = await wb.open("fsynced.json", None)
            wb.write(synced, 0, b'{"fsynced": true}')
            await wb.fsync(synced)
            wb.release(synced)
            still_open = await wb.open("logs/open.log", None)
            wb.write(still_open, 0, b"written, not fsynced, still open\\n")
        else:
            wb = WriteBack(store, Path(root), upload_delay=0.0, part_size=5 << 20, transfers=1)
            big = await wb.open("big.bin", None)
            for n in range(8):
                wb.write(big, n << 20, bytes([n]) * (5 << 20))
            wb.release(big)
        print("ready", flush=True)
        await wb.run()

    trio.run(main)
    """
)


def start_child(endpoint: str, bucket: str, root: Path, mode: str) -> subprocess.Popen[str]:
    # The child imports the modelfs the parent does (PYTHONPATH kept), and tests/ for support.
    paths = [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, endpoint, bucket, str(root), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def kill9(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.stdout is not None
    child.stdout.close()


def puts_seen(seaweed: SeaweedServer, bucket: str) -> int:
    return seaweed.get_request_count(bucket, kind="PUT", codes=("200",))


async def test_kill_9_loses_nothing_and_uploads_exactly_once(
    tmp_path: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    before = puts_seen(seaweed, bucket)  # creating the bucket was a PUT too
    child = start_child(seaweed.endpoint, bucket, tmp_path, "pending")
    kill9(child)
    assert bucket_keys(seaweed, bucket) == []
    assert puts_seen(seaweed, bucket) == before
    async with running(WriteBack(s3_store, tmp_path)) as wb:
        assert sorted(wb.recovered) == ["fsynced.json", "logs/open.log"]
        await wb.drain()
    assert bucket_keys(seaweed, bucket) == ["fsynced.json", "logs/open.log"]
    assert object_bytes(seaweed, bucket, "fsynced.json") == b'{"fsynced": true}'
    assert object_bytes(seaweed, bucket, "logs/open.log") == b"written, not fsynced, still open\n"
    assert puts_seen(seaweed, bucket) == before + 2
    assert os.listdir(tmp_path / STAGING_DIR) == []
    async with running(WriteBack(s3_store, tmp_path)) as wb:
        assert wb.recovered == ()
        await wb.drain()
    assert puts_seen(seaweed, bucket) == before + 2


async def test_kill_9_in_the_middle_of_a_multipart_upload(
    tmp_path: Path, s3_store: S3Store, seaweed: SeaweedServer, bucket: str
) -> None:
    child = start_child(seaweed.endpoint, bucket, tmp_path, "multipart")
    deadline = time.monotonic() + 60
    store = s3_store
    while not store.list_multipart(""):
        assert time.monotonic() < deadline, "the child never started its multipart upload"
        await trio.sleep(0.05)  # waiting on another process: no clock to inject
    kill9(child)
    assert len(store.list_multipart("")) == 1  # left behind, billing
    async with running(WriteBack(store, tmp_path, part_size=S3_MIN_PART)) as wb:
        assert wb.recovered == ("big.bin",)
        await wb.drain()
    assert store.list_multipart("") == []
    expected = b"".join(bytes([n]) * MIB for n in range(7)) + bytes([7]) * (5 * MIB)
    assert object_bytes(seaweed, bucket, "big.bin") == expected
