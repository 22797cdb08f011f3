"""Drills on the read path: faults on the network in both lanes of the store, an object
replaced while it is read, and damaged block files in the cache.

Two mounts for the whole module (`support.sharedmount`): one with the lean lane (data GETs go
lean first, botocore on any failure), one with the lean lane off (botocore sends every request).
Each drill reads its own files, 4 MiB of seeded random bytes, and injects its faults in the
FaultProxy for those keys only. Every byte read is compared with what was put in the bucket.

Limits: a request waits at most STORE_TIMEOUT for bytes (`--store-timeout`); botocore tries
three times, backing off at most 1 s then 2 s (standard retry mode), and in the lean mount the
lean lane has tried once before. SLACK covers a loaded 2-core test machine.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelfs.cache.blockfile import HEADER_SIZE, key_digest
from support import SeaweedServer
from support.drills import Drill
from support.lanes import lane_of
from support.marks import page_cache
from support.mounting import drop_page_cache
from support.proxy import Predicate, ProxyRequest
from support.sharedmount import STORE_TIMEOUT, TTL, MiB, SharedMount, gets_of, payload, shared_mount

pytestmark = pytest.mark.mount

SIZE = 4 * MiB
SLACK = 5.0
BACKOFF = 1.0 + 2.0  # botocore's standard mode: at most 1 s before the 2nd try, 2 s before the 3rd
STORM_LIMIT = 2 * STORE_TIMEOUT + BACKOFF + SLACK
BROKEN_BODY_LIMIT = SLACK
BLACKHOLE_LIMIT = (1 + 3) * STORE_TIMEOUT + BACKOFF + SLACK
LEAN_ONLY_LIMIT = 2 * STORE_TIMEOUT + SLACK

REPLACED_SIZE = 8 * MiB  # more than one readahead part: the rest is fetched after the swap
CACHED_READ_LIMIT = SLACK

LEAN_KEYS = (
    "replaced.dat",
    "corrupt.dat",
    "short.dat",
    "storm-5xx.dat",
    "storm-slowdown.dat",
    "reset.dat",
    "truncated.dat",
    "blackhole.dat",
    "lean-blackhole.dat",
)
BOTO_KEYS = ("reset.dat", "truncated.dat", "blackhole.dat")


@pytest.fixture(scope="module")
def lean(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedMount]:
    files = {key: payload(f"lean/{key}", SIZE) for key in LEAN_KEYS}
    files["replaced.dat"] = payload("lean/replaced.dat", REPLACED_SIZE)
    with shared_mount(seaweed, tmp_path_factory.mktemp("drill-lean"), files) as mount:
        yield mount


@pytest.fixture(scope="module")
def boto(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedMount]:
    files = {key: payload(f"boto/{key}", SIZE) for key in BOTO_KEYS}
    directory = tmp_path_factory.mktemp("drill-boto")
    with shared_mount(seaweed, directory, files, lean=False) as mount:
        yield mount


@pytest.fixture(params=["lean", "boto"])
def mount(request: pytest.FixtureRequest) -> SharedMount:
    """The shared mount of the lane the drill's parameter names."""
    chosen: SharedMount = request.getfixturevalue(request.param)
    return chosen


def read_back(drill: Drill, mount: SharedMount, key: str) -> None:
    """Read `key` whole through the mount; it must come back complete and exact."""
    failed = drill.read_whole(mount.path(key), mount.files[key])
    assert failed is None, f"{key}: {failed}"


