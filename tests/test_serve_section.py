"""`modelfs serve --section NAME` and its unit: the link service configured by a `[serve:NAME]`
section of the config file, which is what `modelfs-serve@NAME.service` runs.

The service runs for real (a subprocess against SeaweedFS through a `FaultProxy`); the unit is
checked with `systemd-analyze verify` and installed with `modelfs systemd install`.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfs.run.systemd import DEFAULT_MODELFS, serve_unit
from support import SECRET_KEY, FaultProxy, SeaweedServer, make_config
from support.linkserver import TOKEN, Bucket, LinkServer, MiB, follow, free_port

SHIPPED = Path(__file__).resolve().parent.parent / "systemd" / "modelfs-serve@.service"


@pytest.fixture
def store(seaweed: SeaweedServer, bucket: str, tmp_path: Path) -> Iterator[Bucket]:
    with FaultProxy(seaweed.endpoint) as proxy:
        config = make_config(tmp_path, proxy.endpoint, name="a")
        found = Bucket(seaweed, bucket, proxy, config, tmp_path)
        found.put("v23/model.pt", os.urandom(MiB + 3))
        found.put("private/secret.key", b"not for you")
        (tmp_path / "tokens").write_text(f"{TOKEN} alice\n")
        (tmp_path / "tokens").chmod(0o600)
        yield found


def add_section(store: Bucket, name: str, lines: list[str]) -> None:
    with store.config.open("a") as file:
        file.write(f"\n[serve:{name}]\n" + "".join(f"{line}\n" for line in lines))


def team_section(store: Bucket, port: int, *extra: str) -> None:
    add_section(
        store,
        "team",
        [
            f"source = a:{store.name}",
            "prefix = v23 other",
            f"listen = 127.0.0.1:{port}",
            f"tokens = {store.tmp / 'tokens'}",
            "link_ttl = 2m",
            f"access-log = {store.tmp / 'access.log'}",
            *extra,
        ],
    )


def test_a_section_configures_the_whole_service(store: Bucket) -> None:
    port = free_port()
    team_section(store, port)
    server = LinkServer(store, "--section", "team", port=port)
    try:
        assert server.request("GET", "/v23/model.pt")[0] == 401  # tokens = ... is in force
        status, headers, _ = server.request("GET", "/v23/model.pt", token=TOKEN)
        assert status == 302
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["location"]).query)
        assert query["X-Amz-Expires"] == ["120"]  # link_ttl = 2m (underscore or dash)
        assert follow(f"{server.url}/v23/model.pt") == store.files["v23/model.pt"]
        assert server.request("GET", "/private/secret.key", token=TOKEN)[0] == 404  # prefix
    finally:
        server.stop()
    log = (store.tmp / "access.log").read_text()
    assert "/v23/model.pt 302" in log
    assert TOKEN not in log
    assert SECRET_KEY not in log
    assert (store.tmp / "access.log").stat().st_mode & 0o777 == 0o600


def test_flags_win_over_the_section(store: Bucket) -> None:
    port = free_port()
    team_section(store, port)
    server = LinkServer(store, "--section", "team", "--link-ttl", "45s", port=port)
    try:
        status, headers, _ = server.request("GET", "/v23/model.pt", token=TOKEN)
        assert status == 302
        assert "X-Amz-Expires=45" in headers["location"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["source = a:b", "listen_on = 1.2.3.4:80"], "[serve:bad]: unknown key 'listen-on'"),
        (["source = a:b", "public = maybe"], "[serve:bad] public = 'maybe' is not a boolean"),
        (["source = a:b", "link-ttl = soon"], "invalid duration 'soon'"),
        (["prefix = v23"], "serve needs REMOTE:BUCKET[/PREFIX], or --section NAME"),
        (["source = a:b", "listen = 0.0.0.0:8088"], "no --tokens"),
    ],
)
def test_a_bad_section_is_one_line_and_exit_2(
    store: Bucket, lines: list[str], message: str
) -> None:
    add_section(store, "bad", lines)
    done = store.cli("serve", "--section", "bad")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1
    assert message in done.stderr


def test_a_missing_section_names_the_ones_there_are(store: Bucket) -> None:
    team_section(store, free_port())
    done = store.cli("serve", "--section", "nope")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "no [serve:nope] section" in done.stderr
    assert "serve:team" in done.stderr


# -- the unit ---------------------------------------------------------------------------------


def test_the_shipped_serve_unit_is_the_generated_default() -> None:
    assert SHIPPED.read_text() == serve_unit()


def test_the_serve_unit_is_sandboxed_and_holds_no_secret() -> None:
    lines = serve_unit().splitlines()
    for wanted in (
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "UMask=0077",
        "LogsDirectoryMode=0700",
        "RestartPreventExitStatus=2",
        "StartLimitIntervalSec=0",
        "Type=notify",
    ):
        assert wanted in lines
    assert any(line.endswith("serve --section %i") for line in lines)
    assert "secret" not in serve_unit().lower()
    assert "--tokens" not in serve_unit()
    assert "access_key" not in serve_unit()


def test_the_serve_unit_verifies(tmp_path: Path) -> None:
    from test_systemd import MODELFS, assert_clean, verify

    text = SHIPPED.read_text()
    assert DEFAULT_MODELFS in text
    (tmp_path / SHIPPED.name).write_text(text.replace(DEFAULT_MODELFS, MODELFS))
    assert_clean(verify(tmp_path, SHIPPED.name, "modelfs-serve@team.service"))


def test_systemd_install_of_a_serve_section(store: Bucket) -> None:
    team_section(store, 8088)
    add_section(store, "both", [f"source = a:{store.name}"])
    with store.config.open("a") as file:
        file.write(f"\n[mount:both]\nremote = a:{store.name}\nmountpoint = /mnt/both\n")
    dest = store.tmp / "units"
    done = store.cli("systemd", "install", "team", "--dest", str(dest), "--modelfs", "/bin/true")
    assert done.returncode == 0, done.stderr
    assert "systemctl enable --now modelfs-serve@team.service" in done.stdout
    assert sorted(path.name for path in dest.iterdir()) == ["modelfs-serve@.service"]
    unit = (dest / "modelfs-serve@.service").read_text()
    assert "ExecStart=/bin/true --config ${MODELFS_CONFIG} serve --section %i" in unit
    assert f"Environment=MODELFS_CONFIG={store.config.resolve()}" in unit
    assert SECRET_KEY not in unit
    assert TOKEN not in unit
    # A name with a mount section too: `serve:NAME` picks the link service.
    both = store.cli("systemd", "install", "serve:both", "--dest", str(dest), "--dry-run")
    assert "modelfs-serve@both.service" in both.stdout, both.stderr
    mount = store.cli("systemd", "install", "both", "--dest", str(dest), "--dry-run")
    assert "modelfs@both.service" in mount.stdout, mount.stderr


def test_the_serve_unit_starts_the_service_as_systemd_would(store: Bucket) -> None:
    """ExecStart= with %i and ${MODELFS_CONFIG} expanded, run as is: the unit's command works."""
    port = free_port()
    team_section(store, port)
    exec_start = next(line for line in serve_unit().splitlines() if line.startswith("ExecStart="))
    words = exec_start.removeprefix("ExecStart=").split()
    words = [
        word.replace("${MODELFS_CONFIG}", str(store.config)).replace("%i", "team")
        for word in words[1:]
    ]
    assert words[:3] == ["--config", str(store.config), "serve"]
    server = LinkServer(store, *words[3:], port=port)  # LinkServer says `--config C serve`
    try:
        assert follow(f"{server.url}/v23/model.pt") == store.files["v23/model.pt"]
    finally:
        server.stop()
