"""A mount with several sources (docs/fleet.md): reads from a site cache first, the origin
after it, listings and writes from the origin; real mounts against real SeaweedFS servers.

The "site" is a second bucket behind its own FaultProxy (down, throttled, missing an object,
holding another version), or, in the last tests, a second SeaweedFS whose bucket is a remote
mount of the origin's: the recipe of docs/fleet.md, with its own ETags. Which bytes came from
where is counted by the proxies, and by the mount's own counters (`modelfs status`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import (
    ACCESS_KEY,
    SECRET_KEY,
    SITE_ARGS,
    FaultProxy,
    ProxyRequest,
    SeaweedServer,
    make_config,
    remote_mount_commands,
    unique_bucket_name,
)
from support.metrics import free_port, scrape, value
from support.mounting import Mounted, run_cli

pytestmark = pytest.mark.mount

MiB = 1 << 20


@dataclass
class Fleet:
    """An origin bucket and a site bucket, each behind its proxy, and a node's paths."""

    origin: SeaweedServer
    origin_proxy: FaultProxy
    bucket: str
    site: SeaweedServer
    site_proxy: FaultProxy
    site_bucket: str
    config: Path
    tmp: Path

    def put(self, key: str, data: bytes, *, site: bool | bytes = True) -> None:
        """`data` at the origin, and at the site too (`site`: True, or other bytes)."""
        self.origin.client().put_object(Bucket=self.bucket, Key=key, Body=data)
        if site is not False:
            body = data if site is True else site
            self.site.client().put_object(Bucket=self.site_bucket, Key=key, Body=body)

    def mount(self, *options: str, name: str = "node") -> Mounted:
        return Mounted(
            self.config,
            f"origin:{self.bucket}",
            self.tmp / name / "mnt",
            self.tmp / name / "cache",
            *options,
        )

    def site_gets(self, key: str) -> int:
        return self.site_proxy.count("GET", path_contains=f"/{self.site_bucket}/{key}")

    def origin_gets(self, key: str) -> int:
        return self.origin_proxy.count("GET", path_contains=f"/{self.bucket}/{key}")


def write_config(tmp: Path, remotes: dict[str, str], sources: str = "") -> Path:
    """An rclone-style config with one remote per (name, endpoint); `sources` in [origin]."""
    path = tmp / "modelfs.conf"
    for name, endpoint in remotes.items():
        extra = f"sources = {sources}" if name == "origin" and sources else ""
        path = make_config(tmp, endpoint, name=name, extra=extra)
    return path


