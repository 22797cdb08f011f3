"""Keys that rotate, expire or are revoked (docs/semantics.md, "Credentials").

A SeaweedFS server of this module's own, whose keys the tests change live (`set_keys`:
SeaweedFS re-reads its identities on SIGHUP), behind the FaultProxy, which records each
request's lane and the key it was signed with. The config file is rotated as a rotation tool
does it: a new file renamed over the old one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelfs.config.files import resolve
from modelfs.objects import ObjectId, ObjectInfo
from modelfs.store.s3 import S3Store
from support import FaultProxy, ProxyRequest, SeaweedServer, make_config, unique_bucket_name
from support.lanes import lane_of
from support.metrics import free_port, gauge
from support.mounting import MODELFS, Mounted, force_unmount, run_cli

FIRST = ("modelfs-key-one", "secret-one")
SECOND = ("modelfs-key-two", "secret-two")
WAIT = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(
        tmp_path_factory.mktemp("keys"), access_key=FIRST[0], secret_key=FIRST[1]
    ) as running:
        yield running


@dataclass
class KeyEnv:
    server: SeaweedServer
    proxy: FaultProxy
    bucket: str
    config: Path
    tmp_path: Path

    def put(self, key: str, data: bytes) -> None:
        self.server.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def write_config(self, keys: tuple[str, str]) -> None:
        """Rotate the config file: a new file renamed over the old one."""
        staged = make_config(
            self.tmp_path / "staged",
            self.proxy.endpoint,
            access_key_id=keys[0],
            secret_access_key=keys[1],
        )
        os.replace(staged, self.config)

    def mount(self, *options: str) -> Mounted:
        spec = f"test:{self.bucket}"
        return Mounted(self.config, spec, self.tmp_path / "mnt", self.tmp_path / "cache", *options)

    def signed_with(self, requests: list[ProxyRequest]) -> set[str]:
        return {
            r.headers.get("Authorization", "").split("Credential=")[-1].split("/")[0]
            for r in requests
        }


@pytest.fixture
def env(server: SeaweedServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KeyEnv]:
    server.set_keys(FIRST)  # each test starts from the first key alone
    bucket = server.create_bucket(unique_bucket_name(request.node.name))
    (tmp_path / "staged").mkdir()
    with FaultProxy(server.endpoint) as proxy:
        config = make_config(
            tmp_path, proxy.endpoint, access_key_id=FIRST[0], secret_access_key=FIRST[1]
        )
        yield KeyEnv(server, proxy, bucket, config, tmp_path)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def data_gets(env: KeyEnv, since: int = 0) -> list[ProxyRequest]:
    return [r for r in env.proxy.requests[since:] if r.method == "GET" and r.range is not None]


def read_in_both_lanes(env: KeyEnv, store: S3Store) -> ObjectInfo:
    """A first GET through botocore (which shows the lean lane its URL), then one in the lean
    lane, both signed with the first key."""
    info = store.head("a.bin")
    assert store.get_range(info.id, 0, 10) == b"a" * 10
    assert store.get_range(info.id, 0, 10) == b"a" * 10
    assert [lane_of(r) for r in data_gets(env)] == ["botocore", "lean"]
    assert env.signed_with(env.proxy.requests) == {FIRST[0]}
    return info


def assert_both_lanes_sign_with_the_second_key(
    env: KeyEnv, store: S3Store, info: ObjectInfo
) -> None:
    """The first key revoked: a GET in the lean lane and a HEAD through botocore still work,
    at the first try, signed with the second key."""
    seen = len(env.proxy.requests)
    assert store.get_range(ObjectId("a.bin", info.etag), 0, 10) == b"a" * 10
    assert store.head("a.bin").etag == info.etag
    after = env.proxy.requests[seen:]
    assert [(lane_of(r), r.method, r.status) for r in after] == [
        ("lean", "GET", 206),
        ("botocore", "HEAD", 200),
    ]
    assert env.signed_with(after) == {SECOND[0]}


def test_both_lanes_sign_with_keys_rotated_in_the_config_file(env: KeyEnv) -> None:
    env.put("a.bin", b"a" * 1000)
    remote, _ = resolve(f"test:{env.bucket}", str(env.config))
    store = S3Store(remote, env.bucket)
    info = read_in_both_lanes(env, store)
    env.server.set_keys(FIRST, SECOND)
    env.write_config(SECOND)
    env.server.set_keys(SECOND)  # the first key is revoked
    time.sleep(1.1)  # the file is looked at once a second
    assert_both_lanes_sign_with_the_second_key(env, store, info)


def test_temporary_keys_of_the_default_chain_are_renewed_in_both_lanes(
    env: KeyEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys that expire (STS and the like), found by boto3's default chain: here a profile's
    `credential_process` whose keys expire in 5 minutes, so botocore renews them before each
    request. Both lanes sign with the renewed keys; the lean lane keeps none of its own."""
    env.put("a.bin", b"a" * 1000)
    current = env.tmp_path / "current-keys"
    current.write_text(" ".join(FIRST))
    process = env.tmp_path / "issue-keys.py"
    process.write_text(
        "import datetime, json, sys\n"
        f"key, secret = open({str(current)!r}).read().split()\n"
        "expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)\n"
        "json.dump({'Version': 1, 'AccessKeyId': key, 'SecretAccessKey': secret,"
        " 'Expiration': expires.isoformat()}, sys.stdout)\n"
    )
    aws_config = env.tmp_path / "aws-config"
    aws_config.write_text(f"[profile issued]\ncredential_process = {sys.executable} {process}\n")
    config = make_config(
        env.tmp_path, env.proxy.endpoint, access_key_id="", secret_access_key="", filename="chain"
    )  # no keys: the default chain
    remote, _ = resolve(f"test:{env.bucket}", str(config))
    # The chain is read from the environment when a store first asks for keys; the test's own
    # clients (set_keys) must not see it after.
    with monkeypatch.context() as patched:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            patched.delenv(name, raising=False)
        patched.setenv("AWS_CONFIG_FILE", str(aws_config))
        patched.setenv("AWS_SHARED_CREDENTIALS_FILE", str(env.tmp_path / "none"))
        patched.setenv("AWS_PROFILE", "issued")
        store = S3Store(remote, env.bucket)
        info = read_in_both_lanes(env, store)
    env.server.set_keys(FIRST, SECOND)
    current.write_text(" ".join(SECOND))
    env.server.set_keys(SECOND)  # the first key is revoked
    assert_both_lanes_sign_with_the_second_key(env, store, info)


