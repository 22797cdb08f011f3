"""Remote specs, config file search order, masked listing and resolve() errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from modelfs.config import files
from modelfs.config.files import (
    config_path,
    describe_remotes,
    load_config,
    load_remotes,
    resolve,
)
from modelfs.config.remote import (
    RemoteConfig,
    RemoteSpec,
    mask_key_id,
    parse_spec,
)
from modelfs.errors import ConfigError

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty HOME and no config-related environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("MODELFS_CONFIG", raising=False)
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- parse_spec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("r:bucket", RemoteSpec("r", "bucket", "")),
        ("r:bucket/", RemoteSpec("r", "bucket", "")),
        ("r:bucket/models", RemoteSpec("r", "bucket", "models/")),
        ("r:bucket/models/", RemoteSpec("r", "bucket", "models/")),
        ("r:bucket/cache_hub_v23/models", RemoteSpec("r", "bucket", "cache_hub_v23/models/")),
        ("compshare:index-tts-data", RemoteSpec("compshare", "index-tts-data", "")),
        ("my remote:b.c-d/x y", RemoteSpec("my remote", "b.c-d", "x y/")),
        ("r:bkt/a:b", RemoteSpec("r", "bkt", "a:b/")),
    ],
)
def test_parse_spec_accepts(text: str, expected: RemoteSpec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("bucket", "expected REMOTE:BUCKET"),
        (":bucket", "empty remote name"),
        ("r:", "empty bucket name"),
        ("r:/bucket", "empty bucket name"),
        ("r:ab", "invalid bucket name 'ab'"),
        ("r:" + "a" * 64, "invalid bucket name"),
        ("r:Bucket", "invalid bucket name 'Bucket'"),
        ("r:buck_et", "invalid bucket name"),
        ("r:-bucket", "invalid bucket name"),
        ("r:bucket-", "invalid bucket name"),
        ("r:my..bucket", "no '..'"),
        ("r:192.168.1.1", "not an IP address"),
        ("r:bucket//models", "empty segment"),
        ("r:bucket/a//b", "empty segment"),
        ("r:bucket//", "empty segment"),
        ("r:bucket/../etc", "'..' is not allowed"),
        ("r:bucket/a/./b", "'.' is not allowed"),
        ("r:bucket/a/..", "'..' is not allowed"),
        ("r/x:bucket", "bad remote name"),
    ],
)
def test_parse_spec_rejects_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="invalid") as caught:
        parse_spec(text)
    message = str(caught.value)
    assert problem in message
    assert "\n" not in message


def test_spec_str_round_trips() -> None:
    for text in ("r:bucket", "r:bucket/models/v23/"):
        assert str(parse_spec(text)) == text


# -- config search order ---------------------------------------------------------------------

REMOTE_A = "[a]\ntype = s3\n"
REMOTE_B = "[b]\ntype = s3\n"


def test_no_config_anywhere(isolated_home: Path) -> None:
    assert config_path(None) is None
    assert load_remotes(None) == {}


def test_rclone_conf_is_the_last_resort(isolated_home: Path) -> None:
    rclone = write(isolated_home / ".config/rclone/rclone.conf", REMOTE_A)
    assert config_path(None) == rclone
    assert list(load_remotes(None)) == ["a"]


def test_modelfs_conf_wins_over_rclone_conf(isolated_home: Path) -> None:
    write(isolated_home / ".config/rclone/rclone.conf", REMOTE_A)
    modelfs = write(isolated_home / ".config/modelfs/modelfs.conf", REMOTE_B)
    assert config_path(None) == modelfs
    assert list(load_remotes(None)) == ["b"]


def test_xdg_config_home_replaces_dot_config(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated_home / ".config/modelfs/modelfs.conf", REMOTE_A)
    xdg = tmp_path / "xdg"
    in_xdg = write(xdg / "rclone/rclone.conf", REMOTE_B)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert config_path(None) == in_xdg


def test_env_variable_wins_over_default_files(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated_home / ".config/modelfs/modelfs.conf", REMOTE_A)
    from_env = write(tmp_path / "env.conf", REMOTE_B)
    monkeypatch.setenv("MODELFS_CONFIG", str(from_env))
    assert config_path(None) == from_env


def test_explicit_file_wins_over_everything(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated_home / ".config/modelfs/modelfs.conf", REMOTE_A)
    monkeypatch.setenv("MODELFS_CONFIG", str(write(tmp_path / "env.conf", REMOTE_A)))
    explicit = write(tmp_path / "explicit.conf", REMOTE_B)
    assert config_path(str(explicit)) == explicit
    assert list(load_remotes(str(explicit))) == ["b"]


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match=r"nope\.conf \(given with --config\) does not exist"):
        config_path(str(missing))


def test_missing_env_file_is_an_error(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated_home / ".config/rclone/rclone.conf", REMOTE_A)
    monkeypatch.setenv("MODELFS_CONFIG", str(tmp_path / "typo.conf"))
    with pytest.raises(ConfigError, match=r"from \$MODELFS_CONFIG\) does not exist"):
        load_remotes(None)


# -- file contents ---------------------------------------------------------------------------

FULL_CONFIG = f"""
[compshare]
type = s3
provider = Other
access_key_id = {AWS_KEY_ID}
secret_access_key = {AWS_SECRET}
endpoint = https://s3-cn-wlcb.s3stor.compshare.cn
region = cn-wlcb

