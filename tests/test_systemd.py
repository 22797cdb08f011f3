"""systemd units: shipped files, `modelfs systemd install`, and sd_notify of a real mount.

`systemd-analyze verify` runs without systemd as PID 1. It returns non-zero for a missing
ExecStart binary but only *warns* about unknown keys or bad values, so a unit passes here only
if the command succeeds AND prints nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelfs.errors import ConfigError
from modelfs.host.mountinfo import find_mount, read_mountinfo
from modelfs.run.mounthelper import modelfs_argv, parse_argv
from modelfs.run.plan import MountTarget
from modelfs.run.systemd import (
    DEFAULT_MODELFS,
    home_is_free,
    mount_drop_in,
    mount_unit,
    run_unit,
)
from support import SECRET_KEY, SeaweedServer

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "systemd"
MODELFS = str(Path(sys.executable).parent / "modelfs")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def verify(unit_dir: Path, *units: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None, "systemd-analyze missing: apt-get install systemd"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}  # ':' = then the default path
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *units],
        cwd=unit_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_clean(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout
    assert done.stderr.strip() == "", done.stderr


def test_shipped_units_are_the_generated_defaults() -> None:
    assert (SHIPPED / "modelfs@.service").read_text() == mount_unit()
    assert (SHIPPED / "modelfs-run@.service").read_text() == run_unit()


@pytest.mark.parametrize("name", ["modelfs@.service", "modelfs-run@.service"])
def test_shipped_units_verify(tmp_path: Path, name: str) -> None:
    """Verbatim but for the binary path, which must exist for verify to pass."""
    text = (SHIPPED / name).read_text()
    assert DEFAULT_MODELFS in text
    (tmp_path / name).write_text(text.replace(DEFAULT_MODELFS, MODELFS))
    instance = name.replace("@", "@example")
    assert_clean(verify(tmp_path, name, instance))


def test_the_mount_units_cache_and_files_are_private() -> None:
    """systemd's CacheDirectory= is 0755 unless told; everything the mount creates is 0600."""
    lines = mount_unit().splitlines()
    assert "CacheDirectoryMode=0700" in lines
    assert "UMask=0077" in lines


def test_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = mount_unit(MODELFS).replace("Type=notify", "Type=notifyy\nRestartt=always")
    (tmp_path / "modelfs@.service").write_text(broken)
    done = verify(tmp_path, "modelfs@x.service")
    assert "notifyy" in done.stderr
    assert "Restartt" in done.stderr
    (tmp_path / "modelfs@.service").write_text(mount_unit("/nonexistent/modelfs"))
    assert verify(tmp_path, "modelfs@x.service").returncode != 0