def test_reads_go_on_while_the_server_and_the_config_file_rotate_keys(env: KeyEnv) -> None:
    files = {f"f{index:03}.json": os.urandom(16 << 10) for index in range(60)}
    for key, data in files.items():
        env.put(key, data)
    names = sorted(files)
    failures: list[str] = []
    done = threading.Event()
    with env.mount("--no-prefetch-small") as mounted:

        def read_while_rotating() -> None:
            for name in names[:40]:
                if done.is_set():
                    return
                try:
                    if (mounted.mountpoint / name).read_bytes() != files[name]:
                        failures.append(f"{name}: wrong bytes")
                except OSError as exc:
                    failures.append(f"{name}: {exc}")
                time.sleep(0.05)

        reader = threading.Thread(target=read_while_rotating)
        reader.start()
        try:
            env.server.set_keys(FIRST, SECOND)  # a rotation: both keys work for a while
            seen = len(env.proxy.requests)
            env.write_config(SECOND)
            wait_for(lambda: SECOND[0] in env.signed_with(data_gets(env, seen)), "the new key")
            env.server.set_keys(SECOND)  # then the old one is revoked
            revoked = len(env.proxy.requests)
        finally:
            reader.join()
        for name in names[40:]:  # read after the rotation, every one through the store
            assert (mounted.mountpoint / name).read_bytes() == files[name]
        assert failures == []
        after = env.proxy.requests[revoked:]
        assert [r for r in after if r.status == 403] == []
        assert env.signed_with(after) == {SECOND[0]}
        assert {lane_of(r) for r in data_gets(env, revoked)} == {"lean"}
        assert mounted.status()["store"]["state"] == "online"