[aws]
type = s3
provider = AWS
env_auth = true
region = eu-west-1

[bare-host]
type = s3
endpoint = minio.internal:9000/
access_key_id = {AWS_KEY_ID}
secret_access_key = 50%off
session_token = FwoGZXIvYXdzEXAMPLE

[gdrive]
type = drive

[run:indextts]
app = ./start_app.sh

[mount:models]
remote = compshare:index-tts-data
"""


@pytest.fixture
def full_config(tmp_path: Path) -> Path:
    return write(tmp_path / "modelfs.conf", FULL_CONFIG)


def test_load_remotes_reads_rclone_fields(full_config: Path) -> None:
    remotes = load_remotes(str(full_config))
    assert sorted(remotes) == ["aws", "bare-host", "compshare", "gdrive"]
    assert remotes["compshare"] == RemoteConfig(
        name="compshare",
        type="s3",
        provider="Other",
        access_key_id=AWS_KEY_ID,
        secret_access_key=AWS_SECRET,
        endpoint="https://s3-cn-wlcb.s3stor.compshare.cn",
        region="cn-wlcb",
    )
    assert not remotes["compshare"].uses_default_credentials
    assert remotes["aws"].env_auth
    assert remotes["aws"].uses_default_credentials
    bare = remotes["bare-host"]
    assert bare.endpoint == "https://minio.internal:9000"  # scheme added, trailing / dropped
    assert bare.secret_access_key == "50%off"  # no '%' interpolation
    assert bare.session_token == "FwoGZXIvYXdzEXAMPLE"


def test_sections_of_other_commands_share_the_file(full_config: Path) -> None:
    parser = load_config(str(full_config))
    assert parser["run:indextts"]["app"] == "./start_app.sh"
    assert "run:indextts" not in load_remotes(str(full_config))


def test_repr_never_shows_secrets(full_config: Path) -> None:
    shown = repr(load_remotes(str(full_config))["bare-host"])
    assert "50%off" not in shown
    assert "FwoGZXIvYXdzEXAMPLE" not in shown


def test_resolve_returns_remote_and_spec(full_config: Path) -> None:
    remote, spec = resolve("compshare:index-tts-data/cache_hub_v23", str(full_config))
    assert remote.name == "compshare"
    assert spec == RemoteSpec("compshare", "index-tts-data", "cache_hub_v23/")


def test_resolve_unknown_remote_lists_the_known_ones(full_config: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve("nas:bucket", str(full_config))
    message = str(caught.value)
    assert "unknown remote 'nas'" in message
    assert str(full_config) in message
    assert "aws, bare-host, compshare, gdrive" in message


def test_resolve_without_any_config_says_where_it_looked(isolated_home: Path) -> None:
    with pytest.raises(ConfigError, match="no config file found") as caught:
        resolve("nas:bucket", None)
    assert str(isolated_home / ".config/rclone/rclone.conf") in str(caught.value)


def test_resolve_rejects_other_remote_types(full_config: Path) -> None:
    with pytest.raises(
        ConfigError, match="remote 'gdrive' has type drive; modelfs supports only s3"
    ):
        resolve("gdrive:bucket", str(full_config))


def test_resolve_rejects_a_bad_spec_before_reading_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty segment"):
        resolve("r:bucket//x", str(tmp_path / "does-not-matter.conf"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[a]\ntype = s3\n[a]\ntype = s3\n", "invalid config file"),
        ("type = s3\n", "invalid config file"),
        ("[a]\ntype = s3\nenv_auth = maybe\n", r"\[a\] env_auth = 'maybe' is not a boolean"),
        ("RCLONE_ENCRYPT_V0:\nabcdef", "encrypted by rclone"),
    ],
)
def test_broken_files_give_one_line_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "bad.conf", text)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_remotes(str(path))
    assert "\n" not in str(caught.value)


# -- describe_remotes ------------------------------------------------------------------------


def test_describe_masks_secrets(full_config: Path) -> None:
    lines = describe_remotes(str(full_config))
    assert [line.split(":")[0] for line in lines] == ["aws", "bare-host", "compshare", "gdrive"]
    text = "\n".join(lines)
    assert AWS_KEY_ID not in text
    assert AWS_SECRET not in text
    assert "50%off" not in text
    assert "FwoGZXIvYXdzEXAMPLE" not in text
    compshare = lines[2]
    assert "access_key_id=AKIA****" in compshare
    assert "secret_access_key=****" in compshare
    assert "endpoint=https://s3-cn-wlcb.s3stor.compshare.cn" in compshare
    assert "region=cn-wlcb" in compshare
    assert "default chain" in lines[0]
    assert "unsupported" in lines[3]


@pytest.mark.parametrize(
    ("key_id", "shown"),
    [(AWS_KEY_ID, "AKIA****"), ("short", "****"), ("", "****")],
)
def test_mask_key_id(key_id: str, shown: str) -> None:
    assert mask_key_id(key_id) == shown


def test_config_written_by_test_helper_resolves(
    tmp_path: Path, make_config: Callable[..., Path]
) -> None:
    path = make_config(tmp_path, "http://127.0.0.1:1", name="other")
    remote, spec = resolve("other:bucket/x", str(path))
    assert remote.endpoint == "http://127.0.0.1:1"
    assert spec.prefix == "x/"


# -- a config file with keys that others can read --------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: no file warned about yet."""
    monkeypatch.setattr(files, "_warned_readable", set())


