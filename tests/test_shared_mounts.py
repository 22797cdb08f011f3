"""Several mounts, one cache dir: two prefixes of one bucket and two mountpoints of one bucket
at once. Blocks of an object version are fetched once and served to every mount (GETs counted
by the FaultProxy), the size bound is the cache dir's, write-back stays each mount's own; and
under load (2 mounts x 4 readers, a cache much smaller than the data) a kill -9 of one mount
leaves the other reading exact bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import FaultProxy, SeaweedServer
from support.mounting import Mounted, MountEnv, is_mounted, run_cli

pytestmark = pytest.mark.mount

MiB = 1 << 20
BLOCK_FILE = MiB + 4096  # a cached block: 1 MiB and its header


class Env(MountEnv):
    def gets(self, key: str) -> int:
        return self.proxy.count("GET", path_contains=f"/{self.bucket}/{key}")

    def object(self, key: str) -> bytes:
        body: bytes = self.seaweed.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def at(self, name: str, *options: str, prefix: str = "") -> Mounted:
        """A mount of the bucket (or `prefix`) on its own mountpoint, on the shared cache dir."""
        spec = f"test:{self.bucket}" + (f"/{prefix}" if prefix else "")
        return Mounted(self.config, spec, self.mountpoint.parent / name, self.cache_dir, *options)


@pytest.fixture
def env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    make_config: Callable[..., Path],
) -> Env:
    return Env.create(seaweed, proxy, bucket, tmp_path, make_config)


def status(mount: Mounted) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(run_cli("status", "--json", mount.mountpoint).stdout)
    return answer


def wait_for_blocks(mount: Mounted, count: int) -> None:
    """Blocks reach the disk just after they reach the reader (written in the background)."""
    deadline = time.monotonic() + 30
    while status(mount)["cache"]["blocks"] < count:
        assert time.monotonic() < deadline, "the blocks never reached the cache"
        time.sleep(0.05)


def test_prefixes_and_mountpoints_of_one_bucket_share_one_cache(env: Env) -> None:
    v23, v24 = random.randbytes(6 * MiB), random.randbytes(5 * MiB)
    env.put("v23/models/model.pt", v23)
    env.put("v24/models/model.pt", v24)
    with (
        env.at("whole") as whole,
        env.at("v23", "--write-back", "1h", prefix="v23") as mount23,
        env.at("v24", "--write-back", "1h", prefix="v24") as mount24,
        env.at("again") as again,  # the bucket on a second mountpoint
    ):
        assert (whole.mountpoint / "v23/models/model.pt").read_bytes() == v23
        fetched = env.gets("v23/models/model.pt")
        assert fetched > 0
        wait_for_blocks(whole, 6)
        # The same object version through another prefix and another mountpoint: 0 GETs.
        assert (mount23.mountpoint / "models/model.pt").read_bytes() == v23
        assert (again.mountpoint / "v23/models/model.pt").read_bytes() == v23
        assert env.gets("v23/models/model.pt") == fetched
        assert (mount24.mountpoint / "models/model.pt").read_bytes() == v24
        fetched24 = env.gets("v24/models/model.pt")
        wait_for_blocks(mount24, 6 + 5)
        assert (whole.mountpoint / "v24/models/model.pt").read_bytes() == v24
        assert env.gets("v24/models/model.pt") == fetched24
        stored = (6 + 5) * BLOCK_FILE  # each block once, whoever fetched it
        for mount in (whole, mount23, mount24, again):
            assert status(mount)["cache"]["bytes"] == stored
        assert status(mount23)["cache"]["hits"] > 0
        # Write-back is each mount's own: a file pending in v24 (for an hour) does not hold
        # up v23's sync, and each lands under its own prefix.
        (mount24.mountpoint / "out.log").write_bytes(b"v24 pending\n")
        (mount23.mountpoint / "out.log").write_bytes(b"v23 log\n")
        assert run_cli("sync", mount23.mountpoint, timeout=60).returncode == 0
        assert env.object("v23/out.log") == b"v23 log\n"
        assert status(mount24)["writeback"]["files"] == 1
        roots = sorted(path.name for path in env.cache_dir.glob("*/writeback-*"))
        assert len(roots) == len(set(roots)) == 4  # one per mount, by mountpoint
    assert env.object("v24/out.log") == b"v24 pending\n"  # uploaded at unmount


def test_two_mounts_under_load_and_a_kill_9_of_one(env: Env) -> None:
    files = {f"models/m{i}.bin": random.randbytes(4 * MiB + i * 4099) for i in range(8)}
    digests = {key: hashlib.sha256(body).hexdigest() for key, body in files.items()}
    for key, body in files.items():
        env.put(key, body)
    limit = "12M"  # the data is 32 MiB: every round evicts
    errors: list[str] = []

    def reader(root: Path, seed: int, rounds: int, started: threading.Semaphore | None) -> None:
        rng = random.Random(seed)
        for _ in range(rounds):
            order = list(files)
            rng.shuffle(order)
            for key in order:
                try:
                    got = hashlib.sha256((root / key).read_bytes()).hexdigest()
                except OSError as exc:
                    errors.append(f"{root / key}: {exc}")
                    return
                if got != digests[key]:
                    errors.append(f"{root / key}: wrong bytes")
                if started is not None:
                    started.release()
                    started = None

    def run(readers: list[tuple[Path, int, int, threading.Semaphore | None]]) -> list[Any]:
        threads = [threading.Thread(target=reader, args=args) for args in readers]
        for thread in threads:
            thread.start()
        return threads

    with env.at("a", "--cache-max-size", limit) as first:
        with env.at("b", "--cache-max-size", limit, prefix="models") as second:
            roots = (first.mountpoint, second.mountpoint.parent / "b-view")
            roots[1].mkdir()
            (roots[1] / "models").symlink_to(second.mountpoint)  # same keys, second mount
            for thread in run([(root, n * 10 + r, 1, None) for n, root in enumerate(roots)
                               for r in range(4)]):  # fmt: skip
                thread.join()
            assert errors == []
            # The second mount's readers go on while the first is killed under them.
            started = threading.Semaphore(0)
            threads = run([(roots[1], 100 + r, 2, started) for r in range(4)])
            for _ in range(4):
                started.acquire(timeout=60)  # every reader is between files
            first.kill()
            for thread in threads:
                thread.join()
            assert errors == []
            assert status(second)["cache"]["corrupt"] == 0
            assert status(second)["cache"]["bytes"] <= 12 * MiB
        # Mounted again on the shared cache, the killed one reads exact bytes too.
        run_cli("unmount", first.mountpoint)
        assert not is_mounted(first.mountpoint)
    with env.at("a", "--cache-max-size", limit) as again:
        for thread in run([(again.mountpoint, 7, 1, None)]):
            thread.join()
        assert errors == []
        on_disk = sum(path.stat().st_size for path in env.cache_dir.rglob("*.blk"))
        # A process killed between a rename and its ledger update leaves the ledger short
        # by that block (one per writer thread at most), until a mount alone rescans.
        assert on_disk <= 12 * MiB + 4 * BLOCK_FILE
        assert status(again)["cache"]["bytes"] <= 12 * MiB
