"""Drills of what keeps a mount up and its writes safe: `modelfs run` with a hung mount, the
mount unit restarting through a boot-time outage, and `modelfs sync` against a permanent 403.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.run.keeper import HUNG_PROBES_BEFORE_HEAL
from modelfs.run.plan import MountTarget
from modelfs.run.systemd import mount_drop_in, mount_unit
from support import FaultProxy, SeaweedServer, make_config, method_is
from support.drills import Drill
from support.mounting import MountEnv, force_unmount, run_cli
from support.outage import Outage
from support.runapp import MODELS, Setup, app_setup, daemon_pid, kill_group, read_line_with
from support.sharedmount import MiB, payload
from support.unitsim import (
    Policy,
    command_words,
    manage,
    notify_socket,
    parse_unit,
    start_until_ready,
    unit_environment,
)

pytestmark = pytest.mark.mount

SLACK = 5.0  # a loaded 2-core machine
WATCH_INTERVAL, PROBE_TIMEOUT = 0.2, 1.0
MOUNT_TIME = 20.0  # `modelfs mount --daemon` on a loaded 2-core machine
# The watchdog replaces a hung mount after HUNG_PROBES_BEFORE_HEAL probes in a row time out.
HEAL_LIMIT = HUNG_PROBES_BEFORE_HEAL * (WATCH_INTERVAL + PROBE_TIMEOUT) + MOUNT_TIME
RESTART_SEC = 10.0  # the unit's RestartSec (asserted below)
BOOT_OUTAGE = 60.0  # simulated seconds: the old units (StartLimitBurst=5) died after ~40 s
SYNC_ANSWER_LIMIT = 15.0  # a 403 is final: `sync --timeout 60s` answers at once, not at 60 s


@pytest.fixture
def app(tmp_path: Path, seaweed: SeaweedServer, bucket: str) -> Iterator[Setup]:
    with app_setup(tmp_path, seaweed, bucket) as made:
        yield made


@pytest.mark.drill("hung mount under modelfs run", limit=HEAL_LIMIT)
def test_a_hung_mount_under_run(drill: Drill, app: Setup) -> None:
    """The mount daemon stops answering (SIGSTOP) while the app runs: a read through the app's
    link waits until the watchdog has replaced the mount, then gets exact bytes; the app's
    second pass (every file opened anew) verifies, and it exits 0."""
    go_on = app.workdir / "go-on"
    argv = app.run_argv("--wait-for", str(go_on), "--no-log")
    argv[argv.index("--probe-timeout") + 1] = f"{PROBE_TIMEOUT:g}s"
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            read_line_with(process, "pass 1: verified 3 files")
            stuck = daemon_pid(app.mountpoint)
            os.kill(stuck, signal.SIGSTOP)
            for name, data in MODELS.items():  # the first waits until the mount is replaced
                drill.read_until_exact(app.workdir / "cache_hub" / name, data, HEAL_LIMIT * 2)
            assert daemon_pid(app.mountpoint) != stuck
            go_on.touch()
            out, err = process.communicate(timeout=120)
        finally:
            kill_group(process)
    assert process.returncode == 0, err
    assert "pass 2: verified 3 files" in out
    assert f"killing stuck modelfs daemon {stuck}" in err
    drill.finish()


@pytest.mark.drill(
    f"unit restart during a {BOOT_OUTAGE:g} s boot-time outage (simulated clock)",
    limit=RESTART_SEC + MOUNT_TIME,
)
def test_a_unit_restart_during_a_boot_time_outage(
    drill: Drill, seaweed: SeaweedServer, bucket: str, tmp_path: Path
) -> None:
    """The mount unit's own restart settings and command lines (`support.unitsim`) while the
    store refuses connections for the first BOOT_OUTAGE seconds after boot: every failed start
    exits 1 (a runtime failure, which restarts), the unit never hits a start limit, and the
    first start after the outage mounts and serves exact bytes. The stall is the time from the
    store's return to the mount being ready. The old settings would have given up."""
    data = payload("unit/model", 2 * MiB)
    seaweed.client().put_object(Bucket=bucket, Key="model.bin", Body=data)
    mountpoint, cache = tmp_path / "mnt", tmp_path / "var-cache"
    mountpoint.mkdir()
    (cache / "modelfs" / "boot").mkdir(parents=True, mode=0o700)
    with Outage(seaweed.endpoint) as store:
        config = make_config(tmp_path, store.endpoint, name="boot")
        unit = mount_unit(f"{sys.executable} -m modelfs", str(config))
        target = MountTarget(f"boot:{bucket}", str(mountpoint), ("--store-timeout", "1s"))
        settings = parse_unit(unit, mount_drop_in(target))
        policy = Policy.of(settings)
        assert policy.restart_sec == RESTART_SEC
        environment = unit_environment(settings)
        paths = {"/var/cache": str(cache)}
        pre = command_words(settings["ExecStartPre"][0].lstrip("-"), environment, "boot", paths)
        start = command_words(settings["ExecStart"][0], environment, "boot", paths)
        with notify_socket(tmp_path / "notify.sock") as server:
            services: list[subprocess.Popen[bytes]] = []

            def attempt(now: float) -> tuple[int | None, float]:
                if now >= BOOT_OUTAGE:
                    store.up()
                else:
                    store.down()
                began = time.monotonic()
                subprocess.run(pre, capture_output=True, check=False)
                process, ready = start_until_ready(start, server, str(tmp_path / "notify.sock"), 60)
                services.append(process)
                return (None if ready else process.returncode), time.monotonic() - began

            try:
                outcome = manage(policy, attempt)
                assert outcome.verdict == "ready", outcome
                assert drill.read_whole(mountpoint / "model.bin", data) is None
            finally:
                for process in services:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=60)
                force_unmount(mountpoint)
    failed = [a.exit_status for a in outcome.attempts[:-1]]
    assert failed
    assert set(failed) == {1}
    drill.row.stall = max(drill.row.stall, outcome.ready_at - BOOT_OUTAGE)
    # Not vacuous: the old settings, with a failed start taking a second (an idle machine),
    # give up during the same outage.
    old = Policy(restart="on-failure", restart_sec=RESTART_SEC, limit_interval=300, limit_burst=5)
    before = manage(old, lambda now: (1 if now < BOOT_OUTAGE else None, 1.0))
    assert before.verdict.startswith("start-limit-hit"), before
    drill.finish()