def storm(mount: SharedMount, key: str, statuses: tuple[int, ...], tries: int = 2) -> None:
    """Each range of `key` fails its first `tries` requests (statuses in turn), then passes:
    every GET meets the storm, and botocore's third try gets through."""
    seen: Counter[str | None] = Counter()
    verdicts: dict[int, int | None] = {}

    def verdict(request: ProxyRequest) -> int | None:
        if id(request) not in verdicts:  # predicates run under the proxy's lock
            status = None
            if gets_of(key)(request):
                tried = seen[request.range]
                seen[request.range] += 1
                status = statuses[tried % len(statuses)] if tried < tries else None
            verdicts[id(request)] = status
        return verdicts[id(request)]

    def answered_with(status: int) -> Predicate:
        return lambda request: verdict(request) == status

    for status in sorted(set(statuses)):
        mount.proxy.fail_next(status, times=None, match=answered_with(status))


def faulted(mount: SharedMount, key: str, kind: str) -> int:
    return sum(1 for r in mount.proxy.requests if r.fault == kind and gets_of(key)(r))


@pytest.mark.drill("5xx storm during a cold read", limit=STORM_LIMIT)
def test_a_5xx_storm_during_a_cold_read(lean: SharedMount, drill: Drill) -> None:
    storm(lean, "storm-5xx.dat", (500, 502, 504))
    read_back(drill, lean, "storm-5xx.dat")
    assert faulted(lean, "storm-5xx.dat", "status") >= 2
    drill.finish()


@pytest.mark.drill("SlowDown storm during a cold read", limit=STORM_LIMIT)
def test_a_slowdown_storm_during_a_cold_read(lean: SharedMount, drill: Drill) -> None:
    storm(lean, "storm-slowdown.dat", (503,))
    read_back(drill, lean, "storm-slowdown.dat")
    assert faulted(lean, "storm-slowdown.dat", "status") >= 2
    drill.finish()


def in_lane(mount: SharedMount, key: str) -> Predicate:
    """Predicate: GETs of `key` sent by the lane the mount sends data GETs in first."""
    return lambda r: gets_of(key)(r) and lane_of(r) == mount.lane


@pytest.mark.parametrize(
    "mount",
    [
        pytest.param("lean", marks=pytest.mark.drill("resets mid-body, lean lane", limit=SLACK)),
        pytest.param("boto", marks=pytest.mark.drill("resets mid-body, boto3 lane", limit=SLACK)),
    ],
    indirect=True,
)
def test_resets_mid_body(mount: SharedMount, drill: Drill) -> None:
    mount.proxy.reset_next(after_bytes=300_000, times=3, match=in_lane(mount, "reset.dat"))
    read_back(drill, mount, "reset.dat")
    assert mount.lanes_faulted("reset.dat") == {mount.lane}
    drill.finish()


@pytest.mark.parametrize(
    "mount",
    [
        pytest.param(
            "lean", marks=pytest.mark.drill("truncated bodies, lean lane", limit=BROKEN_BODY_LIMIT)
        ),
        pytest.param(
            "boto", marks=pytest.mark.drill("truncated bodies, boto3 lane", limit=BROKEN_BODY_LIMIT)
        ),
    ],
    indirect=True,
)
def test_truncated_bodies(mount: SharedMount, drill: Drill) -> None:
    """The server closes cleanly (FIN) after part of the body its Content-Length announced."""
    mount.proxy.truncate_next(after_bytes=200_000, times=3, match=in_lane(mount, "truncated.dat"))
    read_back(drill, mount, "truncated.dat")
    assert mount.lanes_faulted("truncated.dat") == {mount.lane}
    drill.finish()


@pytest.mark.parametrize(
    "mount",
    [
        pytest.param(
            "lean", marks=pytest.mark.drill("blackholed store, lean lane", limit=BLACKHOLE_LIMIT)
        ),
        pytest.param(
            "boto", marks=pytest.mark.drill("blackholed store, boto3 lane", limit=BLACKHOLE_LIMIT)
        ),
    ],
    indirect=True,
)
def test_a_blackholed_store(mount: SharedMount, drill: Drill) -> None:
    """Every GET of the file is accepted and never answered: the read fails (EIO) within the
    limit instead of hanging, and reads exactly once the store answers again."""
    hole = mount.proxy.blackhole_next(times=None, match=gets_of("blackhole.dat"))
    failed = drill.read_whole(mount.path("blackhole.dat"), mount.files["blackhole.dat"])
    assert failed is not None
    assert failed.errno == errno.EIO
    assert mount.lanes_faulted("blackhole.dat") >= {mount.lane}
    mount.proxy.remove_fault(hole)
    read_back(drill, mount, "blackhole.dat")
    drill.finish()


