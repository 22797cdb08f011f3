"""`modelfs presign` and `modelfs serve`: signed links, and stable links that never expire.

Everything runs as the CLI against a real SeaweedFS, whose remote ("a") is reached through a
`FaultProxy`: the proxy sees every request that reaches the store, so "nothing reached the
store" is a count of zero, and signed links point at it (so their GETs are seen too).
"""

from __future__ import annotations

import calendar
import errno
import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import SECRET_KEY, FaultProxy, SeaweedServer, make_config
from support.linkserver import TOKEN, Bucket, LinkServer, MiB, follow, free_port, status_of
from support.mounting import MODELFS
from support.pullrecords import recorded_blocks


@pytest.fixture
def store(seaweed: SeaweedServer, bucket: str, tmp_path: Path) -> Iterator[Bucket]:
    with FaultProxy(seaweed.endpoint) as proxy:
        config = make_config(tmp_path, proxy.endpoint, name="a")
        found = Bucket(seaweed, bucket, proxy, config, tmp_path)
        found.put("v23/model.pt", os.urandom(3 * MiB + 7))
        found.put("v23/cfg/config.yaml", b"model: v23\n")
        found.put("private/secret.key", b"not for you")
        yield found


@pytest.fixture
def served(store: Bucket) -> Iterator[LinkServer]:
    (store.tmp / "tokens").write_text(f"{TOKEN} alice\n# a comment\n")
    (store.tmp / "tokens").chmod(0o600)
    server = LinkServer(store, "--prefix", "v23", "--tokens", str(store.tmp / "tokens"))
    yield server
    if server.process.poll() is None:
        server.stop()


# -- presign ----------------------------------------------------------------------------------


def test_a_5s_link_fails_once_expired_and_the_stable_link_still_works(store: Bucket) -> None:
    signed = store.cli("presign", f"a:{store.name}/v23/model.pt", "--expires", "5s")
    assert signed.returncode == 0, signed.stderr
    url = signed.stdout.strip()
    assert "X-Amz-Expires=5" in url
    stamp = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Date"][0]
    expires_at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) + 5
    assert SECRET_KEY not in signed.stdout + signed.stderr
    assert follow(url, token=None) == store.files["v23/model.pt"]
    server = LinkServer(store, "--prefix", "v23", "--link-ttl", "2s")
    try:
        stable = f"{server.url}/v23/model.pt"
        assert follow(stable, token=None) == store.files["v23/model.pt"]
        time.sleep(max(0.0, expires_at + 1.2 - time.time()))
        assert status_of(url) == 403  # SeaweedFS refuses the expired signature
        assert follow(stable, token=None) == store.files["v23/model.pt"]  # signed anew
    finally:
        server.stop()


def test_presign_refuses_more_than_7_days_in_one_line(store: Bucket) -> None:
    refused = store.cli("presign", f"a:{store.name}/v23/model.pt", "--expires", "8d")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "7 days" in refused.stderr
    missing = store.cli("presign", f"a:{store.name}/v23/nothing.pt")
    assert missing.returncode != 0
    assert missing.stderr.count("\n") == 1


