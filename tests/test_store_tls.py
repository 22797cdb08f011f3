"""S3Store over HTTPS with a private CA: both lanes, end to end, on a real SeaweedFS.

    S3Store --HTTPS--> TlsFront (test CA) --> FaultProxy (records lanes) --> SeaweedFS

The CA is generated per run and known to no trust store, so a lane gets through only if the
store handed it the bundle (`ca_bundle=` or AWS_CA_BUNDLE). The FaultProxy behind the TLS
front tells the lanes apart by user agent (`support.lanes`); the front counts handshakes and
why the failed ones failed. Before the bundle reached the lean lane, its handshakes failed
("unknown ca") and every GET and LIST went to botocore after a wasted handshake;
`test_a_lean_lane_that_does_not_trust_the_server_falls_back_to_botocore` keeps that fallback
working.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from botocore.httpsession import get_cert_path

from modelfs.errors import ConfigError, StoreUnavailable
from modelfs.store.s3 import S3Store
from modelfs.store.s3client import S3Session
from support import FaultProxy, method_is, remote_config
from support.lanes import data_gets, lane_of, list_requests
from support.mounting import Mounted, run_cli
from support.tlsfront import TlsCertificates, TlsFront, make_test_ca

MIB = 1 << 20
PROBE = ".modelfs-warm-up-probe"


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificates:
    return make_test_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def front(proxy: FaultProxy, test_ca: TlsCertificates) -> Iterator[TlsFront]:
    with TlsFront(proxy.endpoint, test_ca) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_bundle_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def test_https_reads_and_lists_take_the_lean_lane_with_a_private_ca(
    front: TlsFront, proxy: FaultProxy, bucket: str, test_ca: TlsCertificates
) -> None:
    store = S3Store(remote_config(front.endpoint), bucket, ca_bundle=str(test_ca.ca_file))
    data = os.urandom(3 * MIB)
    info = store.put_bytes("dir/a b+c~.bin", data)
    store.put_bytes("dir/small.txt", b"small")
    proxy.clear_requests()
    assert store.get_range(info.id, 0, MIB) == data[:MIB]  # botocore: teaches the URL
    assert store.get_range(info.id, MIB, 3 * MIB) == data[MIB:]
    assert b"".join(store.iter_range(info.id, 5, 2 * MIB + 7, MIB)) == data[5 : 2 * MIB + 7]
    for _ in range(3):
        listed = store.list_page("dir/").objects
        assert [(item.key, item.size) for item in listed] == [
            ("dir/a b+c~.bin", 3 * MIB),
            ("dir/small.txt", 5),
        ]
    gets = data_gets(proxy, "dir/a%20b%2Bc~.bin")
    assert [(lane_of(r), r.status) for r in gets] == [
        ("botocore", 206),
        ("lean", 206),
        ("lean", 206),
    ]
    assert [lane_of(r) for r in list_requests(proxy)] == ["botocore", "lean", "lean"]
    assert front.handshake_failures == []


def test_aws_ca_bundle_reaches_both_lanes_and_the_lane_keeps_its_tls_connection(
    front: TlsFront,
    proxy: FaultProxy,
    bucket: str,
    test_ca: TlsCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(test_ca.ca_file))
    store = S3Store(remote_config(front.endpoint), bucket)
    info = store.put_bytes("m.bin", b"weights")
    store.warm_up(PROBE)  # botocore's probe teaches the URL, the lane's opens its connection
    probes = [(lane_of(r), r.status) for r in data_gets(proxy, PROBE)]
    assert probes == [("botocore", 404), ("lean", 404)]
    handshakes = front.handshakes
    for _ in range(5):
        assert store.get_range(info.id, 0, 7) == b"weights"
    assert [lane_of(r) for r in data_gets(proxy, "m.bin")] == ["lean"] * 5
    assert front.handshakes == handshakes  # one pooled TLS connection served them all
    assert front.handshake_failures == []


def test_the_lean_lane_resumes_after_a_reset_mid_body_over_https(
    front: TlsFront, proxy: FaultProxy, bucket: str, test_ca: TlsCertificates
) -> None:
    store = S3Store(remote_config(front.endpoint), bucket, ca_bundle=str(test_ca.ca_file))
    data = os.urandom(MIB)
    info = store.put_bytes("m.bin", data)
    store.get_range(info.id, 0, 10)  # learn the URL
    proxy.clear_requests()
    proxy.reset_next(after_bytes=200_000, match=method_is("GET"))
    assert b"".join(store.iter_range(info.id, 0, MIB, 64 * 1024)) == data
    gets = data_gets(proxy, "m.bin")
    assert [lane_of(r) for r in gets] == ["lean", "lean"]
    assert gets[1].range not in (None, "bytes=0-1048575")  # resumed where the reset cut it


def test_without_the_ca_https_is_refused_with_a_one_line_error(
    front: TlsFront, proxy: FaultProxy, bucket: str
) -> None:
    store = S3Store(remote_config(front.endpoint), bucket, max_attempts=1)
    with pytest.raises(StoreUnavailable, match="certificate verify failed") as caught:
        store.head("m.bin")
    assert f"connection to S3 endpoint {front.endpoint} failed" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert proxy.requests == []  # nothing got past the TLS front
    assert front.handshakes == 0


def test_a_lean_lane_that_does_not_trust_the_server_falls_back_to_botocore(
    front: TlsFront,
    proxy: FaultProxy,
    bucket: str,
    test_ca: TlsCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What happened before the lane got the bundle: botocore's default CAs for the lane."""
    botocores_own = S3Session(remote_config(front.endpoint), None).lean_ca_bundle
    monkeypatch.setattr(S3Session, "lean_ca_bundle", botocores_own)
    store = S3Store(remote_config(front.endpoint), bucket, ca_bundle=str(test_ca.ca_file))
    data = os.urandom(MIB)
    info = store.put_bytes("m.bin", data)
    for _ in range(3):
        assert store.get_range(info.id, 0, MIB) == data
    assert [lane_of(r) for r in data_gets(proxy, "m.bin")] == ["botocore"] * 3
    failures = front.handshake_failures
    assert len(failures) == 2  # the lane tried each GET after the first, and gave it back
    assert all("unknown ca" in failure for failure in failures)


