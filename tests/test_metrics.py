"""`--metrics`: Prometheus metrics of a real mount, scraped over HTTP and parsed with
prometheus_client's own parser; and `modelfs status --watch`, which shows the same figures.

The figures are the mount's own statistics (one snapshot, `daemon.figures`), so the scrape is
checked against the control socket's `status` taken right after it, and against what the test
did: bytes read, a GET refused with 403, a file waiting in the upload queue.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from modelfs.core.latency import LatencyHistogram
from modelfs.daemon.metrics import is_loopback
from modelfs.errors import AccessDenied, StoreUnavailable
from modelfs.store.s3errors import error_code
from support import FaultProxy, SeaweedServer, path_contains
from support.metrics import free_port, scrape, value
from support.mounting import MODELFS, MountEnv, is_mounted, run_cli

MiB = 1 << 20


# -- without a mount ---------------------------------------------------------------------------


def test_latency_histogram_buckets_quantiles_and_windows() -> None:
    histogram = LatencyHistogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 3.0):
        histogram.observe(seconds)
    first = histogram.statistics()
    assert first.counts == (2, 1, 1, 1)  # <= 1ms (le), <= 10ms, <= 100ms, +Inf
    assert first.count == 5
    assert first.total == pytest.approx(3.0535)
    assert first.quantile(0.4) == 0.001
    assert first.quantile(0.5) == 0.01
    assert first.quantile(1.0) == float("inf")
    histogram.observe(0.05)
    window = histogram.statistics().since(first)
    assert (window.counts, window.count) == ((0, 0, 1, 0), 1)
    assert window.quantile(0.99) == 0.1
    assert LatencyHistogram().statistics().quantile(0.5) is None


def test_error_codes_are_the_s3_code_else_the_class() -> None:
    response: Any = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}
    translated = StoreUnavailable("slow down")
    translated.__cause__ = ClientError(response, "GetObject")
    assert error_code(translated) == "SlowDown"
    assert error_code(AccessDenied("no")) == "AccessDenied"
    assert error_code(ConnectionResetError()) == "ConnectionResetError"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.0.0.1", False), ("example.com", False)],
)  # fmt: skip
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- a real mount ------------------------------------------------------------------------------


@pytest.fixture
def env(
    seaweed: SeaweedServer,
    proxy: FaultProxy,
    bucket: str,
    tmp_path: Path,
    make_config: Callable[..., Path],
) -> MountEnv:
    return MountEnv.create(seaweed, proxy, bucket, tmp_path, make_config)


def settle(mountpoint: Path) -> None:
    """Wait until the mount's counters stop moving (background GETs have ended)."""
    previous = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = json.loads(run_cli("status", "--json", mountpoint, check=True).stdout)
        figures = (answer["fetcher"], answer["cache"]["hits"], answer["cache"]["misses"])
        if figures == previous:
            return
        previous = figures
        time.sleep(0.3)
    raise AssertionError("the mount's counters kept moving")


@pytest.mark.mount
def test_a_scrape_of_a_real_mount_shows_its_figures(env: MountEnv) -> None:
    data = os.urandom(3 * MiB)
    env.put("data/file.dat", data)
    env.put("denied/file.dat", os.urandom(2 * MiB))
    port = free_port()
    source = f"test:{env.bucket}"
    with env.mount("--metrics", f"127.0.0.1:{port}", "--max-memory", "64M", "--write-back", "1h"):
        assert (env.mountpoint / "data" / "file.dat").read_bytes() == data
        env.proxy.fail_next(403, times=None, match=path_contains("denied/file.dat"))
        with pytest.raises(PermissionError):
            (env.mountpoint / "denied" / "file.dat").read_bytes()
        (env.mountpoint / "out.log").write_bytes(b"x" * 1000)  # queued for 1h
        settle(env.mountpoint)  # readahead's refused GETs end in the background
        text, samples = scrape(port)
        status = run_cli("status", "--json", env.mountpoint, check=True)
    shown = json.loads(status.stdout)

    assert value(samples, "modelfs_mount_info", source=source, path=str(env.mountpoint)) == 1
    assert value(samples, "modelfs_fetched_bytes_total", source=source) == len(data)
    gets = value(samples, "modelfs_gets_total", source=source)
    assert gets == shown["fetcher"]["gets"] >= 2  # data's GET(s), and the refused one(s)
    refused = value(samples, "modelfs_store_errors_total", source=source, operation="get",
                    code="AccessDenied")  # fmt: skip
    assert refused == shown["fetcher"]["errors"]["AccessDenied"] >= 1
    for name, figure in [
        ("modelfs_cache_hits_total", shown["cache"]["hits"]),
        ("modelfs_cache_misses_total", shown["cache"]["misses"]),
        ("modelfs_cache_evictions_total", 0),
        ("modelfs_cache_limit_bytes", 10 << 30),
        ("modelfs_cache_pinned_bytes", 0),
        ("modelfs_reads_total", shown["fs"]["reads"]),
        ("modelfs_read_bytes_total", len(data)),
        ("modelfs_memory_limit_bytes", 64 * MiB),
        ("modelfs_memory_peak_bytes", shown["memory"]["peak"]),
        ("modelfs_upload_queue_files", 1),
        ("modelfs_upload_queue_bytes", 1000),
        ("modelfs_offline", 0),
    ]:
        assert value(samples, name) == figure, name
    assert value(samples, "modelfs_cache_misses_total") > 0
    assert value(samples, "modelfs_upload_queue_oldest_seconds") > 0
    # The latency histogram: every read in it, cumulative buckets ending at +Inf.
    reads = value(samples, "modelfs_reads_total")
    assert value(samples, "modelfs_read_latency_seconds_count") == reads > 0
    assert value(samples, "modelfs_read_latency_seconds_bucket", le="+Inf") == reads
    buckets = [v for (name, _), v in samples.items() if name.endswith("_seconds_bucket")]
    assert buckets == sorted(buckets)
    assert value(samples, "modelfs_read_latency_seconds_sum") > 0
    assert "process_resident_memory_bytes" in text
    # Unmounted (after uploading the queued file): the endpoint is gone.
    assert not is_mounted(env.mountpoint)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        scrape(port)