def test_presign_manifest_is_pulled_by_a_teammate_without_keys(store: Bucket) -> None:
    manifest = store.tmp / "v23.json"
    done = store.cli("presign", f"a:{store.name}/v23", "--expires", "7d", "--manifest", manifest)
    assert done.returncode == 0, done.stderr
    assert SECRET_KEY not in done.stdout + done.stderr + manifest.read_text()
    written = json.loads(manifest.read_text())
    files = {entry["path"]: entry for entry in written["files"]}
    assert set(files) == {"model.pt", "cfg/config.yaml"}
    assert all(entry["urls"][0].startswith(store.proxy.endpoint) for entry in files.values())
    assert all(
        entry["expires"].endswith("Z") and len(entry["sha256"]) == 64 for entry in files.values()
    )
    dest = store.tmp / "teammate"
    # no --config: the teammate has no keys and no remote, only the manifest
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(store.tmp)
    pulled = subprocess.run(
        [*MODELFS, "pull", str(manifest), str(dest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert pulled.returncode == 0, pulled.stderr
    for key in ("v23/model.pt", "v23/cfg/config.yaml"):
        assert (dest / key.removeprefix("v23/")).read_bytes() == store.files[key]


# -- the service ------------------------------------------------------------------------------


def test_tokens_missing_wrong_or_revoked_get_401_403_and_no_link(
    store: Bucket, served: LinkServer
) -> None:
    status, headers, _ = served.request("GET", "/v23/model.pt")
    assert status == 401
    assert "Location" not in headers
    assert headers.get("www-authenticate") == "Bearer"
    status, headers, _ = served.request("GET", "/v23/model.pt", token="tok-guess")
    assert status == 403
    assert "location" not in {k.lower() for k in headers}
    status, headers, _ = served.request("GET", "/v23/model.pt", token=TOKEN)
    assert status == 302
    assert "X-Amz-Signature" in headers["location"]
    served.tokens.write_text("tok-bob\n")  # alice revoked, without a restart
    deadline = time.monotonic() + 5
    while served.request("GET", "/v23/model.pt", token=TOKEN)[0] != 403:
        assert time.monotonic() < deadline, "the revoked token still works"
        time.sleep(0.2)
    assert served.request("GET", "/v23/model.pt", token="tok-bob")[0] == 302
    assert served.request("GET", "/healthz")[0] == 200  # probes need no token


@pytest.mark.parametrize(
    "path",
    [
        "/v23/../private/secret.key",
        "/v23/%2e%2e/private/secret.key",
        "/v23/%2E%2E/private/secret.key",
        "/v23/./model.pt",
        "/v23//model.pt",
        "/v23/model.pt%00.txt",
        "/private/secret.key",
        "/v23",
        "/v230/model.pt",
    ],
)
def test_escapes_and_keys_outside_the_prefixes_are_404_without_a_store_request(
    store: Bucket, served: LinkServer, path: str
) -> None:
    store.proxy.clear_requests()
    status, headers, _ = served.request("GET", path, token=TOKEN)
    assert status == 404
    assert "location" not in {k.lower() for k in headers}
    assert store.proxy.requests == []


def test_the_service_signs_get_and_head_only(served: LinkServer) -> None:
    for method in ("PUT", "DELETE", "POST"):
        assert served.request(method, "/v23/model.pt", token=TOKEN)[0] == 405


def test_curl_follows_range_and_head_through_the_redirect(
    store: Bucket, served: LinkServer
) -> None:
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    ranged = subprocess.run(
        ["curl", "-sfL", *auth, "-r", "0-99", f"{served.url}/v23/model.pt"],
        capture_output=True,
        check=True,
    )
    assert ranged.stdout == store.files["v23/model.pt"][:100]
    head = subprocess.run(
        ["curl", "-sfIL", *auth, f"{served.url}/v23/model.pt"],
        capture_output=True,
        text=True,
        check=True,
    )
    answers = [line for line in head.stdout.splitlines() if line.startswith("HTTP/")]
    assert [answer.split()[1] for answer in answers] == ["302", "200"]
    assert f"Content-Length: {3 * MiB + 7}".lower() in head.stdout.lower()


def test_the_access_log_holds_no_signature_token_or_key(store: Bucket, served: LinkServer) -> None:
    served.request("GET", "/v23/model.pt", token=TOKEN)
    served.request("GET", "/v23/model.pt?X-Amz-Signature=abc123", token=TOKEN)
    served.request("HEAD", "/v23/cfg/config.yaml", token="tok-wrong-guess")
    served.request("GET", "/v23/manifest.json", token=TOKEN)  # no manifest: 404, logged too
    served.stop()
    log = served.access_log.read_text()
    assert log.count("\n") >= 4
    assert "/v23/model.pt 302" in log
    for secret in (TOKEN, "tok-wrong-guess", "X-Amz-Signature", "abc123", "Credential", SECRET_KEY):
        assert secret not in log
    assert served.access_log.stat().st_mode & 0o777 == 0o600


def test_listening_beyond_loopback_without_tokens_needs_public(store: Bucket) -> None:
    refused = store.cli("serve", f"a:{store.name}", "--listen", f"0.0.0.0:{free_port()}")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "--public" in refused.stderr


def test_the_manifest_from_the_service_points_back_at_it(store: Bucket, served: LinkServer) -> None:
    created = store.cli("manifest", "create", f"a:{store.name}/v23", "--upload")
    assert created.returncode == 0, created.stderr
    status, _, body = served.request("GET", "/v23/manifest.json", token=TOKEN)
    assert status == 200
    manifest = json.loads(body)
    assert manifest["sources"] == [{"url": f"{served.url}/v23/", "priority": 1}]
    assert {entry["path"] for entry in manifest["files"]} == {"model.pt", "cfg/config.yaml"}
    assert all("urls" not in entry for entry in manifest["files"])


# -- pulls through links ----------------------------------------------------------------------


def test_a_pull_through_the_service_resumes_after_every_earlier_link_expired(
    store: Bucket,
) -> None:
    big = os.urandom(32 * MiB)
    store.put("v23/big.bin", big)
    assert store.cli("manifest", "create", f"a:{store.name}/v23", "--upload").returncode == 0
    (store.tmp / "tokens").write_text(f"{TOKEN}\n")
    (store.tmp / "tokens").chmod(0o600)
    server = LinkServer(
        store, "--prefix", "v23", "--tokens", str(store.tmp / "tokens"), "--link-ttl", "2s"
    )
    token_file = store.tmp / "my-token"
    token_file.write_text(TOKEN + "\n")
    dest = store.tmp / "dest"
    command = [*MODELFS, "pull", f"{server.url}/v23/manifest.json", str(dest)]
    command += ["--token-file", str(token_file), "--transfers", "2", "--part-size", "1M"]
    try:
        store.proxy.delay_next(0.1, times=None)  # slow enough to kill half way
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(recorded_blocks(dest)) < 8:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert 8 <= len(recorded_blocks(dest)) < 32
        store.proxy.clear_faults()
        time.sleep(3)  # every link the first pull was given has expired
        store.proxy.clear_requests()
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
    finally:
        server.stop()
    assert (dest / "big.bin").read_bytes() == big
    for key in ("v23/model.pt", "v23/cfg/config.yaml"):
        assert (dest / key.removeprefix("v23/")).read_bytes() == store.files[key]
    assert [r for r in store.proxy.requests if r.status == 403] == []
    assert TOKEN not in json.dumps([r.headers for r in store.proxy.requests])  # never to S3


def test_expired_links_of_a_manifest_url_are_renewed_by_fetching_it_again(
    store: Bucket,
) -> None:
    from support.statichttp import StaticHttp

    big = os.urandom(24 * MiB)
    store.put("v23/big.bin", big)
    site = store.tmp / "site"
    site.mkdir()
    spec = f"a:{store.name}/v23"
    week = store.tmp / "week.json"  # what the nightly job will write while the pull runs
    assert store.cli("presign", spec, "--expires", "7d", "--manifest", week).returncode == 0
    short = store.cli("presign", spec, "--expires", "3s", "--manifest", site / "m.json")
    assert short.returncode == 0
    dest = store.tmp / "dest"
    with StaticHttp(site) as static:
        store.proxy.clear_requests()
        store.proxy.delay_next(0.5, times=None)  # 24 GETs, 2 at a time: over 3 s
        pull = subprocess.Popen(
            [
                *MODELFS,
                "pull",
                f"{static.url}/m.json",
                str(dest),
                "--transfers",
                "2",
                "--part-size",
                "1M",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:  # the nightly job runs once the pull's first GET is in (answered 0.5 s later)
            deadline = time.monotonic() + 60
            while not store.proxy.requests:
                assert time.monotonic() < deadline
                assert pull.poll() is None
                time.sleep(0.01)
            os.replace(week, site / "m.json")
            _, stderr = pull.communicate(timeout=120)
        finally:
            if pull.poll() is None:
                pull.kill()
            pull.communicate()
        assert pull.returncode == 0, stderr
        assert static.paths.count("/m.json") >= 2
    assert (dest / "big.bin").read_bytes() == big
    assert any(r.status == 403 for r in store.proxy.requests)


def test_2000_stable_links_from_16_clients(served: LinkServer) -> None:
    from support.linkload import cpu_seconds, hammer

    before = cpu_seconds(served.process.pid)
    result = hammer(served.port, "/v23/model.pt", TOKEN, requests=2000, clients=16)
    cpu = (cpu_seconds(served.process.pid) - before) / result.count * 1000
    print(f"\nlink service: {result.describe()}, {cpu:.2f} ms of its CPU per request")
    assert result.errors == []
    assert result.count == 2000


# -- a mount of a manifest URL ----------------------------------------------------------------


@pytest.mark.mount
def test_a_mount_of_the_services_manifest_lists_reads_exactly_and_is_read_only(
    store: Bucket, served: LinkServer
) -> None:
    from support.mounting import Mounted

    assert store.cli("manifest", "create", f"a:{store.name}/v23", "--upload").returncode == 0
    token_file = store.tmp / "my-token"
    token_file.write_text(TOKEN + "\n")
    mountpoint = store.tmp / "mnt"
    url = f"{served.url}/v23/manifest.json"
    with Mounted(
        store.config, url, mountpoint, store.tmp / "cache", "--token-file", str(token_file)
    ) as mounted:
        assert sorted(os.listdir(mountpoint)) == ["cfg", "model.pt"]
        assert os.listdir(mountpoint / "cfg") == ["config.yaml"]
        assert (mountpoint / "model.pt").stat().st_size == len(store.files["v23/model.pt"])
        with (mountpoint / "model.pt").open("rb") as file:
            file.seek(1_000_000)
            assert file.read(5000) == store.files["v23/model.pt"][1_000_000:1_005_000]
        assert (mountpoint / "model.pt").read_bytes() == store.files["v23/model.pt"]
        assert (mountpoint / "cfg/config.yaml").read_bytes() == b"model: v23\n"
        for attempt in (
            lambda: (mountpoint / "new.txt").write_bytes(b"x"),
            lambda: (mountpoint / "model.pt").unlink(),
            lambda: (mountpoint / "cfg").rename(mountpoint / "cfg2"),
        ):
            with pytest.raises(OSError, match="Read-only file system") as refused:
                attempt()
            assert refused.value.errno == errno.EROFS
        status = mounted.status()
        assert status["source"] == url
        assert status["fs"]["verified"] >= 1
    log = served.access_log.read_text()
    assert "/v23/model.pt 302" in log


@pytest.mark.mount
def test_a_mount_of_a_manifest_url_with_a_wrong_token_is_one_line(
    store: Bucket, served: LinkServer
) -> None:
    token_file = store.tmp / "bad-token"
    token_file.write_text("tok-not-this-one\n")
    mountpoint = store.tmp / "mnt"
    mountpoint.mkdir()
    refused = store.cli(
        "mount", "--token-file", token_file, f"{served.url}/v23/manifest.json", mountpoint
    )
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1
    assert "403" in refused.stderr
    assert "tok-not-this-one" not in refused.stderr