def test_revoked_keys_are_detected_shown_and_healed_by_the_config_file(env: KeyEnv) -> None:
    env.put("cached.txt", b"read before")
    env.put("later.txt", b"read after")
    port = free_port()
    with env.mount("--no-prefetch-small", "--metrics", f"127.0.0.1:{port}") as mounted:
        assert (mounted.mountpoint / "cached.txt").read_bytes() == b"read before"
        assert gauge(port, "modelfs_credentials_refused") == 0
        env.server.set_keys(SECOND)  # revoked; the config file still has the first key
        os.stat(mounted.mountpoint)  # the mount still answers
        with pytest.raises(PermissionError):
            (mounted.mountpoint / "later.txt").read_bytes()
        wait_for(lambda: mounted.status()["store"]["state"] == "credentials refused", "refusal")
        shown = run_cli("status", mounted.mountpoint, check=True).stdout
        assert "store: credentials refused since " in shown
        assert "InvalidAccessKeyId" in shown
        assert gauge(port, "modelfs_credentials_refused") == 1
        assert (mounted.mountpoint / "cached.txt").read_bytes() == b"read before"
        env.write_config(SECOND)
        wait_for(lambda: mounted.status()["store"]["state"] == "online", "the new key to work")
        assert (mounted.mountpoint / "later.txt").read_bytes() == b"read after"
        assert gauge(port, "modelfs_credentials_refused") == 0
    log = (env.tmp_path / "cache" / "modelfs.log").read_text()
    assert log.count("credentials refused: ") == 1
    assert log.count("credentials accepted again") == 1
    assert log.count("new keys from") == 1
    assert "Traceback" not in log
    assert SECOND[1] not in log
    assert FIRST[1] not in log


def test_uploads_refused_with_revoked_keys_go_out_once_the_config_file_has_new_ones(
    env: KeyEnv,
) -> None:
    """A 403 is final for an upload (docs/writeback.md), but not once the keys changed: the
    mount tries it again on its own, with no `sync`."""
    with env.mount("--write-back", "1h", "--flush-interval", "1h") as mounted:
        (mounted.mountpoint / "out.txt").write_text("written before the rotation")
        env.server.set_keys(SECOND)  # revoked before the upload
        synced = run_cli("sync", mounted.mountpoint)
        assert synced.returncode == 1
        assert "out.txt: " in synced.stderr
        wait_for(lambda: mounted.status()["store"]["state"] == "credentials refused", "refusal")
        env.write_config(SECOND)

        def uploaded() -> bool:
            listed = env.server.client().list_objects_v2(Bucket=env.bucket)
            return [o["Key"] for o in listed.get("Contents", [])] == ["out.txt"]

        wait_for(uploaded, "the held upload to go out with the new keys")
        assert mounted.status()["writeback"]["failures"] == []
    body = env.server.client().get_object(Bucket=env.bucket, Key="out.txt")["Body"].read()
    assert body == b"written before the rotation"
    log = (env.tmp_path / "cache" / "modelfs.log").read_text()
    assert log.count("credentials renewed: trying the 1 upload(s)") == 1


def test_run_reports_reads_that_fail_while_the_mount_answers(env: KeyEnv) -> None:
    """`modelfs run`'s watchdog reads through the mount: every GET answering 403 is reported
    (the mount still answers stat, so it is not healed), and so is the way back."""
    env.put("models/config.json", b'{"dim": 64}')
    env.put("models/weights.bin", os.urandom(2 << 20))
    flag = env.tmp_path / "app-may-exit"
    refused = env.proxy.fail_next(403, times=None, match=lambda r: r.range is not None)
    mountpoint = env.tmp_path / "mnt"
    mountpoint.mkdir()
    app = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)"
    command = [
        *MODELFS, "--config", str(env.config), "run",
        "--mount", f"test:{env.bucket}", str(mountpoint),
        "--cache-dir", str(env.tmp_path / "cache"),
        "--watch-interval", "0.2s", "--probe-timeout", "5s",
        "--", sys.executable, "-c", app,
    ]  # fmt: skip
    lines: list[str] = []

    def read_until(text: str, process: subprocess.Popen[str]) -> str:
        assert process.stderr is not None
        while text not in (line := process.stderr.readline()):
            assert line, f"run ended early: {''.join(lines)}"
            lines.append(line)
        return line

    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as run:
        deadline = threading.Timer(WAIT, run.kill)  # a line that never comes fails, never hangs
        deadline.start()
        try:
            failing = read_until("reading through it fails", run)
            assert "config.json: Permission denied" in failing
            env.proxy.remove_fault(refused)
            read_until("reading through the mount works again", run)
            flag.touch()
            rest = run.communicate(timeout=WAIT)[1]
            assert run.returncode == 0, rest
            lines.append(rest)
        finally:
            deadline.cancel()
            flag.touch()
            if run.poll() is None:
                run.kill()
            force_unmount(mountpoint)
    assert not any("Traceback" in line for line in lines)
