"""`modelfs run` end to end: a real SeaweedFS bucket, real FUSE mounts, the stand-in app.

Every test runs the CLI in a subprocess, and a fixture always detaches the mountpoint and
kills any daemon left (a failing test must not leave a mount behind).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelfs.host import control
from modelfs.host.health import MountStatus
from modelfs.host.mountinfo import find_mount, read_mountinfo
from support import FaultProxy, SeaweedServer, method_is
from support.runapp import (
    MODELS,
    STANDIN,
    WAIT_SECONDS,
    Setup,
    app_setup,
    cleanup_mount,
    daemon_pid,
    kill_group,
    modelfs,
    read_line_with,
    wait_until,
)

pytestmark = pytest.mark.mount


@pytest.fixture
def setup(tmp_path: Path, seaweed: SeaweedServer, bucket: str) -> Iterator[Setup]:
    with app_setup(tmp_path, seaweed, bucket) as made:
        yield made


def run(
    setup: Setup, *app_args: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        setup.run_argv(*app_args, extra=extra),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS * 2,
        check=False,
    )


def test_app_reads_models_through_the_link_and_exit_code_passes(setup: Setup) -> None:
    done = run(setup, "--exit-code", "3", "--no-log")
    assert done.returncode == 3, done.stderr
    assert "pass 1: verified 3 files" in done.stdout
    link = setup.workdir / "cache_hub"
    assert os.readlink(link) == str(setup.mountpoint / "cache_hub_v23")
    # run mounted it, so run unmounted it.
    assert find_mount(str(setup.mountpoint), read_mountinfo()) is None


def test_switching_versions_is_running_with_another_subpath(setup: Setup) -> None:
    client = setup.seaweed.client()
    for key in ("manifest.json", *MODELS):
        client.copy_object(
            Bucket=setup.bucket,
            Key=f"cache_hub_v24/{key}",
            CopySource={"Bucket": setup.bucket, "Key": f"cache_hub_v23/{key}"},
        )
    argv = setup.run_argv("--no-log")
    argv[argv.index("cache_hub=cache_hub_v23")] = "cache_hub=cache_hub_v24"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert os.readlink(setup.workdir / "cache_hub") == str(setup.mountpoint / "cache_hub_v24")


def test_the_log_lands_in_the_bucket(setup: Setup) -> None:
    done = run(setup)
    assert done.returncode == 0, done.stderr
    assert "log written" in done.stdout
    log = setup.log_in_bucket()
    assert log.startswith("previous run\n")
    assert "standin pid=" in log


@pytest.mark.parametrize("signum", [signal.SIGTERM])  # every signal: test_supervisor.py
def test_signals_pass_through_and_the_mount_is_released(setup: Setup, signum: int) -> None:
    never = setup.workdir / "never"
    with subprocess.Popen(
        setup.run_argv("--wait-for", str(never), "--no-log"),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so kill_group also ends the app if the test fails
    ) as process:
        try:
            read_line_with(process, "pass 1")
            process.send_signal(signum)
            assert process.wait(timeout=WAIT_SECONDS) == 128 + signum
        finally:
            kill_group(process)
    assert find_mount(str(setup.mountpoint), read_mountinfo()) is None


@pytest.mark.parametrize("premounted", [False, True], ids=["run-mounted", "premounted"])
def test_kill_9_of_the_mount_while_the_app_runs_is_healed(setup: Setup, premounted: bool) -> None:
    if premounted:
        setup.mount_daemon()
    go_on = setup.workdir / "go-on"
    with subprocess.Popen(
        setup.run_argv("--wait-for", str(go_on), "--no-log"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so kill_group also ends the app if the test fails
    ) as process:
        try:
            read_line_with(process, "pass 1: verified 3 files")
            first_daemon = daemon_pid(setup.mountpoint)
            os.kill(first_daemon, signal.SIGKILL)
            wait_until(
                lambda: (
                    setup.status() is MountStatus.HEALTHY
                    and control.read_state(str(setup.mountpoint)) is not None
                    and daemon_pid(setup.mountpoint) != first_daemon
                ),
                "the watchdog to mount again",
            )
            go_on.touch()  # the app opens every file again: the next open must work
            out, err = process.communicate(timeout=WAIT_SECONDS)
        finally:
            kill_group(process)
    assert process.returncode == 0, err
    assert "pass 2: verified 3 files" in out
    assert "mounted again with the same cache" in err
    # Whoever mounted first decides: run unmounts its own mount, leaves a user's in place.
    expected = MountStatus.HEALTHY if premounted else MountStatus.NOT_MOUNTED
    assert setup.status() is expected


def test_a_stale_mount_from_a_crash_is_repaired_before_the_app_starts(setup: Setup) -> None:
    os.kill(setup.mount_daemon(), signal.SIGKILL)
    wait_until(lambda: setup.status() is MountStatus.DEAD, "the mount to be dead")
    with pytest.raises(OSError, match="Transport endpoint is not connected"):
        os.listdir(setup.mountpoint)
    done = run(setup, "--no-log")
    assert done.returncode == 0, done.stderr
    assert "pass 1: verified 3 files" in done.stdout
    assert "stale mount" in done.stderr
    assert find_mount(str(setup.mountpoint), read_mountinfo()) is None


def test_a_hung_mount_is_replaced(setup: Setup) -> None:
    """A daemon that is alive but answers nothing (stopped): stat would block forever."""
    stuck = setup.mount_daemon()
    os.kill(stuck, signal.SIGSTOP)
    try:
        done = run(setup, "--no-log")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGKILL)
    assert done.returncode == 0, done.stderr
    assert "pass 1: verified 3 files" in done.stdout
    assert f"killing stuck modelfs daemon {stuck}" in done.stderr


def test_an_existing_healthy_mount_is_used_and_stays(setup: Setup) -> None:
    daemon = setup.mount_daemon()
    done = run(setup, "--no-log")
    assert done.returncode == 0, done.stderr
    assert setup.status() is MountStatus.HEALTHY
    assert daemon_pid(setup.mountpoint) == daemon


def test_a_mount_of_another_bucket_is_not_taken_over(setup: Setup) -> None:
    other = setup.seaweed.create_bucket("other-bucket-e2e")
    done = modelfs(
        setup.config, "mount", "--daemon", "--cache-dir", str(setup.cache_dir),
        f"e2e:{other}", str(setup.mountpoint),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = run(setup, "--no-log")
    assert result.returncode == 2
    assert f"already a modelfs mount of e2e:{other}" in result.stderr
    entry = find_mount(str(setup.mountpoint), read_mountinfo())
    assert entry is not None
    assert entry.source == f"e2e:{other}"


def test_a_real_directory_in_the_links_place_is_kept(setup: Setup) -> None:
    real = setup.workdir / "cache_hub"
    real.mkdir()
    (real / "model.pt").write_bytes(b"downloaded by hand")
    done = run(setup, "--no-log")
    assert done.returncode == 2
    assert "is a real directory" in done.stderr
    assert (real / "model.pt").read_bytes() == b"downloaded by hand"
    assert find_mount(str(setup.mountpoint), read_mountinfo()) is None  # not left mounted

    moved = run(setup, "--no-log", extra=("--move-aside",))
    assert moved.returncode == 0, moved.stderr
    (backup,) = setup.workdir.glob("cache_hub.bak-*")
    assert (backup / "model.pt").read_bytes() == b"downloaded by hand"
    assert (setup.workdir / "cache_hub").is_symlink()


def test_keep_mounted_and_ready_under_systemd(setup: Setup, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(WAIT_SECONDS)
        done = subprocess.run(
            setup.run_argv("--no-log", extra=("--keep-mounted",)),
            env={**os.environ, "NOTIFY_SOCKET": address},
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS * 2,
            check=False,
        )
        messages = [server.recv(4096).decode(), server.recv(4096).decode()]
    assert done.returncode == 0, done.stderr
    assert "READY=1" in messages[0].split("\n")
    assert "STOPPING=1" in messages[1].split("\n")
    assert setup.status() is MountStatus.HEALTHY  # --keep-mounted


@pytest.mark.parametrize(
    ("fault", "said"),
    [("403", "access denied"), ("slow", "not done within 3s: 1 file(s)")],
)
def test_the_final_drain_is_bounded_reports_and_exits_1(
    setup: Setup, proxy: FaultProxy, make_config: Callable[..., Path], fault: str, said: str
) -> None:
    """The app wrote its log, the bucket refuses it for good (or takes forever): `run` says
    why, leaves the mount (the log stays staged) and exits 1, instead of hanging."""
    if fault == "403":
        proxy.fail_next(403, times=None, match=method_is("PUT"))
    else:
        proxy.delay_next(30.0, times=None, match=method_is("PUT"))
    setup.config = make_config(setup.config.parent, proxy.endpoint, filename="proxy.conf")
    setup.config.write_text(setup.config.read_text().replace("[test]", "[e2e]"))
    started = time.monotonic()
    done = run(setup, extra=("--drain-timeout", "3s", "--write-back", "0s"))
    assert time.monotonic() - started < WAIT_SECONDS
    assert done.returncode == 1, done.stderr
    assert "log written" in done.stdout
    assert said in done.stderr
    assert "did not drain; leaving it mounted" in done.stderr
    assert setup.status() is MountStatus.HEALTHY
    proxy.clear_faults()


def test_an_external_mount_is_used_but_never_mounted_healed_or_unmounted(setup: Setup) -> None:
    """--external-mount: the mount's own unit owns it (its cache dir, its restarts); a run
    that mounted or healed it too would race the unit with another cache dir."""
    done = run(setup, "--no-log", extra=("--external-mount",))
    assert done.returncode == 1
    assert "its owner (--external-mount" in done.stderr
    assert setup.status() is MountStatus.NOT_MOUNTED  # not mounted by the run
    first = setup.mount_daemon()  # what the mount unit does
    go_on = setup.workdir / "go-on"
    with subprocess.Popen(
        setup.run_argv("--wait-for", str(go_on), "--no-log", extra=("--external-mount",)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            read_line_with(process, "pass 1: verified 3 files")
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: setup.status() is MountStatus.DEAD, "the mount to be dead")
            time.sleep(2)  # ten watch intervals: a run's watchdog would have healed it
            assert setup.status() is MountStatus.DEAD
            assert modelfs(setup.config, "unmount", str(setup.mountpoint)).returncode == 0
            setup.mount_daemon()  # the unit restarts it
            go_on.touch()
            out, err = process.communicate(timeout=WAIT_SECONDS)
        finally:
            kill_group(process)
    assert process.returncode == 0, err
    assert "pass 2: verified 3 files" in out
    assert "mounted again" not in err
    assert setup.status() is MountStatus.HEALTHY  # the owner's, so left mounted


def test_the_app_runs_as_its_user_and_reads_the_allow_other_mount(setup: Setup) -> None:
    """`run` stays root (it reads the root-only config, mounts); the app drops to `user`."""
    base = Path(tempfile.mkdtemp(prefix="modelfs-user-"))  # a path `nobody` can traverse
    base.chmod(0o755)
    mountpoint, workdir = base / "mnt", base / "app"
    mountpoint.mkdir()
    workdir.mkdir()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "modelfs", "--config", str(setup.config), "run",
             "--mount", setup.spec, str(mountpoint), "--link", "cache_hub=cache_hub_v23",
             "--workdir", str(workdir), "--cache-dir", str(setup.cache_dir), "--allow-other",
             "--user", "nobody", "--",
             "sh", "-c", "id -u; cat cache_hub/models/config.json"],
            capture_output=True, text=True, timeout=WAIT_SECONDS * 2, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{pwd.getpwnam('nobody').pw_uid}\n" + '{"dim": 1024}'
    finally:
        cleanup_mount(mountpoint)
        shutil.rmtree(base, ignore_errors=True)


def test_a_run_section_is_the_same_short_line(setup: Setup) -> None:
    with setup.config.open("a") as config:
        config.write(
            f"\n[run:standin]\n"
            f"mount = {setup.spec} {setup.mountpoint}\n"
            f"link = cache_hub=cache_hub_v23\n"
            f"workdir = {setup.workdir}\n"
            f"cache-dir = {setup.cache_dir}\n"
            f"command = {sys.executable} {STANDIN} --no-log --exit-code 5\n"
        )
    done = modelfs(setup.config, "run", "standin")
    assert done.returncode == 5, done.stderr
    assert "pass 1: verified 3 files" in done.stdout


def test_run_as_typed_in_the_apps_directory_after_save(setup: Setup) -> None:
    """`--save NAME` writes the working command line beside the app; then `modelfs run --
    COMMAND` typed there (global options after the verb) starts the same run."""
    first = run(setup, "--no-log", extra=("--save", "standin"))
    assert first.returncode == 0, first.stderr
    saved = setup.workdir / "modelfs.conf"
    assert f"saved [run:standin] in {saved}" in first.stderr
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    text = saved.read_text()
    assert f"remote = {setup.spec}\n" in text
    assert "secret" not in text  # keys stay in the config file
    assert "access_key" not in text

    again = subprocess.run(
        [sys.executable, "-m", "modelfs", "run", "--config", str(setup.config),
         "--", sys.executable, STANDIN, "--no-log", "--exit-code", "4"],
        cwd=setup.workdir, capture_output=True, text=True, timeout=WAIT_SECONDS * 2, check=False,
    )  # fmt: skip
    assert again.returncode == 4, again.stderr
    assert "pass 1: verified 3 files" in again.stdout
    assert "using [run:standin]: the run section of ./modelfs.conf" in again.stderr
    assert find_mount(str(setup.mountpoint), read_mountinfo()) is None