def listening_sockets(pid: int) -> set[str]:
    """Inodes of the TCP sockets process `pid` listens on."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening.add(fields[9])
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            held.add(target[len("socket:[") : -1])
    return held & listening


@pytest.mark.mount
def test_off_by_default_and_a_warning_off_loopback(env: MountEnv) -> None:
    with env.mount() as mounted:
        assert mounted.pid is not None
        assert listening_sockets(mounted.pid) == set()
    port = free_port()
    with env.mount("--metrics", f"0.0.0.0:{port}") as mounted:
        assert mounted.pid is not None
        assert len(listening_sockets(mounted.pid)) == 1
        _, samples = scrape(port)
        assert value(samples, "modelfs_offline") == 0
    log = (env.cache_dir / "modelfs.log").read_text()
    assert f"--metrics 0.0.0.0:{port} is not loopback" in log


@pytest.mark.mount
def test_a_port_in_use_fails_the_mount_in_one_line(env: MountEnv) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.mountpoint.mkdir()
        done = run_cli(
            "--config", env.config, "mount", "--daemon", "--cache-dir", env.cache_dir,
            "--metrics", f"127.0.0.1:{port}", f"test:{env.bucket}", env.mountpoint,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"modelfs: error: cannot serve --metrics on 127.0.0.1:{port}: Address already in use"
    ]
    assert not is_mounted(env.mountpoint)


# -- status --watch ----------------------------------------------------------------------------


def read_until(stream: Any, marker: str, deadline: float) -> str:
    seen = ""
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in {seen[-2000:]!r}"
        line = stream.readline()
        assert line, f"output ended before {marker!r}: {seen[-2000:]!r}"
        seen += line
    return seen


@pytest.fixture
def mounted_with_a_file(env: MountEnv) -> Iterator[MountEnv]:
    env.put("w/file.dat", os.urandom(2 * MiB))
    with env.mount():
        yield env


@pytest.mark.mount
def test_status_watch_plain_lines_until_ctrl_c(mounted_with_a_file: MountEnv) -> None:
    env = mounted_with_a_file
    with subprocess.Popen(
        [*MODELFS, "status", str(env.mountpoint), "--watch"], stdout=subprocess.PIPE, text=True
    ) as watch:
        try:
            deadline = time.monotonic() + 30
            first = read_until(watch.stdout, "upload queue: ", deadline)
            assert "reads: 0 requests" in first
            assert "latency: no reads yet" in first
            assert "s, online)" in first
            for figure in ("cache: ", "0B pinned", "latency: ", "fetched: ", "errors: none",
                           "memory: "):  # fmt: skip
                assert figure in first, figure
            (env.mountpoint / "w" / "file.dat").read_bytes()
            later = read_until(watch.stdout, "latest latency: p50 <= ", deadline)
            assert "fetched: 2.0M in " in later
            assert "reads/s" in later
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            watch.kill()


@pytest.mark.mount
def test_status_watch_json_lines(mounted_with_a_file: MountEnv) -> None:
    env = mounted_with_a_file
    with subprocess.Popen(
        [*MODELFS, "status", str(env.mountpoint), "--watch", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    ) as watch:
        try:
            assert watch.stdout is not None
            answers = [json.loads(watch.stdout.readline()) for _ in range(2)]
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=30) == 0
        finally:
            watch.kill()
    assert answers[1]["uptime"] > answers[0]["uptime"]
    assert answers[0]["offline"] is False
    assert answers[0]["read_latency"]["count"] == 0


@pytest.mark.mount
def test_status_watch_live_on_a_terminal(mounted_with_a_file: MountEnv) -> None:
    env = mounted_with_a_file
    controller, terminal = pty.openpty()
    watch = subprocess.Popen(
        [*MODELFS, "status", str(env.mountpoint), "--watch"],
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "160"},
    )
    os.close(terminal)
    try:
        shown = b""
        deadline = time.monotonic() + 30
        while b"upload queue" not in shown and time.monotonic() < deadline:
            if select.select([controller], [], [], 1)[0]:
                shown += os.read(controller, 65536)
        assert b"upload queue" in shown
        assert b"\x1b[" in shown  # drawn by rich, not printed as plain lines
        assert b"--- " not in shown
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 0
    finally:
        watch.kill()
        watch.wait()
        os.close(controller)