CONFIG = textwrap.dedent(
    """\
    [tts-remote]
    type = s3
    provider = Other
    access_key_id = AKIDEXAMPLE
    secret_access_key = {secret}
    endpoint = http://127.0.0.1:9

    [mount:tts]
    remote = tts-remote:index-tts-data
    mountpoint = /mnt/tts storage
    cache-max-size = 50G
    allow-other = true

    [run:index-tts]
    mount = tts
    link = cache_hub=cache_hub_v23
    workdir = /srv/index-tts
    command = python webui.py --listen --port 7860

    [run:inline]
    mount = tts-remote:index-tts-data /mnt/inline
    command = python webui.py
    """
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "modelfs.conf"
    path.write_text(CONFIG.format(secret=SECRET_KEY))
    path.chmod(0o600)
    return path


def modelfs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfs", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_install_run_section_with_its_mount(tmp_path: Path, config_file: Path) -> None:
    dest = tmp_path / "units"
    done = modelfs(
        "--config", str(config_file), "systemd", "install", "index-tts", "--dest", str(dest)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "systemctl daemon-reload && systemctl enable --now modelfs-run@index-tts.service"
    )
    written = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert written == [
        "modelfs-run@.service",
        "modelfs-run@index-tts.service.d/modelfs.conf",
        "modelfs@.service",
        "modelfs@tts.service.d/modelfs.conf",
    ]
    for path in dest.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert SECRET_KEY not in text
            assert "AKIDEXAMPLE" not in text
    run_unit_text = (dest / "modelfs-run@.service").read_text()
    assert "--config ${MODELFS_CONFIG} run $MODELFS_RUN_OPTIONS %i" in run_unit_text
    assert f"MODELFS_CONFIG={config_file}" in run_unit_text
    drop_in = (dest / "modelfs-run@index-tts.service.d/modelfs.conf").read_text().splitlines()
    # The mount unit owns the mount; the run goes with it and never mounts or heals by itself.
    for line in ("Wants=modelfs@tts.service", "After=modelfs@tts.service",
                 "PartOf=modelfs@tts.service", "Environment=MODELFS_RUN_OPTIONS=--external-mount",
                 "ProtectSystem=full", "PrivateTmp=yes"):  # fmt: skip
        assert line in drop_in
    assert "ProtectHome=yes" not in drop_in  # the app runs as root: /root is its home
    assert_clean(verify(dest, "modelfs@tts.service", "modelfs-run@index-tts.service"))


def test_an_app_user_outside_home_gets_protect_home(tmp_path: Path, config_file: Path) -> None:
    with config_file.open("a") as file:
        file.write("\n[run:as-nobody]\nmount = tts\nuser = nobody\ncommand = ./serve\n")
    dest = tmp_path / "units"
    done = modelfs(
        "--config", str(config_file), "systemd", "install", "as-nobody", "--dest", str(dest),
        "--modelfs", MODELFS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    drop_in = (dest / "modelfs-run@as-nobody.service.d/modelfs.conf").read_text().splitlines()
    assert "ProtectHome=yes" in drop_in  # nobody's home is /nonexistent, nothing under /home
    assert_clean(verify(dest, "modelfs-run@as-nobody.service"))


def test_home_is_free_only_when_no_path_is_under_a_home() -> None:
    assert home_is_free(["/srv/app", "/mnt/tts", "/usr/local/bin/modelfs", "/nonexistent"])
    assert not home_is_free(["/srv/app", "/home/me/.venv/bin/modelfs"])
    assert not home_is_free(["/root"])
    assert not home_is_free(["/run/user/1000/app"])
    assert home_is_free(["/homework/x", "/rooted"])


def test_units_keep_restarting_through_a_boot_time_outage_but_not_on_bad_input() -> None:
    """StartLimitBurst=5 in 300 s left the units failed for good after ~40 s of outage."""
    for text in (mount_unit(), run_unit()):
        lines = text.splitlines()
        assert "StartLimitIntervalSec=0" in lines
        assert not [line for line in lines if line.startswith("StartLimitBurst")]
        assert "Restart=on-failure" in lines
        assert "RestartSec=10" in lines
        assert "RestartPreventExitStatus=2" in lines
        assert "NoNewPrivileges=yes" in lines


def test_the_mount_unit_runs_in_the_hosts_mount_namespace() -> None:
    """Any of these would put the FUSE mount in a namespace the host never sees."""
    keys = [line.partition("=")[0] for line in mount_unit().splitlines() if "=" in line]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "PrivateMounts"):
        assert key not in keys


def test_this_systemd_knows_no_stepped_restart_delay(tmp_path: Path) -> None:
    """Why RestartSec is constant (see run/systemd.py): this systemd rejects the keys."""
    (tmp_path / "modelfs@.service").write_text(
        mount_unit(MODELFS).replace("RestartSec=10", "RestartSec=10\nRestartSteps=5")
    )
    done = verify(tmp_path, "modelfs@x.service")
    version = subprocess.run(
        [str(SYSTEMD_ANALYZE), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    if int(version) >= 254:
        pytest.skip(f"systemd {version} has RestartSteps=: the units could use it")
    assert "Unknown key 'RestartSteps'" in done.stderr


def test_install_mount_section(tmp_path: Path, config_file: Path) -> None:
    dest = tmp_path / "units"
    done = modelfs("--config", str(config_file), "systemd", "install", "tts", "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert "enable --now modelfs@tts.service" in done.stdout
    drop_in = (dest / "modelfs@tts.service.d/modelfs.conf").read_text()
    assert '"MODELFS_SOURCE=tts-remote:index-tts-data"' in drop_in
    assert '"MODELFS_MOUNTPOINT=/mnt/tts storage"' in drop_in
    assert '"MODELFS_OPTIONS=--cache-max-size 50G --allow-other"' in drop_in
    assert not (dest / "modelfs-run@.service").exists()
    assert_clean(verify(dest, "modelfs@tts.service"))


def test_install_dry_run_writes_nothing(tmp_path: Path, config_file: Path) -> None:
    dest = tmp_path / "units"
    done = modelfs(
        "--config",
        str(config_file),
        "systemd",
        "install",
        "inline",
        "--dest",
        str(dest),
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    assert f"# {dest}/modelfs-run@.service" in done.stdout
    assert "modelfs@.service" not in done.stdout  # an inline mount has no mount unit
    assert not dest.exists()


def test_install_unknown_section(tmp_path: Path, config_file: Path) -> None:
    done = modelfs(
        "--config", str(config_file), "systemd", "install", "nope", "--dest", str(tmp_path)
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"modelfs: error: no [mount:nope], [run:nope] or [serve:nope] section in {config_file}"
    )


def test_drop_in_escapes_what_systemd_interprets() -> None:
    text = mount_drop_in(MountTarget("r:bucket", '/mnt/100% "x"', ("--read-only",)))
    assert r'"MODELFS_MOUNTPOINT=/mnt/100%% \"x\""' in text


# -- the mount unit's protocol against a real notify socket ---------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        yield address, server


def receive(server: socket.socket, timeout: float) -> str:
    server.settimeout(timeout)
    return server.recv(4096).decode()


@pytest.mark.mount
def test_ready_only_after_the_mount_answers(
    tmp_path: Path,
    seaweed: SeaweedServer,
    bucket: str,
    make_config: Callable[..., Path],
    notify_socket: tuple[str, socket.socket],
) -> None:
    """What the unit's ExecStart does, with $NOTIFY_SOCKET set as systemd would."""
    seaweed.client().put_object(Bucket=bucket, Key="cache_hub/config.json", Body=b"{}")
    config = make_config(tmp_path, seaweed.endpoint, name="unit")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    address, server = notify_socket
    command = [
        MODELFS, "--config", str(config), "mount", "--cache-dir", str(tmp_path / "cache"),
        f"unit:{bucket}", str(mountpoint),
    ]  # fmt: skip
    process = subprocess.Popen(command, env={**os.environ, "NOTIFY_SOCKET": address})
    try:
        message = receive(server, 60)
        # The instant READY=1 is read, the mount must already be there and answering.
        assert "READY=1" in message.split("\n")
        entry = find_mount(str(mountpoint), read_mountinfo())
        assert entry is not None
        assert entry.fstype == "fuse.modelfs"
        assert (mountpoint / "cache_hub" / "config.json").read_bytes() == b"{}"
        process.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in receive(server, 30).split("\n")
        assert process.wait(timeout=60) == 0
        assert find_mount(str(mountpoint), read_mountinfo()) is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        subprocess.run(
            ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False
        )


@pytest.mark.mount
def test_no_ready_when_the_mount_fails(
    tmp_path: Path, make_config: Callable[..., Path], notify_socket: tuple[str, socket.socket]
) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", name="down")  # nothing listens on 9
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    address, server = notify_socket
    done = subprocess.run(
        [MODELFS, "--config", str(config), "mount", "down:some-bucket", str(mountpoint)],
        env={**os.environ, "NOTIFY_SOCKET": address},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    server.setblocking(False)
    with pytest.raises(BlockingIOError):
        server.recv(4096)


# -- mount.modelfs, the fstab helper ---------------------------------------------------------


def test_helper_translates_fstab_options() -> None:
    call = parse_argv(
        ["r:bucket/models", "/mnt/m", "-n", "-o",
         "rw,_netdev,nofail,x-systemd.automount,allow_other,ro,cache_dir=/var/cache/m,"
         "cache_max_size=50G,config=/etc/modelfs/modelfs.conf", "-t", "fuse.modelfs"]
    )  # fmt: skip
    assert modelfs_argv(call) == [
        "--config", "/etc/modelfs/modelfs.conf", "mount", "--daemon",
        "--allow-other", "--read-only", "--cache-dir", "/var/cache/m", "--cache-max-size", "50G",
        "r:bucket/models", "/mnt/m",
    ]  # fmt: skip


def test_helper_forwards_switches_off_and_on() -> None:
    call = parse_argv(["r:bucket", "/mnt/m", "-o", "no_warm_up,prefetch_small,no_prefetch_small"])
    assert modelfs_argv(call) == [
        "mount", "--daemon", "--no-warm-up", "--prefetch-small", "--no-prefetch-small",
        "r:bucket", "/mnt/m",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="unknown mount option 'no_read_only'"):
        modelfs_argv(parse_argv(["r:bucket", "/mnt/m", "-o", "no_read_only"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["r:bucket", "/mnt/m", "-o", "cache_dri=/x"], "unknown mount option 'cache_dri=/x'"),
        (["r:bucket", "/mnt/m", "-o", "cache_max_size=big"], "invalid cache-max-size"),
        (["r:bucket"], "usage: mount.modelfs"),
    ],
)
def test_helper_rejects(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        modelfs_argv(parse_argv(argv))


def test_helper_sloppy_ignores_unknown() -> None:
    call = parse_argv(["r:bucket", "/mnt/m", "-s", "-o", "whatever=1"])
    assert modelfs_argv(call) == ["mount", "--daemon", "r:bucket", "/mnt/m"]


def test_helper_fake_prints_the_command() -> None:
    helper = Path(sys.executable).parent / "mount.modelfs"
    done = subprocess.run(
        [str(helper), "r:bucket", "/mnt/m", "-f", "-o", "ro"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("-m modelfs mount --daemon --read-only r:bucket /mnt/m")


@pytest.mark.mount
def test_helper_mounts_for_real(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, make_config: Callable[..., Path]
) -> None:
    seaweed.client().put_object(Bucket=bucket, Key="a.txt", Body=b"via fstab")
    config = make_config(tmp_path, seaweed.endpoint, name="fstab")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    helper = Path(sys.executable).parent / "mount.modelfs"
    options = f"_netdev,ro,config={config},cache_dir={tmp_path / 'cache'}"
    try:
        done = subprocess.run(
            [str(helper), f"fstab:{bucket}", str(mountpoint), "-o", options],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert (mountpoint / "a.txt").read_bytes() == b"via fstab"
    finally:
        subprocess.run(
            ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False
        )
