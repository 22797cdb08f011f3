"""Real mounts: the `modelfs` CLI in a subprocess, over /dev/fuse, against SeaweedFS.

Requests are counted by the FaultProxy in front of the server (not by modelfs's own counters).
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelfs.host.health import Health, probe
from modelfs.host.meminfo import MEMORY_ENV
from modelfs.host.mountinfo import DEAD_ERRNOS
from support import FaultProxy, SeaweedServer, method_is
from support.marks import page_cache
from support.mounting import MODELFS, Mounted, MountEnv, drop_page_cache, is_mounted, run_cli
from support.pagecache import resident_pages

pytestmark = pytest.mark.mount

MiB = 1 << 20


class Env(MountEnv):
    def gets(self, key: str) -> int:
        return self.proxy.count("GET", path_contains=f"/{self.bucket}/{key}")


@pytest.fixture
def env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    make_config: Callable[..., Path],
) -> Env:
    return Env.create(seaweed, proxy, bucket, tmp_path, make_config)


@pytest.fixture(scope="module")
def blob64() -> bytes:
    return random.Random(64).randbytes(64 * MiB)


def wait_for_blocks(cache_dir: Path, count: int, limit: float = 10.0) -> list[Path]:
    """Blocks reach the disk cache just after they reach the reader (written in background)."""
    deadline = time.monotonic() + limit
    while len(blocks := sorted(cache_dir.rglob("*.blk"))) < count:
        assert time.monotonic() < deadline, f"only {len(blocks)} of {count} blocks cached"
        time.sleep(0.02)
    return blocks


def read_file(path: Path) -> bytes:
    return path.read_bytes()


@page_cache
def test_sequential_random_and_concurrent_reads_are_exact(env: Env, blob64: bytes) -> None:
    env.put("models/blob.dat", blob64)
    with env.mount():
        path = env.mountpoint / "models" / "blob.dat"
        assert path.stat().st_size == len(blob64)
        assert hashlib.sha256(read_file(path)).digest() == hashlib.sha256(blob64).digest()
        rng = random.Random(1)
        with path.open("rb", buffering=0) as file:
            for _ in range(200):
                offset = rng.randrange(0, len(blob64))
                size = rng.choice([1, 4096, 5000, 131072, 1 << 20, 3 << 20])
                file.seek(offset)
                assert file.read(size) == blob64[offset : offset + size]
        drop_page_cache()

        def reader(seed: int) -> bool:
            local = random.Random(seed)
            with path.open("rb", buffering=0) as file:
                for _ in range(40):
                    offset = local.randrange(0, len(blob64))
                    file.seek(offset)
                    if file.read(200_000) != blob64[offset : offset + 200_000]:
                        return False
            return True

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert all(pool.map(reader, range(4)))


def test_cold_concurrent_readers_are_exact(env: Env, blob64: bytes) -> None:
    env.put("blob.dat", blob64)
    with env.mount():
        path = env.mountpoint / "blob.dat"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            digests = list(pool.map(lambda _: hashlib.sha256(read_file(path)).digest(), range(4)))
        assert set(digests) == {hashlib.sha256(blob64).digest()}
    # Four readers of one cold file share GETs: never more GETs than blocks.
    assert env.gets("blob.dat") <= 64


def test_listing_of_2000_keys_and_nested_tree(env: Env) -> None:
    client = env.seaweed.client()

    def put(i: int) -> None:
        client.put_object(Bucket=env.bucket, Key=f"many/f{i:04d}.json", Body=b"%d" % i)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(2000)))
    env.put("a/b/c/d/deep.txt", b"deep")
    env.put("a/b/side.txt", b"side")
    with env.mount():
        names = sorted(os.listdir(env.mountpoint / "many"))
        assert names == [f"f{i:04d}.json" for i in range(2000)]
        assert (env.mountpoint / "many" / "f1234.json").read_bytes() == b"1234"
        walked = sorted(
            os.path.relpath(os.path.join(root, name), env.mountpoint)
            for root, _, files in os.walk(env.mountpoint / "a")
            for name in files
        )
        assert walked == ["a/b/c/d/deep.txt", "a/b/side.txt"]
        assert (env.mountpoint / "a" / "b").is_dir()
        assert not (env.mountpoint / "a" / "nope").exists()


def test_prefix_mount_shows_only_the_prefix(env: Env) -> None:
    env.put("cache_hub_v23/models/model.pt", b"v23")
    env.put("cache_hub_v24/models/model.pt", b"v24")
    env.put("prompts_zh.json", b"{}")
    with env.mount(prefix="cache_hub_v23"):
        assert os.listdir(env.mountpoint) == ["models"]
        assert (env.mountpoint / "models" / "model.pt").read_bytes() == b"v23"


@page_cache
def test_second_read_after_remount_does_not_get_again(env: Env, blob64: bytes) -> None:
    env.put("model.safetensors", blob64[: 20 * MiB])
    with env.mount():
        assert read_file(env.mountpoint / "model.safetensors") == blob64[: 20 * MiB]
    first_gets = env.gets("model.safetensors")
    assert first_gets > 0
    drop_page_cache()
    with env.mount():
        assert read_file(env.mountpoint / "model.safetensors") == blob64[: 20 * MiB]
    assert env.gets("model.safetensors") == first_gets


@page_cache
def test_cached_files_read_back_with_the_server_stopped(env: Env, blob64: bytes) -> None:
    env.put("m.bin", blob64[: 16 * MiB])
    with env.mount("--dir-cache-time", "10m"):
        path = env.mountpoint / "m.bin"
        assert read_file(path) == blob64[: 16 * MiB]
        env.seaweed.stop()
        try:
            drop_page_cache()
            assert read_file(path) == blob64[: 16 * MiB]
        finally:
            env.seaweed.start()


@page_cache
def test_corrupt_block_is_detected_and_refetched(env: Env, blob64: bytes) -> None:
    env.put("c.bin", blob64[: 4 * MiB])
    with env.mount() as mounted:
        path = env.mountpoint / "c.bin"
        assert read_file(path) == blob64[: 4 * MiB]
        before = env.gets("c.bin")
        blocks = wait_for_blocks(env.cache_dir, 4)
        victim = blocks[2]
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        victim.write_bytes(bytes(raw))
        drop_page_cache()
        assert read_file(path) == blob64[: 4 * MiB]
        assert env.gets("c.bin") == before + 1
        assert mounted.status()["cache"]["corrupt"] == 1


def test_cache_stays_within_its_limit(env: Env, blob64: bytes) -> None:
    env.put("big.dat", blob64)
    limit = 8 * MiB
    readers = 4
    peak = 0
    stop = threading.Event()

    def cache_bytes() -> int:
        return sum(p.stat().st_size for p in env.cache_dir.rglob("*") if p.is_file())

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, cache_bytes())
            except FileNotFoundError:
                pass

    with env.mount("--cache-max-size", "8M"):
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            path = env.mountpoint / "big.dat"
            with concurrent.futures.ThreadPoolExecutor(readers) as pool:
                assert all(d == blob64 for d in pool.map(lambda _: read_file(path), range(4)))
        finally:
            stop.set()
            sampler.join()
    slack = readers * (MiB + 4096) + 64 * 1024  # one block (+header) per reader, + lock/log
    assert peak <= limit + slack + (2 << 20)  # log file and lock live in the cache dir too
    assert cache_bytes() <= limit + 3 * MiB


def test_object_replaced_between_reads_shows_the_new_version(env: Env) -> None:
    old, new = os.urandom(3 * MiB), os.urandom(3 * MiB)
    env.put("v.bin", old)
    with env.mount("--dir-cache-time", "1s"):
        path = env.mountpoint / "v.bin"
        assert read_file(path) == old
        env.put("v.bin", new)
        time.sleep(1.2)  # the listing TTL is a real-time property of a real mount
        assert read_file(path) == new


def test_object_replaced_during_a_read_never_mixes(env: Env) -> None:
    old, new = os.urandom(24 * MiB), os.urandom(24 * MiB)
    env.put("v.bin", old)
    with env.mount():
        path = env.mountpoint / "v.bin"
        with path.open("rb", buffering=0) as file:
            head = file.read(MiB)
            env.put("v.bin", new)
            rest = b""
            try:
                while chunk := file.read(MiB):
                    rest += chunk
            except OSError as exc:
                errno_seen = exc.errno
            else:
                errno_seen = 0
        if errno_seen:
            assert errno_seen in (116, 5)  # ESTALE (or EIO from the kernel)
            return
        assert head + rest == old


def test_writes_are_refused_read_only(env: Env) -> None:
    env.put("r.txt", b"r")
    with env.mount("--read-only"):
        for action in (
            lambda: (env.mountpoint / "new.txt").write_bytes(b"x"),
            lambda: (env.mountpoint / "r.txt").write_bytes(b"x"),
            lambda: (env.mountpoint / "d").mkdir(),
            lambda: (env.mountpoint / "r.txt").unlink(),
        ):
            with pytest.raises(OSError, match="Read-only file system") as caught:
                action()
            assert caught.value.errno == 30  # EROFS


def settled_reads(mounted: Mounted) -> int:
    """The mount's read count once it has not changed for 1.5 s (at most 20 s): the kernel's
    readahead and the page-cache fill pause for longer than a moment on a busy machine."""
    reads, deadline, still = mounted.status()["fs"]["reads"], time.monotonic() + 20, 0
    while time.monotonic() < deadline and still < 3:
        time.sleep(0.5)
        now = mounted.status()["fs"]["reads"]
        still = still + 1 if now == reads else 0
        reads = now
    return int(reads)


@page_cache
def test_keep_cache_serves_a_reopen_from_the_kernel(env: Env) -> None:
    """A reopen of an unchanged file reaches modelfs only for pages the kernel no longer holds.

    The kernel may reclaim pages by itself (`page_cache` pauses this machine kind's DAMON
    `pageout`, the reclaim that struck before; other reclaim may remain), so the pages missing
    just before the reopen are counted; without keep_cache every open would drop all of them,
    and the reopen would reach modelfs for the whole file."""
    data = os.urandom(8 * MiB)
    env.put("k.bin", data)
    pages = len(data) // mmap.PAGESIZE
    with env.mount() as mounted:
        path = env.mountpoint / "k.bin"
        assert read_file(path) == data
        tries = []  # (reads of the reopen that reached modelfs, pages missing before it)
        for _ in range(3):  # the machine's reclaim may strike between the count and the read
            reads = settled_reads(mounted)
            missing = pages - resident_pages(path)
            assert read_file(path) == data
            tries.append((mounted.status()["fs"]["reads"] - reads, missing))
            if missing < pages // 2 and tries[-1][0] <= missing:
                break
        reached, missing = tries[-1]
        assert missing < pages // 2, f"the kernel kept {pages - missing} of {pages} pages"
        assert reached <= missing, tries  # nothing the kernel held reached modelfs


@page_cache
def test_status_says_what_the_mount_read_fetched_and_holds(env: Env) -> None:
    data = os.urandom(8 * MiB)
    env.put("s.bin", data)
    with env.mount("--max-memory", "64M"):
        assert read_file(env.mountpoint / "s.bin") == data
        shown = run_cli("status", env.mountpoint, check=True).stdout.splitlines()
    lines = {line.split(":", 1)[0]: line for line in shown[1:]}
    assert f":{env.bucket} on {env.mountpoint} (pid " in shown[0]
    assert lines["reads"].startswith("reads: ")
    assert (
        "8.0M served, 0 files open, page cache: 0B filled ahead, 0B dropped behind"
        in lines["reads"]
    )
    assert lines["fetched"].startswith("fetched: 8.0M in ")
    assert lines["memory"].startswith("memory: ")
    assert "in use of 64.0M, peak " in lines["memory"]
    assert lines["cache"].startswith("cache: ")


def test_the_health_probe_never_waits_on_the_store(env: Env, blob64: bytes) -> None:
    """What `modelfs run`'s watchdog asks (stat + statfs of the root) is answered while the
    store keeps a read waiting: a slow store never makes a live mount look hung."""
    env.put("cold.bin", blob64)
    with env.mount("--no-warm-up"):
        env.proxy.delay_next(10.0, times=None, match=method_is("GET"))
        reader = threading.Thread(target=(env.mountpoint / "cold.bin").read_bytes)
        reader.start()
        try:
            time.sleep(1.0)  # the read is waiting on its GET now
            assert reader.is_alive()
            started = time.monotonic()
            assert probe(str(env.mountpoint), 5).health is Health.HEALTHY
            assert time.monotonic() - started < 1.0
        finally:
            env.proxy.clear_faults()
            reader.join(60)


def test_foreground_mount_unmounts_cleanly_on_sigterm_and_sigint(env: Env) -> None:
    env.put("f.txt", b"foreground")
    env.mountpoint.mkdir()
    for sig in (signal.SIGTERM, signal.SIGINT):
        process = subprocess.Popen(
            [*MODELFS, "--config", str(env.config), "mount", "--cache-dir", str(env.cache_dir),
             f"test:{env.bucket}", str(env.mountpoint)],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with process:
            deadline = time.monotonic() + 30
            while not is_mounted(env.mountpoint) and time.monotonic() < deadline:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.05)
            assert (env.mountpoint / "f.txt").read_bytes() == b"foreground"
            process.send_signal(sig)
            try:
                assert process.wait(timeout=30) == 0
                assert not is_mounted(env.mountpoint)
            finally:
                if process.poll() is None:
                    process.kill()
                if is_mounted(env.mountpoint):
                    subprocess.run(["fusermount3", "-u", "-z", str(env.mountpoint)], check=False)


def test_unmount_of_a_dead_mount(env: Env) -> None:
    env.put("d.txt", b"d")
    mounted = env.mount()
    with mounted:
        mounted.kill()  # SIGKILL: the kernel keeps a dead mount behind
        with pytest.raises(OSError, match=r"not connected|connection abort") as caught:
            os.listdir(env.mountpoint)
        # ENOTCONN ("Transport endpoint is not connected"), or ECONNABORTED while the kernel
        # still aborts the connection of a daemon that just died
        assert caught.value.errno in DEAD_ERRNOS
        line = run_cli("--config", env.config, "mount", f"test:{env.bucket}", env.mountpoint)
        assert "dead mount" in line.stderr
        assert "modelfs unmount" in line.stderr
        result = run_cli("unmount", env.mountpoint)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(env.mountpoint)
        # ...and the same mountpoint mounts again, with the same cache.
        with env.mount():
            assert (env.mountpoint / "d.txt").read_bytes() == b"d"


def read_sequentially(path: Path) -> bytes:
    out = bytearray()
    with path.open("rb", buffering=0) as file:
        while chunk := file.read(MiB):
            out += chunk
    return bytes(out)


def mostly(size: int) -> int:
    """9 in 10 of the pages of `size` bytes: the kernel may reclaim a few pages of anything it
    keeps (one CI run found 126 of 32,768 gone), but a dropped range has none left."""
    return size // mmap.PAGESIZE * 9 // 10


def read_until_kept(path: Path, data: bytes, start: int = 0, tries: int = 3) -> int:
    """Read the file sequentially (checking its bytes) until the kernel holds most of bytes
    [start, end) right after the read, at most `tries` times; the pages it held after the last.

    This machine kind's proactive reclaim (DAMON `pageout` of unmapped page cache) took a
    whole fresh file within a second of its read, with no drop of ours, before `page_cache`
    paused it: one suite run found none of 32,768 pages left. The rounds stay for any other
    reclaim. What the mount dropped, the callers check in its own counter."""
    for _ in range(tries):
        assert read_sequentially(path) == data
        kept = resident_pages(path, start)
        if kept >= mostly(len(data) - start):
            break
    return kept


@page_cache
def test_drop_behind_leaves_little_page_cache_behind_a_huge_files_reader(env: Env) -> None:
    data = random.Random(5).randbytes(128 * MiB)
    env.put("huge.bin", data)
    env.put("other.bin", data[: 64 * MiB])
    with env.mount("--drop-behind", "100M") as mounted:
        path = env.mountpoint / "huge.bin"
        drop_page_cache()
        assert read_sequentially(path) == data
        # The last read was at 127 MiB: 32 MiB behind it, rounded down to a 32 MiB step.
        assert resident_pages(path, 0, 64 * MiB) == 0
        assert mounted.status()["fs"]["dropped_behind"] == 64 * MiB
        if resident_pages(path, 96 * MiB) < mostly(32 * MiB):  # the machine's reclaim took them
            assert read_until_kept(path, data, 96 * MiB) >= mostly(32 * MiB)
            assert resident_pages(path, 0, 64 * MiB) == 0
        dropped = mounted.status()["fs"]["dropped_behind"]
        other = env.mountpoint / "other.bin"  # under --drop-behind: all of it stays
        assert read_until_kept(other, data[: 64 * MiB]) >= mostly(64 * MiB)
        assert mounted.status()["fs"]["dropped_behind"] == dropped  # nothing of it
        # close(2) waited for the drop under way: nothing of ours keeps the mount busy.
        assert run_cli("unmount", env.mountpoint).returncode == 0


@page_cache
def test_drop_behind_keeps_pages_a_process_has_mapped(env: Env) -> None:
    data = random.Random(6).randbytes(128 * MiB)
    env.put("huge.bin", data)
    with env.mount("--drop-behind", "100M") as mounted:
        path = env.mountpoint / "huge.bin"
        # Blocks cached first: a fault that waited for the proxy, which runs in this process,
        # would wait for the GIL this thread holds while it faults.
        assert read_sequentially(path) == data
        drop_page_cache()
        dropped = mounted.status()["fs"]["dropped_behind"]
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped:
            assert sum(mapped[offset] for offset in range(0, len(data), mmap.PAGESIZE)) == sum(
                data[offset] for offset in range(0, len(data), mmap.PAGESIZE)
            )  # every page faulted in, in order: the mapping is the file's one reader
            assert mounted.status()["fs"]["dropped_behind"] > dropped  # drops were asked for
            assert resident_pages(path) >= mostly(len(data))  # and left mapped pages alone
            assert mapped[:] == data


@page_cache
def test_without_drop_behind_a_read_file_stays_in_the_page_cache(env: Env) -> None:
    data = random.Random(7).randbytes(128 * MiB)
    env.put("huge.bin", data)
    with env.mount("--drop-behind", "0") as mounted:
        path = env.mountpoint / "huge.bin"
        drop_page_cache()
        assert read_until_kept(path, data) >= mostly(128 * MiB)
        assert mounted.status()["fs"]["dropped_behind"] == 0


@page_cache
def test_drop_behind_auto_keeps_the_page_cache_with_memory_to_spare(env: Env) -> None:
    """The default (`auto`) on a machine with memory to spare: a file read once stays in the
    page cache, and a second read reaches the mount only for pages the kernel reclaimed by
    itself meanwhile (see `test_keep_cache_serves_a_reopen_from_the_kernel`)."""
    data = random.Random(8).randbytes(128 * MiB)
    env.put("model.bin", data)
    pages = len(data) // mmap.PAGESIZE
    with env.mount() as mounted:
        path = env.mountpoint / "model.bin"
        drop_page_cache()
        assert read_until_kept(path, data) >= mostly(len(data))
        tries = []  # (bytes the re-read took from the mount, pages missing before it)
        for _ in range(3):  # the machine's reclaim may strike between the count and the read
            before = mounted.status()["fs"]
            missing = pages - resident_pages(path)
            assert read_sequentially(path) == data  # the hot re-read
            reached = mounted.status()["fs"]["bytes_read"] - before["bytes_read"]
            tries.append((reached, missing))
            if missing < pages // 2 and reached <= missing * mmap.PAGESIZE + len(data) // 10:
                break
        assert mounted.status()["fs"]["dropped_behind"] == 0
        reached, missing = tries[-1]
        assert missing < pages // 2, f"the kernel kept {pages - missing} of {pages} pages"
        assert reached <= missing * mmap.PAGESIZE + len(data) // 10, tries


@page_cache
def test_drop_behind_auto_drops_when_memory_is_short(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same read with less than 4x the file available (injected: a small machine, or a
    cgroup with a low limit) keeps only the last 32 MiB behind the reader."""
    data = random.Random(9).randbytes(128 * MiB)
    env.put("model.bin", data)
    monkeypatch.setenv(MEMORY_ENV, "511M")
    with env.mount() as mounted:
        path = env.mountpoint / "model.bin"
        drop_page_cache()
        assert read_sequentially(path) == data
        assert resident_pages(path, 0, 64 * MiB) == 0
        assert mounted.status()["fs"]["dropped_behind"] == 64 * MiB


