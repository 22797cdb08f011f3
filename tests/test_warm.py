"""`modelfs warm PATH... [--pin|--unpin]` on real mounts, and `modelfs run --warm/--warm-async`.

GETs are counted by the FaultProxy in front of SeaweedFS: a warmed file then reads with none.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import FaultProxy, SeaweedServer, path_contains
from support.mounting import MODELFS, MountEnv, drop_page_cache, run_cli
from test_metrics import free_port, scrape, value
from test_run_e2e import Setup
from test_run_e2e import setup as setup  # the fixture

pytestmark = pytest.mark.mount

MiB = 1 << 20
HEADER = 4096  # each cached block file's header


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


def data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def cache_of(env: Env) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(run_cli("status", "--json", env.mountpoint).stdout)
    return dict(answer["cache"])


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def file_bytes(size: int) -> int:
    """What a file takes in the cache: its bytes and a header per 1 MiB block."""
    return size + -(-size // MiB) * HEADER


def test_warm_fetches_a_directory_and_reads_then_cost_no_get(env: Env) -> None:
    model, weights = data(5 * MiB + 3, 1), data(2 * MiB, 2)
    env.put("models/model.safetensors", model)
    env.put("models/sub/weights.bin", weights)
    env.put("tokenizer/tok.json", b"{}")
    with env.mount():
        done = run_cli("warm", env.mountpoint / "models")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("warmed 2 file(s), 7.0M")
        # Not a terminal: plain lines, the last one at 100%.
        assert done.stderr.strip().splitlines()[-1].startswith("warm: 7.0M of 7.0M (100%)")
        assert cache_of(env)["bytes"] == file_bytes(len(model)) + file_bytes(len(weights))
        gets = env.gets("models/")
        assert gets >= 2
        assert (env.mountpoint / "models" / "model.safetensors").read_bytes() == model
        assert (env.mountpoint / "models" / "sub" / "weights.bin").read_bytes() == weights
        again = run_cli("warm", env.mountpoint / "models")
        assert again.returncode == 0, again.stderr
        assert env.gets("models/") == gets  # reads and the second warm: all from the cache
        assert env.gets("tokenizer/") == 0
        assert cache_of(env)["pinned_bytes"] == 0


def test_pins_outlive_eviction_and_a_restart_and_unpin_releases_them(env: Env) -> None:
    pinned, others = data(6 * MiB, 3), [data(8 * MiB, 10 + i) for i in range(3)]
    env.put("models/pinned.bin", pinned)
    for index, body in enumerate(others):
        env.put(f"other/{index}.bin", body)
    port = free_port()
    with env.mount("--cache-max-size", "16M", "--metrics", f"127.0.0.1:{port}"):
        done = run_cli("warm", "--pin", env.mountpoint / "models" / "pinned.bin")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith("(pinned)")
        for index, body in enumerate(others):  # 24 MiB through a 16 MiB cache
            assert (env.mountpoint / "other" / f"{index}.bin").read_bytes() == body
        cache = cache_of(env)
        assert cache["pinned_bytes"] == file_bytes(len(pinned))
        assert cache["evictions"] > 0
        assert cache["bytes"] <= 16 * MiB
        _, samples = scrape(port)
        assert value(samples, "modelfs_cache_pinned_bytes") == file_bytes(len(pinned))
        lines = run_cli("status", env.mountpoint).stdout
        assert "6.0M pinned (1 file(s))" in lines
    (root,) = env.cache_dir.glob("*/blocks")
    assert stat.S_IMODE((root / "pins.json").stat().st_mode) == 0o600
    with env.mount("--cache-max-size", "16M"):  # pins are kept across a restart
        assert cache_of(env)["pinned_bytes"] == file_bytes(len(pinned))
        gets = env.gets("models/pinned.bin")
        assert (env.mountpoint / "models" / "pinned.bin").read_bytes() == pinned
        assert env.gets("models/pinned.bin") == gets
        done = run_cli("warm", "--unpin", env.mountpoint / "models")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "unpinned 1 file(s), 6.0M"
        assert cache_of(env)["pinned_bytes"] == 0
        for index, body in enumerate(others):  # now it is evicted like any other file
            assert (env.mountpoint / "other" / f"{index}.bin").read_bytes() == body
        drop_page_cache()  # the kernel kept what the read above got
        assert (env.mountpoint / "models" / "pinned.bin").read_bytes() == pinned
        assert env.gets("models/pinned.bin") > gets


def test_pinning_more_than_the_cache_holds_is_one_line_and_pins_nothing(env: Env) -> None:
    env.put("models/big.bin", data(10 * MiB, 4))
    with env.mount("--cache-max-size", "8M"):
        done = run_cli("warm", "--pin", env.mountpoint / "models")
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            "modelfs: error: cannot pin 10.0M more: pinned files would take 10.0M of the 8.0M "
            "cache (--cache-max-size); unpin some (modelfs warm --unpin PATH) or raise it"
        ]
        assert cache_of(env)["pinned_bytes"] == 0
        assert env.gets("models/big.bin") == 0  # nothing fetched either


def test_paths_globs_and_mistakes(env: Env, tmp_path: Path) -> None:
    env.put("models/a.bin", data(MiB, 5))
    env.put("models/b.json", b"{}")
    with env.mount():
        done = run_cli("warm", f"{env.mountpoint}/models/*.bin")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("warmed 1 file(s), 1.0M")
        assert env.gets("models/b.json") == 0
        for argv, message in [
            ([f"{env.mountpoint}/nothing/*"], "matches nothing"),
            ([str(env.mountpoint / "missing.bin")], "no such file or directory"),
            ([str(tmp_path)], "is not on a modelfs mount"),
            (["--pin", "--unpin", str(env.mountpoint)], "not allowed with argument"),
        ]:
            refused = run_cli("warm", *argv)
            assert refused.returncode == 2, argv
            (line,) = refused.stderr.strip().splitlines()
            assert line.startswith("modelfs: error: ")
            assert message in line


def test_ctrl_c_stops_the_warm_in_the_mount(env: Env) -> None:
    """Once the command is gone, the mount starts no further GET for it."""
    env.put("models/slow.bin", data(24 * MiB, 6))
    env.proxy.delay_next(8, times=None, match=path_contains("models/slow.bin"))
    with env.mount("--part-size", "1M"):
        command = subprocess.Popen(
            [*MODELFS, "warm", str(env.mountpoint / "models")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: env.gets("models/slow.bin") >= 1, "the warm's first GET")
        command.send_signal(signal.SIGINT)
        assert command.wait(timeout=60) == 130
        log = env.cache_dir / "modelfs.log"
        wait_until(lambda: "warm: stopped, the command went away" in log.read_text(), "the stop")
        # The first part (block 0) goes alone: nothing else had started, nothing starts now.
        assert env.gets("models/slow.bin") == 1
        assert cache_of(env)["blocks"] <= 1


# -- modelfs run --warm ---------------------------------------------------------------------------

CACHED_AT_START = textwrap.dedent(
    """
    import json, subprocess, sys, time
    wait = sys.argv[2] == "wait"
    deadline = time.monotonic() + 60
    while True:
        status = subprocess.run([sys.executable, "-m", "modelfs", "status", "--json",
                                 sys.argv[1]], capture_output=True, text=True, check=True)
        blocks = json.loads(status.stdout)["cache"]["blocks"]
        if not wait or blocks >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print("blocks cached:", blocks)
    sys.exit(0 if blocks >= 4 else 5)
    """
)


def run_app(app: Setup, *extra: str, wait: bool = False) -> subprocess.CompletedProcess[str]:
    """`modelfs run` of an app that says how many blocks were cached when it looked (the
    3 MiB model and config.json of cache_hub_v23/models are 4 blocks)."""
    argv = [
        sys.executable, "-m", "modelfs", "--config", str(app.config), "run",
        "--mount", app.spec, str(app.mountpoint), "--workdir", str(app.workdir),
        "--cache-dir", str(app.cache_dir), *extra,
        "--", sys.executable, "-c", CACHED_AT_START, str(app.mountpoint),
        "wait" if wait else "now",
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_run_warm_fetches_before_the_app_starts(setup: Setup) -> None:
    without = run_app(setup)  # the app alone reads nothing: nothing cached when it looks
    assert without.returncode == 5, without.stderr
    assert "blocks cached: 0" in without.stdout
    done = run_app(setup, "--warm", "cache_hub_v23/models/*")
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "blocks cached: 4" in done.stdout
    assert "warmed 2 file(s)" in done.stderr


def test_run_warm_async_warms_while_the_app_runs(setup: Setup) -> None:
    done = run_app(setup, "--warm-async", "cache_hub_v23/**/*.safetensors",
                   "--warm-async", "cache_hub_v23/models/config.json", wait=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "blocks cached: 4" in done.stdout


def test_run_warm_glob_that_matches_nothing_stops_before_the_app(setup: Setup) -> None:
    done = run_app(setup, "--warm", "cache_hub_v23/nothing/*")
    assert done.returncode == 2
    assert "matches nothing" in done.stderr
    assert "blocks cached" not in done.stdout
    assert not os.path.ismount(setup.mountpoint)  # run mounted it, so run unmounted it