@pytest.fixture
def env(seaweed: SeaweedServer, proxy: FaultProxy, bucket: str, tmp_path: Path) -> MountEnv:
    return MountEnv.create(seaweed, proxy, bucket, tmp_path, make_config)


@pytest.mark.drill("sync against a permanent 403", limit=SYNC_ANSWER_LIMIT)
def test_sync_against_a_permanent_403(drill: Drill, env: MountEnv) -> None:
    """The bucket refuses every upload (403): `sync` says so in one line and exits 1 long
    before its timeout; the file stays staged, and once the policy is fixed it lands."""
    denied = env.proxy.fail_next(403, times=None, match=method_is("PUT"))
    with env.mount("--write-back", "0s"):
        drill.write_file(env.mountpoint / "report.json", "report.json", b'{"ok": true}')
        deadline = time.monotonic() + 30
        while not any(r.method == "PUT" and r.status == 403 for r in env.proxy.requests):
            assert time.monotonic() < deadline, "the upload was never tried"
            time.sleep(0.05)
        synced = drill.call(lambda: run_cli("sync", "--timeout", "60s", env.mountpoint))
        assert synced.returncode == 1
        assert len(synced.stderr.strip().splitlines()) == 1, synced.stderr
        assert "report.json: access denied" in synced.stderr
        env.proxy.remove_fault(denied)
        assert drill.call(lambda: run_cli("sync", env.mountpoint)).returncode == 0
    drill.settle(env.seaweed.client(), env.bucket)
    drill.finish()