def wait_for_status(mounted: Any, condition: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition(mounted.status()["fs"]):
        assert time.monotonic() < deadline, mounted.status()["fs"]
        time.sleep(0.1)


def wait_for_resident(path: Path, pages: int, limit: float = 10.0) -> None:
    """Wait until the kernel holds at least `pages` pages of the file: a fill advises the
    kernel's readahead, whose reads may still be in flight when the advice returns."""
    deadline = time.monotonic() + limit
    while (resident := resident_pages(path)) < pages:
        assert time.monotonic() < deadline, f"{resident} of the file's pages held, not {pages}"
        time.sleep(0.1)


@page_cache
def test_a_model_file_is_filled_into_the_page_cache_with_memory_to_spare(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a model file fetches it whole and, with memory to spare, brings it into the
    page cache part by part (through ordinary reads): random reads then never reach the
    mount. With memory short, nothing is filled."""
    data = random.Random(10).randbytes(96 * MiB)
    env.put("model.safetensors", data)
    with env.mount() as mounted:
        path = env.mountpoint / "model.safetensors"
        drop_page_cache()
        with path.open("rb", buffering=0) as file:
            assert file.read(4096) == data[:4096]  # a header, as a loader reads it
            wait_for_status(mounted, lambda fs: fs["filled_ahead"] == len(data))
            wait_for_resident(path, mostly(len(data)))  # the last parts' reads may be under way
            rng = random.Random(11)
            reached = []  # per round of 200 random reads, the reads that reached the mount
            for _ in range(3):  # a round the machine's own reclaim struck is tried again
                reads = mounted.status()["fs"]["reads"]
                for _ in range(200):
                    offset = rng.randrange(len(data))  # new offsets: none read before
                    file.seek(offset)
                    assert file.read(4096) == data[offset : offset + 4096]
                reached.append(mounted.status()["fs"]["reads"] - reads)
                if reached[-1] < 20:  # the page cache served them, but for a few pages
                    break
            assert reached[-1] < 20, reached
    monkeypatch.setenv(MEMORY_ENV, "300M")
    shutil.rmtree(env.cache_dir)
    with env.mount() as mounted:
        drop_page_cache()
        with path.open("rb", buffering=0) as file:
            assert file.read(4096) == data[:4096]
            wait_for_status(mounted, lambda fs: fs["background_fetches"] == 0)
        assert mounted.status()["fs"]["filled_ahead"] == 0
        assert resident_pages(path) < mostly(len(data))


def test_no_fill_outlives_the_close_of_a_model_files_last_reader(env: Env) -> None:
    """close(2) of the last reader waits for the fill under way, and none starts once the
    file is released, so the mount can be unmounted right after (no descriptor of ours keeps
    it busy)."""
    data = random.Random(12).randbytes(128 * MiB)
    env.put("model.safetensors", data)
    with env.mount() as mounted:
        path = env.mountpoint / "model.safetensors"
        for _ in range(3):
            with path.open("rb", buffering=0) as file:
                assert file.read(4096) == data[:4096]
                time.sleep(0.3)  # fetching and filling
        assert mounted.status()["fs"]["filled_ahead"] > 0
        assert run_cli("unmount", env.mountpoint).returncode == 0


def test_a_file_that_does_not_match_the_manifest_gives_eio_never_wrong_bytes(env: Env) -> None:
    """Verify-while-fill: the prefix's manifest pins each file's sha256; a file whose bytes
    differ (replaced behind the manifest's back) fails its reads with EIO before a reader
    could get all of it, while the good files read as usual; status counts both."""
    good, bad = os.urandom(9 * MiB), os.urandom(9 * MiB)
    env.put("m/good.safetensors", good)
    env.put("m/bad.safetensors", bad)
    manifest = {
        "name": "t",
        "version": "1",
        "files": [
            {"path": "good.safetensors", "size": len(good), "sha256": sha256_hex(good)},
            {"path": "bad.safetensors", "size": len(bad), "sha256": sha256_hex(b"x" + bad[1:])},
        ],
    }
    env.put("m/manifest.json", json.dumps(manifest).encode())
    with env.mount(prefix="m") as mounted:
        assert read_file(env.mountpoint / "good.safetensors") == good
        with pytest.raises(OSError, match="Input/output error") as caught:
            read_file(env.mountpoint / "bad.safetensors")
        assert caught.value.errno == errno.EIO
        with pytest.raises(OSError, match="Input/output error"):
            read_file(env.mountpoint / "bad.safetensors")  # from then on
        fs = mounted.status()["fs"]
        assert (fs["verified"], fs["verify_failed"]) == (1, 1)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
