"""Paths only this user may touch: the control directory (and its /tmp fallback), the cache.

The control directory of a root mount is /run/modelfs, shared with every other test run on
this machine: the tests here point `runtime_dir` at a temporary directory instead, and the
end-to-end refusal runs the CLI in a private mount namespace with its own /run/modelfs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from modelfs.errors import UnsafePath
from modelfs.host import control, private
from support.mounting import MODELFS

OTHER_UID = 65534  # nobody


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "modelfs-runtime"
    monkeypatch.setattr(control, "runtime_dir", lambda: path)
    return path


def test_without_xdg_runtime_dir_the_fallback_is_per_user_under_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert control.runtime_dir() == tmp_path / "modelfs-4242"
    monkeypatch.delenv("TMPDIR")
    assert control.runtime_dir() == Path("/tmp/modelfs-4242")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert control.runtime_dir() == Path("/run/user/4242/modelfs")


def test_the_control_dir_is_made_0700_and_the_state_file_0600(runtime: Path) -> None:
    control.write_state("abc", {"pid": os.getpid()})
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE((runtime / "abc.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in runtime.iterdir()) == ["abc.json"]  # no temp file left


def test_a_mount_exiting_late_leaves_the_next_mounts_state_alone(runtime: Path) -> None:
    control.write_state("abc", {"spec": "next"})  # the next mount on the mountpoint: us
    (runtime / "abc.sock").touch()
    control.remove_state("abc", pid=os.getpid() + 1)  # the one before, exiting late
    assert sorted(p.name for p in runtime.iterdir()) == ["abc.json", "abc.sock"]
    control.remove_state("abc", pid=os.getpid())
    assert list(runtime.iterdir()) == []


def _owned_by_someone_else(path: Path) -> None:
    path.mkdir(mode=0o700)
    os.chown(path, OTHER_UID, OTHER_UID)


def _open_to_everyone(path: Path) -> None:
    path.mkdir()
    os.chmod(path, 0o777)


def _readable_by_others(path: Path) -> None:
    path.mkdir()
    os.chmod(path, 0o755)


def _a_symlink_to_a_dir_of_ours(path: Path) -> None:
    real = path.with_name("real")
    real.mkdir(mode=0o700)
    path.symlink_to(real)


@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        (_owned_by_someone_else, f"it belongs to uid {OTHER_UID}, not to uid 0"),
        (_open_to_everyone, "mode 0777 lets other users in (chmod 0700 it)"),
        (_readable_by_others, "mode 0755 lets other users in (chmod 0700 it)"),
        (_a_symlink_to_a_dir_of_ours, "it is a symlink"),
    ],
)
def test_a_control_dir_another_user_could_have_made_is_refused(
    runtime: Path, plant: Callable[[Path], None], problem: str
) -> None:
    plant(runtime)
    for attempt in (
        lambda: control.write_state("abc", {"pid": 1}),
        lambda: control.read_state("/mnt/x"),
        lambda: control.request("/mnt/x", {"cmd": "status"}),
        lambda: control.checked_dir(create=True),
    ):
        with pytest.raises(UnsafePath) as refused:
            attempt()
        assert str(refused.value).startswith(f"control directory {runtime} is not safe to use: ")
        assert problem in str(refused.value)
    assert not (runtime / "abc.json").exists()


def test_no_control_dir_means_no_mount(runtime: Path) -> None:
    assert control.read_state("/mnt/x") is None
    with pytest.raises(FileNotFoundError):
        control.request("/mnt/x", {"cmd": "status"})
    assert not runtime.exists()  # a reader never creates it


def test_the_state_file_is_never_written_through_a_planted_symlink(
    runtime: Path, tmp_path: Path
) -> None:
    control.checked_dir(create=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (runtime / f".abc.json.{os.getpid()}.tmp").symlink_to(victim)
    control.write_state("abc", {"pid": 1})
    assert victim.read_text() == "precious"
    assert json.loads((runtime / "abc.json").read_text())["pid"] == os.getpid()
    assert not (runtime / "abc.json").is_symlink()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_cache_root_others_could_write_is_refused_not_narrowed(tmp_path: Path, mode: int) -> None:
    """Narrowing it would keep trusting what another user planted while it was open."""
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, mode)
    with pytest.raises(UnsafePath, match=f"mode {mode:04o} lets other users in"):
        private.own_dir(root, "cache dir")
    assert stat.S_IMODE(root.stat().st_mode) == mode


def test_a_cache_root_others_could_only_read_is_narrowed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o755)  # what older versions made under umask 022
    private.own_dir(root, "cache dir")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_new_private_files_refuse_anything_in_their_place(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        private.open_new(tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()
    os.close(private.open_new(tmp_path / "new"))
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600


def test_make_dirs_makes_every_missing_parent_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        private.make_dirs(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_the_cli_refuses_a_hostile_control_dir_with_one_line(tmp_path: Path) -> None:
    """The real CLI, as root, in a mount namespace whose /run/modelfs another user owns."""
    script = (
        "mount -t tmpfs none /run && mkdir -m 0700 /run/modelfs && "
        f"chown {OTHER_UID} /run/modelfs && "
        f"exec {' '.join(MODELFS)} status {tmp_path}"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "modelfs: error: control directory /run/modelfs is not safe to use: it belongs to uid "
        f"{OTHER_UID}, not to uid 0 (remove it, or use another)"
    ]
