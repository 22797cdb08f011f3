"""`modelfs run` without a mount: mountinfo, health verdicts, plans, signals, exit codes, bad input.

The pieces that need a real FUSE mount are in test_run_e2e.py.
"""

from __future__ import annotations

import configparser
import errno
import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.cli import build_parser
from modelfs.config.remote import normalize_spec
from modelfs.errors import ConfigError
from modelfs.host import control, mountinfo
from modelfs.host.health import Health, MountCheck, MountStatus, ProbeResult, check_mount, probe
from modelfs.host.mountinfo import find_mount, parse_mountinfo
from modelfs.run.keeper import Watchdog, stop_stale_daemon
from modelfs.run.links import LinkSpec
from modelfs.run.plan import plan_from_args, validate_paths
from modelfs.run.supervisor import SignalForwarder, exit_status

MOUNTINFO = textwrap.dedent(
    """\
    22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
    25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
    90 25 0:55 / /mnt/tts rw,relatime shared:60 - fuse.modelfs compshare:index-tts-data rw
    91 25 0:56 / /mnt/with\\040space rw,relatime - fuse.modelfs r:b/models\\134x rw
    92 25 0:57 / /mnt/stacked rw,relatime - tmpfs tmpfs rw
    93 92 0:58 / /mnt/stacked rw,relatime - fuse.modelfs r:bucket rw
    """
)


# -- mountinfo --------------------------------------------------------------------------------


def test_parse_mountinfo_fields_and_escapes() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert len(entries) == 6
    tts = entries[2]
    assert (tts.mount_id, tts.device, tts.mountpoint) == (90, "0:55", "/mnt/tts")
    assert (tts.fstype, tts.source) == ("fuse.modelfs", "compshare:index-tts-data")
    assert entries[3].mountpoint == "/mnt/with space"
    assert entries[3].source == "r:b/models\\x"


def test_find_mount_takes_the_topmost() -> None:
    top = find_mount("/mnt/stacked/", MOUNTINFO)
    assert top is not None
    assert top.fstype == "fuse.modelfs"
    assert find_mount("/mnt", MOUNTINFO) is None


def test_parse_mountinfo_skips_garbage() -> None:
    assert parse_mountinfo("not a mountinfo line\n\n") == []


def test_our_real_mountinfo_parses() -> None:
    entries = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    assert any(entry.mountpoint == "/" for entry in entries)