@pytest.mark.parametrize(
    ("argument", "remote", "environment", "expected"),
    [
        (None, None, {}, None),
        ("explicit.pem", "remote.pem", {"AWS_CA_BUNDLE": "/aws.pem"}, "explicit.pem"),
        (None, "remote.pem", {"AWS_CA_BUNDLE": "/aws.pem"}, "remote.pem"),
        (None, None, {"AWS_CA_BUNDLE": "/aws.pem", "REQUESTS_CA_BUNDLE": "/req.pem"}, "/aws.pem"),
        (None, None, {"REQUESTS_CA_BUNDLE": "/req.pem"}, "/req.pem"),
    ],
)
def test_the_ca_bundle_is_resolved_as_botocore_resolves_verify(
    argument: str | None,
    remote: str | None,
    environment: dict[str, str],
    expected: str | None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in ("explicit.pem", "remote.pem"):
        (tmp_path / name).write_text("a PEM file")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = replace(remote_config("https://127.0.0.1:1"), ca_bundle=_in(tmp_path, remote) or "")
    session = S3Session(config, _in(tmp_path, argument))
    assert session.ca_bundle == _in(tmp_path, expected)
    botocores_own = str(get_cert_path(True))
    assert session.lean_ca_bundle == (_in(tmp_path, expected) or botocores_own)


def _in(directory: Path, name: str | None) -> str | None:
    return name if name is None or name.startswith("/") else str(directory / name)


def test_a_remotes_ca_bundle_reaches_both_lanes(
    front: TlsFront, proxy: FaultProxy, bucket: str, test_ca: TlsCertificates
) -> None:
    """`ca_bundle = FILE` in the remote's section: no argument, no environment needed."""
    config = replace(remote_config(front.endpoint), ca_bundle=str(test_ca.ca_file))
    store = S3Store(config, bucket)
    info = store.put_bytes("m.bin", b"weights")
    for _ in range(3):
        assert store.get_range(info.id, 0, 7) == b"weights"
    assert [lane_of(r) for r in data_gets(proxy, "m.bin")] == ["botocore", "lean", "lean"]
    assert front.handshake_failures == []


def test_a_ca_bundle_that_does_not_exist_is_a_config_error(tmp_path: Path) -> None:
    config = replace(remote_config("https://127.0.0.1:1"), ca_bundle=str(tmp_path / "no.pem"))
    with pytest.raises(ConfigError, match=f"ca_bundle {tmp_path / 'no.pem'} does not exist"):
        S3Store(config, "bucket")


@pytest.mark.mount
def test_mount_and_pull_trust_the_ca_bundle_of_the_config(
    front: TlsFront,
    bucket: str,
    test_ca: TlsCertificates,
    tmp_path: Path,
    make_config: Callable[..., Path],
) -> None:
    """The CLI end to end: the remote's section names the CA, and both commands get through."""
    S3Store(remote_config(front.endpoint), bucket, ca_bundle=str(test_ca.ca_file)).put_bytes(
        "models/config.json", b"{}"
    )
    config = make_config(tmp_path, front.endpoint, extra=f"ca_bundle = {test_ca.ca_file}")
    with Mounted(config, f"test:{bucket}", tmp_path / "mnt", tmp_path / "cache"):
        assert (tmp_path / "mnt" / "models" / "config.json").read_bytes() == b"{}"
    done = run_cli("--config", config, "pull", f"test:{bucket}/models", tmp_path / "pulled")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pulled" / "config.json").read_bytes() == b"{}"
    assert front.handshake_failures == []
    without = make_config(tmp_path, front.endpoint, filename="without.conf")
    refused = run_cli("--config", without, "pull", f"test:{bucket}/models", tmp_path / "no")
    assert refused.returncode == 1
    assert "certificate verify failed" in refused.stderr
