"""Bad input gets one clear line on stderr and a non-zero exit, within seconds, never a hang."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support import FaultProxy, SeaweedServer
from support.mounting import MODELFS, Mounted, run_cli

pytestmark = pytest.mark.mount

QUICK = 20.0  # seconds: every refusal must come well within this


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "mnt").mkdir()
    return tmp_path


@pytest.fixture
def config(seaweed: SeaweedServer, workdir: Path, make_config: Callable[..., Path]) -> Path:
    return make_config(workdir, seaweed.endpoint)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def refused(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> str:
    """Run the CLI, assert a quick non-zero exit with exactly one stderr line; return it."""
    started = time.monotonic()
    result = subprocess.run(
        [*MODELFS, *map(str, args)], capture_output=True, text=True, timeout=60, env=env
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("modelfs: error: "), lines
    assert elapsed < QUICK, f"took {elapsed:.1f}s"
    return lines[0]


def mount_args(config: Path, workdir: Path, spec: str, *extra: str) -> list[str]:
    return ["--config", str(config), "mount", "--daemon", "--cache-dir", str(workdir / "cache"),
            *extra, spec, str(workdir / "mnt")]  # fmt: skip


def test_unknown_remote(config: Path, workdir: Path, bucket: str) -> None:
    line = refused(*mount_args(config, workdir, f"nosuch:{bucket}"))
    assert "nosuch" in line
    assert "test" in line  # names the remotes that do exist


@pytest.mark.parametrize("spec", ["no-colon", "test:", ":bucket", "test:Bad_Bucket", "test:b/../x"])
def test_malformed_spec(config: Path, workdir: Path, spec: str) -> None:
    refused(*mount_args(config, workdir, spec))


def test_wrong_credentials(
    seaweed: SeaweedServer, workdir: Path, bucket: str, make_config: Callable[..., Path]
) -> None:
    config = make_config(workdir, seaweed.endpoint, secret_access_key="wrong-secret")
    line = refused(*mount_args(config, workdir, f"test:{bucket}"))
    assert "denied" in line.lower() or "signature" in line.lower()


def test_missing_credentials(seaweed: SeaweedServer, workdir: Path, bucket: str) -> None:
    config = workdir / "nokeys.conf"
    config.write_text(f"[bare]\ntype = s3\nendpoint = {seaweed.endpoint}\nenv_auth = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # No credentials anywhere: an empty HOME, and no instance metadata lookups (never leave
    # this machine).
    env.update(HOME=str(workdir), AWS_EC2_METADATA_DISABLED="true")
    line = refused(*mount_args(config, workdir, f"bare:{bucket}"), env=env)
    assert "credentials" in line.lower()


def test_bucket_that_does_not_exist(config: Path, workdir: Path) -> None:
    line = refused(*mount_args(config, workdir, "test:no-such-bucket-here"))
    assert "no-such-bucket-here" in line
    assert "does not exist" in line


def test_endpoint_refusing_connections(
    workdir: Path, free_port: int, make_config: Callable[..., Path]
) -> None:
    config = make_config(workdir, f"http://127.0.0.1:{free_port}")
    line = refused(*mount_args(config, workdir, "test:anybucket"))
    assert f"127.0.0.1:{free_port}" in line


def test_endpoint_that_never_answers(
    proxy: FaultProxy, workdir: Path, make_config: Callable[..., Path], bucket: str
) -> None:
    proxy.blackhole_next(times=None)
    config = make_config(workdir, proxy.endpoint)
    line = refused(*mount_args(config, workdir, f"test:{bucket}"))
    assert proxy.endpoint.removeprefix("http://") in line


def test_mountpoint_missing(config: Path, workdir: Path, bucket: str) -> None:
    args = mount_args(config, workdir, f"test:{bucket}")
    args[-1] = str(workdir / "absent")
    assert "does not exist" in refused(*args)


def test_mountpoint_not_a_directory(config: Path, workdir: Path, bucket: str) -> None:
    (workdir / "file").write_text("x")
    args = mount_args(config, workdir, f"test:{bucket}")
    args[-1] = str(workdir / "file")
    assert "not a directory" in refused(*args)


def test_mountpoint_not_empty(config: Path, workdir: Path, bucket: str) -> None:
    (workdir / "mnt" / "something").write_text("x")
    assert "not empty" in refused(*mount_args(config, workdir, f"test:{bucket}"))


def test_bad_input_found_by_the_daemon_child_still_exits_2(
    config: Path, workdir: Path, bucket: str
) -> None:
    """`--daemon` relays the child's one line and its exit code, not a generic 1."""
    (workdir / "mnt" / "something").write_text("x")
    assert run_cli(*mount_args(config, workdir, f"test:{bucket}")).returncode == 2


def test_mountpoint_already_mounted(config: Path, workdir: Path, bucket: str) -> None:
    with Mounted(config, f"test:{bucket}", workdir / "mnt", workdir / "cache"):
        line = refused(*mount_args(config, workdir, f"test:{bucket}", "--cache-dir", "/tmp/x"))
        assert "already mounted" in line


def test_cache_dir_not_writable(config: Path, workdir: Path, bucket: str) -> None:
    (workdir / "cachefile").write_text("a file where the cache dir should be")
    args = mount_args(config, workdir, f"test:{bucket}")
    args[args.index("--cache-dir") + 1] = str(workdir / "cachefile")
    assert "cache dir" in refused(*args)


@pytest.mark.parametrize(
    ("make_unsafe", "problem"),
    [
        (lambda path: os.chmod(path, 0o777), "mode 0777 lets other users in (chmod 0755 it)"),
        (lambda path: os.chmod(path, 0o770), "mode 0770 lets other users in (chmod 0750 it)"),
        (lambda path: os.chown(path, 65534, 65534), "it belongs to uid 65534, not to uid 0"),
    ],
)
def test_a_cache_dir_other_users_could_plant_blocks_in_is_refused(
    config: Path, workdir: Path, bucket: str, make_unsafe: Callable[[Path], None], problem: str
) -> None:
    cache = workdir / "cache"
    cache.mkdir()
    make_unsafe(cache)
    for args in (
        mount_args(config, workdir, f"test:{bucket}"),
        [a for a in mount_args(config, workdir, f"test:{bucket}") if a != "--daemon"],
    ):
        line = refused(*args)
        assert line.startswith(f"modelfs: error: cache dir {cache} is not safe to use: "), line
        assert problem in line
        assert run_cli(*args).returncode == 2
    assert not (workdir / "mnt").is_mount()


def test_fuse_unavailable(config: Path, workdir: Path, bucket: str) -> None:
    # A private mount namespace whose /dev has no fuse device.
    script = "mount -t tmpfs none /dev && exec " + " ".join(
        [*MODELFS, *mount_args(config, workdir, f"test:{bucket}")]
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "modelfs: error: FUSE is not available: /dev/fuse is missing (load the fuse module)"
    ]


def test_unmount_of_something_not_mounted(workdir: Path) -> None:
    assert "not mounted" in refused("unmount", workdir / "mnt")


def test_status_without_a_mount(workdir: Path) -> None:
    assert "no modelfs mount" in refused("status", workdir / "mnt")


def test_bad_option_values(config: Path, workdir: Path, bucket: str) -> None:
    result = run_cli(*mount_args(config, workdir, f"test:{bucket}", "--cache-max-size", "lots"))
    assert result.returncode == 2
    assert "invalid size" in result.stderr