def test_unmount_waits_for_the_daemon_but_not_for_its_reaping() -> None:
    """`unmount` waits until the daemon has exited; an exited daemon nobody has reaped yet (a
    zombie: an init that reaps orphans late) has exited, and a running one has not."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        state = {"pid": child.pid, "start_time": control.process_start_time(child.pid)}
        started = time.monotonic()
        mountinfo._wait_for_exit(state, timeout=0.3)
        assert time.monotonic() - started >= 0.3  # still running: waited it out
        assert control.is_alive(state)
        assert child.stdin is not None
        child.stdin.close()  # it exits; not reaped until wait() below: a zombie meanwhile
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        mountinfo._wait_for_exit(state, timeout=10)
        assert time.monotonic() - started < 1
        assert not control.is_alive(state)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    ("spec", "normal"),
    [("r:bucket", "r:bucket"), ("r:bucket/", "r:bucket"), ("r:bucket/a/b/", "r:bucket/a/b")],
)
def test_normalize_spec(spec: str, normal: str) -> None:
    assert normalize_spec(spec) == normal


# -- verdicts ---------------------------------------------------------------------------------


def verdict(mountpoint: str, spec: str, health: Health = Health.HEALTHY) -> MountCheck:
    return check_mount(
        mountpoint,
        spec,
        mountinfo=lambda: MOUNTINFO,
        prober=lambda path, timeout: ProbeResult(health, "probed"),
    )


def test_verdicts() -> None:
    assert verdict("/mnt/tts", "compshare:index-tts-data").status is MountStatus.HEALTHY
    assert verdict("/mnt/tts", "compshare:index-tts-data/").status is MountStatus.HEALTHY
    assert verdict("/mnt/other", "compshare:index-tts-data").status is MountStatus.NOT_MOUNTED
    dead = verdict("/mnt/tts", "compshare:index-tts-data", Health.DEAD)
    assert dead.status is MountStatus.DEAD
    hung = verdict("/mnt/tts", "compshare:index-tts-data", Health.HUNG)
    assert hung.status is MountStatus.HUNG
    failed = verdict("/mnt/tts", "compshare:index-tts-data", Health.FAILED)
    assert failed.status is MountStatus.UNUSABLE


def test_foreign_mounts_are_named() -> None:
    other_fs = verdict("/proc", "compshare:index-tts-data")
    assert other_fs.status is MountStatus.FOREIGN
    assert "proc" in other_fs.detail
    other_bucket = verdict("/mnt/tts", "compshare:other-bucket")
    assert other_bucket.status is MountStatus.FOREIGN
    assert "compshare:index-tts-data" in other_bucket.detail


def test_probe_healthy_and_failed(tmp_path: Path) -> None:
    assert probe(str(tmp_path), 5).health is Health.HEALTHY
    assert probe(str(tmp_path / "missing"), 5).health is Health.FAILED


def test_probe_dead_on_enotconn() -> None:
    def dead_stat(path: str) -> object:
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN), path)

    result = probe("/mnt/dead", 5, stat=dead_stat)
    assert result.health is Health.DEAD
    assert "not connected" in result.detail


def test_probe_times_out_and_never_piles_up_threads() -> None:
    release = threading.Event()
    calls: list[str] = []

    def stuck_stat(path: str) -> object:
        calls.append(path)
        release.wait(30)
        return None

    first = probe("/mnt/stuck", 0.05, stat=stuck_stat)
    second = probe("/mnt/stuck", 0.05, stat=stuck_stat)
    assert first.health is Health.HUNG
    assert second.health is Health.HUNG
    assert "still blocked" in second.detail
    assert calls == ["/mnt/stuck"]
    release.set()
    deadline = time.monotonic() + 5
    while probe("/mnt/stuck", 1, stat=stuck_stat).health is not Health.HEALTHY:
        assert time.monotonic() < deadline


# -- the stale daemon: only the process that started at the recorded time is killed ----------


def test_process_start_time_names_one_process() -> None:
    mine = control.process_start_time(os.getpid())
    assert isinstance(mine, int)
    assert mine == control.process_start_time(os.getpid())
    child = subprocess.Popen(["true"])
    child_pid = child.pid
    deadline = time.monotonic() + 10
    while control.process_start_time(child_pid) is not None:  # a zombie, then reaped: None
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.wait()
    assert control.process_start_time(child_pid) is None


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runtime"
    monkeypatch.setattr(control, "runtime_dir", lambda: path)
    control.checked_dir(create=True)
    return path


def plant_state(mountpoint: str, state: dict[str, object]) -> None:
    (control.state_path(control.mount_id(mountpoint))).write_text(json.dumps(state))


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process that happens to have "modelfs" on its command line."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "modelfs", "mount"]
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.usefixtures("runtime")
def test_a_reused_pid_is_never_killed(bystander: subprocess.Popen[bytes]) -> None:
    """The state file names a daemon that died; the kernel gave its pid to `bystander`."""
    started = control.process_start_time(bystander.pid)
    assert started is not None
    plant_state("/mnt/stale", {"pid": bystander.pid, "start_time": started - 100})
    assert control.read_state("/mnt/stale") is None  # that daemon is gone
    stop_stale_daemon("/mnt/stale")
    time.sleep(0.2)
    assert bystander.poll() is None
    plant_state("/mnt/old", {"pid": bystander.pid})  # written before start times: never killed
    stop_stale_daemon("/mnt/old")
    time.sleep(0.2)
    assert bystander.poll() is None


@pytest.mark.usefixtures("runtime")
def test_the_recorded_daemon_is_killed(bystander: subprocess.Popen[bytes]) -> None:
    started = control.process_start_time(bystander.pid)
    plant_state("/mnt/stuck", {"pid": bystander.pid, "start_time": started})
    stop_stale_daemon("/mnt/stuck")
    assert bystander.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.usefixtures("runtime")
def test_the_state_file_records_the_start_time() -> None:
    control.write_state(control.mount_id("/mnt/me"), {"spec": "r:b"})
    state = control.read_state("/mnt/me")
    assert state is not None
    assert state["pid"] == os.getpid()
    assert state["start_time"] == control.process_start_time(os.getpid())


# -- watchdog ---------------------------------------------------------------------------------


def test_watchdog_heals_dead_and_missing_mounts_only() -> None:
    states = iter(
        [
            MountCheck(MountStatus.HEALTHY, "ok"),
            MountCheck(MountStatus.DEAD, "Transport endpoint is not connected"),
            MountCheck(MountStatus.NOT_MOUNTED, "gone"),
            MountCheck(MountStatus.FOREIGN, "someone else"),
        ]
    )
    healed: list[MountStatus] = []
    watchdog = Watchdog(lambda: next(states), lambda s: healed.append(s.status), interval=60)
    for _ in range(4):
        watchdog.tick()
    assert healed == [MountStatus.DEAD, MountStatus.NOT_MOUNTED]


def test_watchdog_replaces_a_hung_mount_only_after_three_hung_probes_in_a_row() -> None:
    hung, healthy = MountCheck(MountStatus.HUNG, "no answer"), MountCheck(MountStatus.HEALTHY, "")
    states = iter([hung, hung, healthy, hung, hung, hung, healthy, hung])
    healed: list[int] = []
    tick = [0]
    watchdog = Watchdog(lambda: next(states), lambda _: healed.append(tick[0]), interval=60)
    for tick[0] in range(1, 9):
        watchdog.tick()
    assert healed == [6]  # one slow stat on a loaded machine never kills a live mount


def test_watchdog_survives_a_failed_heal() -> None:
    attempts: list[int] = []

    def failing_heal(state: MountCheck) -> None:
        attempts.append(1)
        raise ConfigError("mount failed")

    watchdog = Watchdog(lambda: MountCheck(MountStatus.DEAD, "dead"), failing_heal, interval=60)
    watchdog.tick()
    watchdog.tick()
    assert len(attempts) == 2


# -- plans ------------------------------------------------------------------------------------

CONFIG = textwrap.dedent(
    """\
    [compshare]
    type = s3
    endpoint = http://127.0.0.1:1

    [mount:tts]
    remote = compshare:index-tts-data/
    mountpoint = /mnt/tts
    cache-max-size = 50G
    allow_other = true

    [run:index-tts]
    mount = tts
    link = cache_hub=cache_hub_v23
           logs=logs
    workdir = /srv/index-tts
    command = python webui.py --listen --port 7860
    read-only = yes

    [run:inline]
    mount = compshare:bucket/models /mnt/models
    command = ./start.sh
    keep-mounted = true
    watch-interval = 2s
    drain-timeout = 90s

    [run:typo]
    mount = compshare:bucket /mnt/models
    comand = python x.py

    [run:nocmd]
    mount = compshare:bucket /mnt/models

    [run:quiet]
    mount = compshare:bucket /mnt/models
    command = ./start.sh
    warm-up = false
    prefetch_small = no

    [run:badswitch]
    mount = compshare:bucket /mnt/models
    command = ./start.sh
    warm-up = maybe
    """
)


def config() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(CONFIG)
    return parser


def plan(*argv: str):  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["run", *argv])
    return plan_from_args(args, config())


def test_plan_from_the_command_line(tmp_path: Path) -> None:
    result = plan(
        "--mount", "compshare:index-tts-data", "/mnt/tts",
        "--link", "cache_hub=cache_hub_v23", "--workdir", str(tmp_path),
        "--cache-dir", "/var/cache/m", "--read-only",
        "--", "python", "webui.py", "--listen", "--port", "7860",
    )  # fmt: skip
    assert result.target.spec == "compshare:index-tts-data"
    assert result.target.mountpoint == "/mnt/tts"
    assert result.target.options == ("--cache-dir", "/var/cache/m", "--read-only")
    assert result.links == (LinkSpec("cache_hub", "cache_hub_v23"),)
    assert result.workdir == tmp_path
    assert result.command == ("python", "webui.py", "--listen", "--port", "7860")
    assert not result.keep_mounted


def test_plan_from_a_section_with_a_mount_section() -> None:
    result = plan("index-tts")
    assert result.target.spec == "compshare:index-tts-data"
    assert result.target.mountpoint == "/mnt/tts"
    assert result.target.options == (
        "--cache-max-size", "50G", "--allow-other", "--read-only",
    )  # fmt: skip
    assert result.links == (LinkSpec("cache_hub", "cache_hub_v23"), LinkSpec("logs", "logs"))
    assert result.workdir == Path("/srv/index-tts")
    assert result.command == ("python", "webui.py", "--listen", "--port", "7860")
    assert result.mount_section == "tts"


def test_command_line_overrides_the_section() -> None:
    result = plan(
        "index-tts", "--link", "cache_hub=cache_hub_v24", "--cache-max-size", "20G",
        "--keep-mounted", "--", "python", "other.py",
    )  # fmt: skip
    assert result.links == (LinkSpec("cache_hub", "cache_hub_v24"),)
    assert result.command == ("python", "other.py")
    assert result.keep_mounted
    assert "20G" in result.target.options
    assert "50G" not in result.target.options


def test_read_engine_options_are_forwarded_to_the_mount() -> None:
    result = plan(
        "--mount", "r:bucket", "/m", "--transfers", "32", "--part-size", "16M",
        "--max-memory", "512M", "--drop-behind", "0", "--", "python", "webui.py",
    )  # fmt: skip
    assert result.target.options == (
        "--transfers", "32", "--part-size", "16M", "--max-memory", "512M", "--drop-behind", "0",
    )  # fmt: skip


def test_switches_are_forwarded_off_and_on() -> None:
    result = plan("--mount", "r:bucket", "/m", "--no-warm-up", "--no-prefetch-small", "--", "x")
    assert result.target.options == ("--no-prefetch-small", "--no-warm-up")
    mount_args = build_parser().parse_args(["mount", *result.target.options, "r:bucket", "/m"])
    assert mount_args.warm_up is False
    assert mount_args.prefetch_small is False
    assert plan("--mount", "r:bucket", "/m", "--warm-up", "--", "x").target.options == (
        "--warm-up",
    )
    assert plan("--mount", "r:bucket", "/m", "--", "x").target.options == ()


def test_a_section_switches_off_and_the_command_line_back_on() -> None:
    assert plan("quiet").target.options == ("--no-prefetch-small", "--no-warm-up")
    assert plan("quiet", "--warm-up").target.options == ("--no-prefetch-small", "--warm-up")


def test_options_after_the_section_name() -> None:
    result = plan("index-tts", "--keep-mounted", "--", "python", "other.py")
    assert result.keep_mounted
    assert result.command == ("python", "other.py")
    assert plan("index-tts", "--link", "cache_hub=v24").links == (LinkSpec("cache_hub", "v24"),)


def test_command_without_double_dash_in_the_mount_form() -> None:
    result = plan("--mount", "r:bucket", "/m", "python", "webui.py", "--listen")
    assert result.command == ("python", "webui.py", "--listen")


def test_inline_mount_and_durations() -> None:
    result = plan("inline")
    assert result.target.spec == "compshare:bucket/models"
    assert result.keep_mounted
    assert result.watch_interval == 2.0
    assert result.drain_timeout == 90.0
    assert plan("inline", "--drain-timeout", "1h").drain_timeout == 3600.0
    assert plan("index-tts").drain_timeout == 600.0  # the units' TimeoutStopSec


def test_the_app_user_and_an_external_mount() -> None:
    argv = ("--mount", "r:bucket", "/m", "--allow-other", "--user", "nobody", "--", "x")
    assert plan(*argv).user == "nobody"
    assert plan(*argv).external_mount is False
    assert plan("--external-mount", *argv).external_mount is True
    assert plan("--mount", "r:bucket", "/m", "--user", "root", "--", "x").user == "root"
    with pytest.raises(ConfigError, match="needs allow-other = true for the mount of r:bucket"):
        plan("--mount", "r:bucket", "/m", "--user", "nobody", "--", "x")
    with pytest.raises(ConfigError, match="user 'no-such-user' does not exist"):
        plan("--mount", "r:bucket", "/m", "--allow-other", "--user", "no-such-user", "--", "x")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], r"no \[run:nope\] section"),
        (["typo"], "unknown key 'comand'"),
        (["nocmd"], "no command to run"),
        ([], r"no run section has workdir .*several \(index-tts, inline, typo"),
        (["--mount", "compshare:bucket", "/mnt/x"], "no command to run"),
        (
            ["--mount", "compshare:bucket", "/mnt/x", "--link", "cache_hub", "--", "x"],
            "invalid link",
        ),
        (["--mount", "nocolon", "/mnt/x", "--", "x"], "invalid remote spec"),
        (
            ["--mount", "r:bucket", "/m", "--cache-max-size", "lots", "--", "x"],
            "invalid cache-max-size",
        ),
        (["--mount", "r:bucket", "/m", "--link", "a=x", "--link", "a=y", "--", "x"], "given twice"),
        (["index-tts", "python", "x.py"], "unexpected 'python' after 'index-tts'"),
        (["index-tts", "--mount", "r:bucket", "/m"], "either a run section name or --mount"),
        (["badswitch"], r"\[run:badswitch\] warm-up = 'maybe' is not a boolean"),
    ],
)
def test_plan_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(*argv)


def test_validate_paths(tmp_path: Path) -> None:
    good = plan("--mount", "r:bucket", str(tmp_path), "--workdir", str(tmp_path), "--", "x")
    validate_paths(good, MOUNTINFO)
    no_workdir = plan("--mount", "r:bucket", str(tmp_path), "--workdir", "/nonexistent", "--", "x")
    with pytest.raises(ConfigError, match="workdir /nonexistent does not exist"):
        validate_paths(no_workdir, MOUNTINFO)
    no_mountpoint = plan(
        "--mount", "r:bucket", "/nonexistent", "--workdir", str(tmp_path), "--", "x"
    )
    with pytest.raises(ConfigError, match="mountpoint /nonexistent does not exist"):
        validate_paths(no_mountpoint, MOUNTINFO)
    # A mountpoint listed in mountinfo is left to check_mount (its stat may fail: dead mount).
    listed = plan("--mount", "r:bucket", "/mnt/tts", "--workdir", str(tmp_path), "--", "x")
    validate_paths(listed, MOUNTINFO)


# -- signals and exit codes -------------------------------------------------------------------

# The app: reports each signal it gets on stdout; exits with the code in argv[1] on SIGTERM,
# lets SIGHUP end it by default action after reporting, exits 0 after SIGINT/SIGQUIT.
APP = textwrap.dedent(
    """\
    import os, signal, sys, time
    counts = {}
    def report(signum, frame):
        name = signal.Signals(signum).name
        counts[name] = counts.get(name, 0) + 1
        print(name, counts[name], flush=True)
        if signum == signal.SIGTERM:
            sys.exit(int(sys.argv[1]))
        if signum == signal.SIGHUP:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGHUP)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, report)
    print("ready", os.getcwd(), flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if counts.get("SIGINT") or counts.get("SIGQUIT"):
            time.sleep(0.3)  # a second, duplicated delivery would show up here
            sys.exit(0)
    sys.exit(99)
    """
)

# The supervisor side without a mount: install the forwarder and supervise the app.
HARNESS = textwrap.dedent(
    """\
    import sys
    from pathlib import Path
    from modelfs.run.plan import MountTarget, RunPlan
    from modelfs.run.supervisor import SignalForwarder, supervise_app
    plan = RunPlan(MountTarget("r:bucket", "/unused"), (), Path(sys.argv[1]), tuple(sys.argv[2:]))
    forwarder = SignalForwarder()
    forwarder.install()
    sys.exit(supervise_app(plan, forwarder, None))
    """
)


def start_harness(tmp_path: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path), *command],
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_ready(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready"), line
    return line


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_code_passes_through(tmp_path: Path, code: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(tmp_path), sys.executable, "-c", f"exit({code})"],
        check=False,
    )
    assert done.returncode == code


def test_app_runs_in_workdir(tmp_path: Path) -> None:
    process = start_harness(tmp_path, sys.executable, "-c", APP, "0")
    assert wait_ready(process).split()[1] == str(tmp_path)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)


@pytest.mark.parametrize(
    ("signum", "expected_exit"),
    [
        (signal.SIGTERM, 17),  # the app's own exit code
        (signal.SIGINT, 0),
        (signal.SIGQUIT, 0),
        (signal.SIGHUP, 128 + signal.SIGHUP),  # the app died of it: 128+N
    ],
)
def test_signals_are_forwarded_once(
    tmp_path: Path, signum: signal.Signals, expected_exit: int
) -> None:
    process = start_harness(tmp_path, sys.executable, "-c", APP, "17")
    wait_ready(process)
    process.send_signal(signum)
    out, _ = process.communicate(timeout=30)
    assert out.split("\n")[0] == f"{signum.name} 1"
    assert f"{signum.name} 2" not in out
    assert process.returncode == expected_exit


def test_exit_status_of_a_signal() -> None:
    assert exit_status(-signal.SIGKILL) == 137
    assert exit_status(5) == 5


def test_command_not_found(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, str(tmp_path), "/nonexistent/app"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 127
    assert "command not found: /nonexistent/app" in done.stderr


def test_signal_before_the_app_starts_is_passed_on() -> None:
    forwarder = SignalForwarder(owns_tty=lambda: False)
    forwarder.received.append(signal.SIGTERM)  # as if it came during mounting
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    forwarder.attach(child.pid)
    assert child.wait(timeout=30) == -signal.SIGTERM


def test_ctrl_c_at_a_terminal_reaches_the_app_once(tmp_path: Path) -> None:
    """The terminal signals the whole foreground group; forwarding too would double it."""
    pid, master = pty.fork()
    if pid == 0:  # the child: become the harness at once (nothing else is safe after fork)
        harness = [sys.executable, "-c", HARNESS, str(tmp_path)]
        os.execv(sys.executable, [*harness, sys.executable, "-c", APP, "0"])
    try:
        output = read_until(master, b"ready")
        os.write(master, b"\x03")  # ^C: the tty driver sends SIGINT to the foreground group
        output += read_until(master, b"SIGINT 1")
        _, status = os.waitpid(pid, 0)
        output += drain(master)
    finally:
        os.close(master)
    assert b"SIGINT 2" not in output
    assert os.waitstatus_to_exitcode(status) == 0


def read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {data!r}"
        if select.select([fd], [], [], remaining)[0]:
            data += os.read(fd, 4096)
    return data


def drain(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.1)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the other side is closed
            break
        if not chunk:
            break
        data += chunk
    return data


# -- bad input through the CLI ----------------------------------------------------------------


def modelfs(*argv: str, config_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--config", str(config_file)] if config_file else []
    return subprocess.run(
        [sys.executable, "-m", "modelfs", *prefix, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "modelfs.conf"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--mount", "compshare:bucket", "{tmp}"], "no command to run"),
        (["run", "--mount", "compshare:bucket", "{tmp}", "--link", "x", "--", "true"],
         "invalid link"),
        (["run", "--mount", "compshare:bucket", "{tmp}", "--workdir", "{tmp}/no", "--", "true"],
         "workdir {tmp}/no does not exist"),
        (["run", "--mount", "compshare:bucket", "/proc", "--workdir", "{tmp}", "--", "true"],
         "/proc is already a proc mount of proc; not taking it over"),
        (["run", "no-such-app"], r"no \[run:no-such-app\] section"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, config_file: Path, argv: list[str], message: str
) -> None:
    done = modelfs(*(word.format(tmp=tmp_path) for word in argv), config_file=config_file)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("modelfs: error: ")
    assert __import__("re").search(message.format(tmp=tmp_path), lines[0]), lines[0]