@pytest.fixture
def fleet(
    seaweed: SeaweedServer, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> Iterator[Fleet]:
    site_bucket = seaweed.create_bucket(unique_bucket_name("site"))
    with FaultProxy(seaweed.endpoint) as site_proxy:
        config = write_config(
            tmp_path,
            {"origin": proxy.endpoint, "site": site_proxy.endpoint},
            sources=f"site:{site_bucket}, origin:{bucket}",
        )
        yield Fleet(seaweed, proxy, bucket, seaweed, site_proxy, site_bucket, config, tmp_path)


def node_with_a_manifest(
    tmp_path: Path, proxy: FaultProxy, site: SeaweedServer, bucket: str
) -> Path:
    """A node's config (the site first, the origin through `proxy` second), and the manifest
    of `llama/` created from the origin and uploaded there."""
    config = write_config(
        tmp_path,
        {"origin": proxy.endpoint, "site": site.endpoint},
        sources=f"site:{bucket}, origin:{bucket}",
    )
    created = run_cli(
        "--config", config, "manifest", "create", f"origin:{bucket}/llama", "--upload"
    )
    assert created.returncode == 0, created.stderr
    return config


def status_sources(mounted: Mounted) -> dict[str, dict[str, int]]:
    sources = mounted.status()["sources"]
    assert sources is not None
    counts: dict[str, dict[str, int]] = sources["by_source"]
    return counts


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_reads_come_from_the_site_listings_and_writes_from_the_origin(fleet: Fleet) -> None:
    data = random.Random(1).randbytes(24 * MiB)
    fleet.put("m/model.bin", data)
    with fleet.mount() as mounted:
        path = mounted.mountpoint / "m" / "model.bin"
        assert digest(path.read_bytes()) == digest(data)
        (mounted.mountpoint / "m" / "out.txt").write_text("written on the node")
        assert run_cli("sync", mounted.mountpoint).returncode == 0
        counts = status_sources(mounted)
    assert fleet.site_gets("m/model.bin") >= 1
    assert fleet.origin_gets("m/model.bin") == 0  # same ETag (single-part PUT): the site's
    assert counts[f"site:{fleet.site_bucket}"]["bytes"] == len(data)
    assert counts[f"origin:{fleet.bucket}"]["bytes"] == 0
    assert fleet.site_proxy.count("GET", path_contains="list-type") == 0
    assert fleet.origin_proxy.count("GET", path_contains="list-type") >= 1
    assert fleet.origin_proxy.count("PUT", path_contains="m/out.txt") == 1
    assert fleet.site_proxy.count("PUT") == 0


def test_a_site_that_is_down_sends_reads_to_the_origin(fleet: Fleet) -> None:
    """With a log line, the status counters, and the same counters in /metrics."""
    data = random.Random(2).randbytes(20 * MiB)
    fleet.put("m/model.bin", data)
    fleet.site_proxy.stop()  # connection refused, as a site cache that is down
    port = free_port()
    with fleet.mount("--read-only", "--metrics", str(port)) as mounted:
        assert digest((mounted.mountpoint / "m" / "model.bin").read_bytes()) == digest(data)
        counts = status_sources(mounted)
        _, samples = scrape(port)
        shown = run_cli("status", mounted.mountpoint, check=True).stdout
        log = (mounted.cache_dir / "modelfs.log").read_text()
    site, origin = f"site:{fleet.site_bucket}", f"origin:{fleet.bucket}"
    assert counts[site]["failures"] >= 1
    assert counts[origin]["bytes"] == len(data)
    assert "trying the next source" in log
    assert f"sources: {site} 0B, {counts[site]['failures']} failed; {origin} 20.0M;" in shown
    failed = value(samples, "modelfs_source_fallbacks_total", source=site, reason="failure")
    assert failed == counts[site]["failures"]
    assert value(samples, "modelfs_source_bytes_total", source=origin) == len(data)
    assert value(samples, "modelfs_source_fallbacks_total", source=origin, reason="slow") == 0


def test_a_site_that_dies_mid_file_hands_the_rest_to_the_origin(fleet: Fleet) -> None:
    data = random.Random(3).randbytes(24 * MiB)
    fleet.put("m/model.bin", data)
    # The site answers its first GET in full, dies 1 MiB into its second (that connection is
    # reset), and refuses every request after it, so no retry on the site can finish a read.
    numbers: dict[int, int] = {}  # id(request) -> its place among the site's GETs of the file

    def nth_get(request: ProxyRequest) -> int:
        if request.method != "GET" or "m/model.bin" not in request.path:
            return 0
        return numbers.setdefault(id(request), len(numbers) + 1)

    dying = fleet.site_proxy.reset_next(after_bytes=MiB, match=lambda r: nth_get(r) == 2)
    fleet.site_proxy.reset_next(after_bytes=None, times=None, match=lambda _: not dying.remaining)
    with fleet.mount("--read-only") as mounted:
        assert digest((mounted.mountpoint / "m" / "model.bin").read_bytes()) == digest(data)
        counts = status_sources(mounted)
    site, origin = counts[f"site:{fleet.site_bucket}"], counts[f"origin:{fleet.bucket}"]
    assert site["failures"] >= 1
    assert site["bytes"] > 0
    assert origin["bytes"] > 0
    assert site["bytes"] + origin["bytes"] >= len(data)


def test_an_object_missing_at_the_site_comes_from_the_origin(fleet: Fleet) -> None:
    here, missing = random.Random(4).randbytes(3 * MiB), random.Random(5).randbytes(3 * MiB)
    fleet.put("m/here.bin", here)
    fleet.put("m/missing.bin", missing, site=False)
    with fleet.mount("--read-only") as mounted:
        assert (mounted.mountpoint / "m" / "here.bin").read_bytes() == here
        assert (mounted.mountpoint / "m" / "missing.bin").read_bytes() == missing
        counts = status_sources(mounted)
    assert counts[f"site:{fleet.site_bucket}"]["missing"] == 1
    assert fleet.site_gets("m/missing.bin") == 0
    assert fleet.origin_gets("m/here.bin") == 0


def test_a_site_holding_another_version_is_skipped(fleet: Fleet) -> None:
    """Same size, other bytes (its ETag differs, and no manifest lists it): never read."""
    data, stale = random.Random(6).randbytes(6 * MiB), random.Random(7).randbytes(6 * MiB)
    fleet.put("m/model.bin", data, site=stale)
    with fleet.mount("--read-only") as mounted:
        assert (mounted.mountpoint / "m" / "model.bin").read_bytes() == data
        counts = status_sources(mounted)
    assert counts[f"site:{fleet.site_bucket}"]["other_version"] == 1
    assert fleet.site_gets("m/model.bin") == 0


def test_with_a_manifest_a_site_copy_older_than_the_origins_is_skipped(fleet: Fleet) -> None:
    """A manifest lets a copy with another ETag be read (its sha256 is checked), but not one
    older than the origin's: a site cache that has not synced the new version yet."""
    data, old = random.Random(8).randbytes(6 * MiB), random.Random(9).randbytes(6 * MiB)
    fleet.site.client().put_object(Bucket=fleet.site_bucket, Key="m/model.bin", Body=old)
    time.sleep(1.1)  # Last-Modified has whole seconds
    fleet.put("m/model.bin", data, site=False)
    manifest = {
        "version": 1,
        "files": [{"path": "m/model.bin", "size": len(data), "sha256": digest(data)}],
    }
    fleet.put("manifest.json", json.dumps(manifest).encode(), site=False)
    with fleet.mount("--read-only") as mounted:
        assert (mounted.mountpoint / "m" / "model.bin").read_bytes() == data
        counts = status_sources(mounted)
    assert counts[f"site:{fleet.site_bucket}"]["other_version"] == 1
    assert fleet.site_gets("m/model.bin") == 0


def test_a_site_below_the_rate_floor_is_left_for_the_origin(fleet: Fleet) -> None:
    data = random.Random(10).randbytes(16 * MiB)
    fleet.put("m/model.bin", data)
    fleet.site_proxy.throttle_next(256 << 10, times=None)  # 256 KiB/s per GET
    with fleet.mount("--read-only", "--min-rate", "2M") as mounted:
        started = time.monotonic()
        assert digest((mounted.mountpoint / "m" / "model.bin").read_bytes()) == digest(data)
        elapsed = time.monotonic() - started
        counts = status_sources(mounted)
    assert counts[f"site:{fleet.site_bucket}"]["slow"] >= 1
    assert counts[f"origin:{fleet.bucket}"]["bytes"] > 0
    assert elapsed < 40  # the whole file at 256 KiB/s would take 64 s


def test_source_on_the_command_line_replaces_the_configured_list(fleet: Fleet) -> None:
    """`--source` names the mounted tree itself; the origin is read after it."""
    data = random.Random(11).randbytes(2 * MiB)
    fleet.put("m/tok.json", data)
    other = fleet.site.create_bucket(unique_bucket_name("other"))
    fleet.site.client().put_object(Bucket=other, Key="tok.json", Body=data)
    node = Mounted(
        fleet.config,
        f"origin:{fleet.bucket}/m",
        fleet.tmp / "n" / "mnt",
        fleet.tmp / "n" / "cache",
        "--read-only",
        "--source",
        f"site:{other}",
    )
    with node as mounted:
        assert (mounted.mountpoint / "tok.json").read_bytes() == data
        sources = mounted.status()["sources"]
    assert sources["order"] == [f"site:{other}", f"origin:{fleet.bucket}/m"]
    assert sources["by_source"][f"site:{other}"]["bytes"] == len(data)


# -- a real site cache: a SeaweedFS with the origin's bucket remote-mounted ---------------------


@pytest.fixture
def site_cache(
    seaweed: SeaweedServer, bucket: str, tmp_path: Path
) -> Iterator[tuple[SeaweedServer, FaultProxy]]:
    """A second SeaweedFS whose bucket `bucket` is a remote mount of the origin's, fetching
    through its own proxy (which counts what the origin sends the site)."""
    with (
        FaultProxy(seaweed.endpoint) as uplink,
        SeaweedServer(tmp_path / "site-seaweed", extra_args=SITE_ARGS) as site,
    ):
        yield site, uplink


def test_a_seaweedfs_site_serves_what_the_manifest_lists_and_fetches_it_once(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    site_cache: tuple[SeaweedServer, FaultProxy],
) -> None:
    site, uplink = site_cache
    model, later = random.Random(12).randbytes(12 * MiB), random.Random(13).randbytes(2 * MiB)
    origin = seaweed.client()
    origin.put_object(Bucket=bucket, Key="llama/model.bin", Body=model)
    config = node_with_a_manifest(tmp_path, proxy, site, bucket)
    origin.put_object(Bucket=bucket, Key="llama/later.bin", Body=later)  # not in the manifest
    proxy.clear_requests()  # `manifest create` read the model through it
    site.shell(*remote_mount_commands(uplink.endpoint, bucket, ACCESS_KEY, SECRET_KEY))
    # The site answers with ETags of its own, never the origin's (docs/fleet.md):
    site_etag = site.client().head_object(Bucket=bucket, Key="llama/model.bin")["ETag"]
    assert site_etag != origin.head_object(Bucket=bucket, Key="llama/model.bin")["ETag"]

    for node in ("a", "b"):
        mounted = Mounted(
            config,
            f"origin:{bucket}/llama",
            tmp_path / node / "mnt",
            tmp_path / node / "cache",
            "--read-only",
        )
        with mounted:
            assert digest((mounted.mountpoint / "model.bin").read_bytes()) == digest(model)
            assert (mounted.mountpoint / "later.bin").read_bytes() == later
            counts = status_sources(mounted)
            assert mounted.status()["fs"]["verified"] == 1
        assert counts[f"site:{bucket}/llama"]["bytes"] == len(model)
        assert counts[f"site:{bucket}/llama"]["other_version"] == 1  # later.bin: no manifest
        assert counts[f"origin:{bucket}/llama"]["bytes"] == len(later)
    # What the origin sent: the model once, to the site, for both nodes.
    fetched = sum(r.response_bytes for r in uplink.requests if "model.bin" in r.path)
    assert len(model) <= fetched < 1.1 * len(model)
    assert proxy.count("GET", path_contains="llama/model.bin") == 0
    assert proxy.count("HEAD", path_contains="llama/model.bin") >= 1  # the copy's age, asked


def test_nodes_wait_for_a_site_that_is_still_fetching_and_the_origin_sends_the_file_once(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    site_cache: tuple[SeaweedServer, FaultProxy],
) -> None:
    """A cold site behind a slow uplink takes longer to fetch a file than it waits before it
    streams a read straight from the origin (10 s for this size). Two nodes reading at once
    wait for its fetch instead (`--fill-timeout`): the origin sends the file once."""
    site, uplink = site_cache
    model = random.Random(14).randbytes(24 * MiB)
    seaweed.client().put_object(Bucket=bucket, Key="llama/model.bin", Body=model)
    config = node_with_a_manifest(tmp_path, proxy, site, bucket)
    site.shell(*remote_mount_commands(uplink.endpoint, bucket, ACCESS_KEY, SECRET_KEY))
    uplink.throttle_next(384 << 10, times=None)  # each GET of the site's fetch: 384 KiB/s
    proxy.clear_requests()
    nodes = [
        Mounted(config, f"origin:{bucket}/llama", tmp_path / n / "mnt", tmp_path / n / "cache")
        for n in ("a", "b")
    ]
    started = time.monotonic()
    with nodes[0] as first, nodes[1] as second:
        with ThreadPoolExecutor(2) as pool:
            read = list(pool.map(lambda m: (m.mountpoint / "model.bin").read_bytes(), nodes))
        elapsed = time.monotonic() - started
        counts = [status_sources(first), status_sources(second)]
        log = (first.cache_dir / "modelfs.log").read_text()
    assert read == [model, model]
    for node in counts:
        assert node[f"site:{bucket}/llama"]["bytes"] == len(model)
        assert node[f"origin:{bucket}/llama"]["bytes"] == 0
        assert node[f"site:{bucket}/llama"]["fetch_waits"] == 1
    assert f"source site:{bucket}/llama is fetching llama/model.bin from its origin" in log
    fetched = sum(r.response_bytes for r in uplink.requests if "model.bin" in r.path)
    assert len(model) <= fetched < 1.1 * len(model), (fetched, elapsed)