def readable_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "group or others can read" in r.message]


@pytest.mark.usefixtures("fresh_warnings")
def test_keys_that_others_can_read_are_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "modelfs.conf", FULL_CONFIG)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="modelfs.config.files"):
        load_remotes(str(path))
        load_config(str(path))
        resolve("compshare:bucket", str(path))
    assert readable_warnings(caplog) == [
        f"config file {path} holds secret keys and group or others can read it (mode 0644): "
        f"chmod 600 {path}"
    ]
    assert AWS_SECRET not in caplog.text


@pytest.mark.usefixtures("fresh_warnings")
@pytest.mark.parametrize(
    ("text", "mode"),
    [
        (FULL_CONFIG, 0o600),  # keys, private: fine
        (FULL_CONFIG, 0o400),
        ("[aws]\ntype = s3\nenv_auth = true\n", 0o644),  # no keys in the file
        (f"[a]\ntype = s3\naccess_key_id = {AWS_KEY_ID}\n", 0o644),  # an id is no secret
    ],
)
def test_no_warning_without_readable_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, mode: int
) -> None:
    path = write(tmp_path / "modelfs.conf", text)
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="modelfs.config.files"):
        load_remotes(str(path))
    assert readable_warnings(caplog) == []


def test_the_cli_warns_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "modelfs.conf", FULL_CONFIG)
    path.chmod(0o640)
    done = subprocess.run(
        [sys.executable, "-m", "modelfs", "--config", str(path), "remotes"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"config file {path} holds secret keys and group or others can read it (mode 0640): "
        f"chmod 600 {path}"
    ]
