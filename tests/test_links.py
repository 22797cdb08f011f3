"""`--link NAME=SUBPATH`: parsing, atomic replacement, and never deleting real data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from modelfs.errors import AlreadyExists, ConfigError
from modelfs.run.links import LinkAction, LinkSpec, backup_path, install_link, parse_link


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cache_hub=cache_hub_v23", LinkSpec("cache_hub", "cache_hub_v23")),
        ("models=index-tts/v24/", LinkSpec("models", "index-tts/v24")),
        (" logs = logs ", LinkSpec("logs", "logs")),
        ("root=.", LinkSpec("root", ".")),
    ],
)
def test_parse_link(text: str, expected: LinkSpec) -> None:
    assert parse_link(text) == expected


@pytest.mark.parametrize(
    "text",
    ["cache_hub", "=v23", "cache_hub=", "a/b=v23", "..=v23", "x=/abs", "x=../up", "x=a/../.."],
)
def test_parse_link_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid link"):
        parse_link(text)


def test_target_is_inside_the_mount() -> None:
    assert LinkSpec("cache_hub", "v23").target("/mnt/tts") == "/mnt/tts/v23"
    assert LinkSpec("all", ".").target("/mnt/tts") == "/mnt/tts"


def test_create_then_switch_version(tmp_path: Path) -> None:
    (tmp_path / "v23").mkdir()
    (tmp_path / "v24").mkdir()
    app = tmp_path / "app"
    app.mkdir()
    first = install_link(app, str(tmp_path / "v23"), "cache_hub")
    assert first.action is LinkAction.CREATED
    assert os.readlink(app / "cache_hub") == str(tmp_path / "v23")
    again = install_link(app, str(tmp_path / "v23"), "cache_hub")
    assert again.action is LinkAction.UNCHANGED
    switched = install_link(app, str(tmp_path / "v24"), "cache_hub")
    assert switched.action is LinkAction.REPLACED
    assert os.readlink(app / "cache_hub") == str(tmp_path / "v24")
    assert sorted(p.name for p in app.iterdir()) == ["cache_hub"]  # no temp link left


def test_replace_does_not_touch_the_old_target(tmp_path: Path) -> None:
    old = tmp_path / "v23"
    old.mkdir()
    (old / "model.pt").write_bytes(b"weights")
    install_link(tmp_path, str(old), "cache_hub")
    install_link(tmp_path, str(tmp_path / "v24"), "cache_hub")  # a dangling link is fine here
    assert (old / "model.pt").read_bytes() == b"weights"


def test_replacement_is_a_rename(tmp_path: Path) -> None:
    """The link's inode changes in one step: no moment without a cache_hub entry."""
    install_link(tmp_path, "/old", "cache_hub")
    before = os.lstat(tmp_path / "cache_hub").st_ino
    install_link(tmp_path, "/new", "cache_hub")
    assert os.lstat(tmp_path / "cache_hub").st_ino != before


def test_real_directory_is_kept(tmp_path: Path) -> None:
    real = tmp_path / "cache_hub"
    real.mkdir()
    (real / "model.pt").write_bytes(b"local copy")
    with pytest.raises(AlreadyExists, match="real directory"):
        install_link(tmp_path, "/mnt/tts/v23", "cache_hub")
    assert (real / "model.pt").read_bytes() == b"local copy"
    assert not real.is_symlink()


def test_real_file_is_kept(tmp_path: Path) -> None:
    (tmp_path / "cache_hub").write_text("x")
    with pytest.raises(AlreadyExists, match="real file"):
        install_link(tmp_path, "/mnt/tts/v23", "cache_hub")
    assert (tmp_path / "cache_hub").read_text() == "x"


def test_move_aside_renames_with_timestamp(tmp_path: Path) -> None:
    real = tmp_path / "cache_hub"
    real.mkdir()
    (real / "model.pt").write_bytes(b"local copy")
    now = time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))
    result = install_link(tmp_path, "/mnt/tts/v23", "cache_hub", move_aside=True, now=now)
    assert result.action is LinkAction.MOVED_ASIDE
    assert result.backup == tmp_path / "cache_hub.bak-20240506-070809"
    assert (result.backup / "model.pt").read_bytes() == b"local copy"
    assert os.readlink(real) == "/mnt/tts/v23"


def test_backup_name_never_overwrites(tmp_path: Path) -> None:
    now = time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))
    (tmp_path / "cache_hub.bak-20240506-070809").mkdir()
    (tmp_path / "cache_hub.bak-20240506-070809-1").mkdir()
    chosen = backup_path(tmp_path / "cache_hub", now)
    assert chosen.name == "cache_hub.bak-20240506-070809-2"