@pytest.mark.drill("blackholed lean lane alone (botocore takes over)", limit=LEAN_ONLY_LIMIT)
def test_a_blackholed_lean_lane_falls_back_to_botocore(lean: SharedMount, drill: Drill) -> None:
    key = "lean-blackhole.dat"
    lean.proxy.blackhole_next(times=None, match=in_lane(lean, key))
    read_back(drill, lean, key)
    assert lean.lanes_faulted(key) == {"lean"}
    drill.finish()


@pytest.mark.drill("object replaced during a read", limit=CACHED_READ_LIMIT)
def test_the_object_replaced_during_a_read(lean: SharedMount, drill: Drill) -> None:
    """Bytes of the old version or ESTALE/EIO, never a mix; after the TTL, the new version."""
    key = "replaced.dat"
    old, new = lean.files[key], payload("lean/replaced.dat v2", REPLACED_SIZE)
    fd = drill.call(lambda: os.open(lean.path(key), os.O_RDONLY))
    offset, refused = 0, 0
    try:
        while piece := drill.call(lambda: os.read(fd, MiB)):
            drill.compare(piece, old, offset)
            offset += len(piece)
            if offset == MiB:
                lean.env.put(key, new)
    except OSError as exc:
        refused = exc.errno or -1
    finally:
        os.close(fd)
    assert refused in (0, errno.ESTALE, errno.EIO)  # the old bytes to the end, or a refusal
    time.sleep(TTL + 0.2)
    failed = drill.read_whole(lean.path(key), new)
    assert failed is None, failed
    drill.finish()


def block_files(mount: SharedMount, key: str, count: int, limit: float = 10.0) -> list[Path]:
    """The cache's block files of `key` (written in the background, so waited for)."""
    pattern = f"**/{key_digest(key).hex()}-*.blk"
    deadline = time.monotonic() + limit
    while len(found := sorted(mount.env.cache_dir.glob(pattern))) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} blocks of {key} cached"
        time.sleep(0.02)
    return found


def damage_a_block_and_read_again(
    drill: Drill, mount: SharedMount, key: str, damage: Callable[[Path], None]
) -> None:
    read_back(drill, mount, key)
    blocks = block_files(mount, key, SIZE // MiB)
    corrupt_before = mount.mounted.status()["cache"]["corrupt"]
    damage(blocks[1])
    drop_page_cache()  # the next read must come from the block cache, not the kernel's pages
    read_back(drill, mount, key)
    assert mount.mounted.status()["cache"]["corrupt"] == corrupt_before + 1


@page_cache
@pytest.mark.drill("corrupt block in the cache", limit=CACHED_READ_LIMIT)
def test_a_corrupt_block(lean: SharedMount, drill: Drill) -> None:
    def flip_a_payload_byte(block: Path) -> None:
        raw = bytearray(block.read_bytes())
        raw[HEADER_SIZE + 4242] ^= 0xFF
        block.write_bytes(bytes(raw))

    damage_a_block_and_read_again(drill, lean, "corrupt.dat", flip_a_payload_byte)
    drill.finish()


@page_cache
@pytest.mark.drill("truncated block file in the cache", limit=CACHED_READ_LIMIT)
def test_a_truncated_block_file(lean: SharedMount, drill: Drill) -> None:
    def cut_in_half(block: Path) -> None:
        os.truncate(block, block.stat().st_size // 2)

    damage_a_block_and_read_again(drill, lean, "short.dat", cut_in_half)
    drill.finish()
