"""Drills of a hostile or unusual environment: a control directory another user prepared, a
clock far from the store's, and an HTTPS endpoint whose certificate only a private CA vouches for.

The control directory of a root mount is /run/modelfs, shared by every test run on the machine:
the hostile one is made in a private mount namespace (`unshare`) with its own tmpfs on /run.
Clock skew comes from the fault proxy, which moves the date of every request it forwards
(`FaultProxy.clock_offset`), as a client with a wrong clock would send it; the store answers
RequestTimeTooSkewed. The private CA is `support.tlsfront`'s, known to no trust store.
"""

from __future__ import annotations

import errno
import functools
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import FaultProxy, SeaweedServer, make_config
from support.drills import Drill
from support.lanes import data_gets, lane_of
from support.mounting import MODELFS, Mounted, MountEnv, is_mounted, run_cli
from support.sharedmount import MiB, gets_of, payload
from support.tlsfront import TlsCertificates, TlsFront, make_test_ca

pytestmark = pytest.mark.mount

SLACK = 5.0  # a loaded 2-core machine
# `mount --daemon` starts two Python processes (seconds each on a loaded machine), then probes
# the bucket for at most 3 s and, for a 403, asks a LIST why.
REFUSED_LIMIT = 20.0
OTHER_UID = 65534  # nobody


@pytest.fixture
def env(seaweed: SeaweedServer, proxy: FaultProxy, bucket: str, tmp_path: Path) -> MountEnv:
    return MountEnv.create(seaweed, proxy, bucket, tmp_path, make_config)


HOSTILE_CONTROL_DIRS = {
    "owned by another user": f"mkdir -m 0700 /run/modelfs && chown {OTHER_UID} /run/modelfs",
    "open to everyone": "mkdir -m 0777 /run/modelfs",
    "a symlink to a directory of ours": "mkdir -m 0700 /run/real && ln -s real /run/modelfs",
}


@pytest.mark.drill("hostile control dir", limit=REFUSED_LIMIT)
def test_a_hostile_control_dir(drill: Drill, env: MountEnv) -> None:
    """/run/modelfs was made by someone else (or is a symlink): the mount is refused in one
    line naming the directory, and nothing is mounted (checked inside the namespace)."""
    env.put("model.bin", b"never served")
    env.mountpoint.mkdir()
    command = shlex.join([*MODELFS, *map(str, env.mount().command())])
    check = f"grep -q ' {env.mountpoint} ' /proc/self/mountinfo && echo MOUNTED; exit $rc"
    for plant in HOSTILE_CONTROL_DIRS.values():
        script = f"mount -t tmpfs none /run && {plant} && {{ {command}; rc=$?; {check}; }}"
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
        done = drill.call(
            functools.partial(
                subprocess.run, argv, capture_output=True, text=True, timeout=120, check=False
            )
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("modelfs: error: control directory /run/modelfs is not safe")
        assert "MOUNTED" not in done.stdout
    assert not is_mounted(env.mountpoint)
    drill.finish()


@pytest.mark.drill("clock skew of 20 minutes (proxy moves the date)", limit=REFUSED_LIMIT)
def test_clock_skew(drill: Drill, env: MountEnv) -> None:
    """Skewed at mount time: refused in one line that says "clock skew". Skewed while mounted:
    a cold read fails (EACCES, as for access denied) within the limit, counted as
    RequestTimeTooSkewed; once the clock
    is right again the same mount reads exactly."""
    warm, cold = payload("skew/warm", 2 * MiB), payload("skew/cold", 2 * MiB)
    env.put("warm.bin", warm)
    env.put("cold.bin", cold)
    env.proxy.clock_offset = 20 * 60.0
    env.mountpoint.mkdir()
    refused = drill.call(lambda: run_cli(*env.mount().command()))
    assert refused.returncode == 1, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "clock skew" in refused.stderr
    env.proxy.clock_offset = 0.0
    with env.mount("--store-timeout", "1s") as mounted:
        assert drill.read_whole(env.mountpoint / "warm.bin", warm) is None
        env.proxy.clock_offset = 20 * 60.0
        failed = drill.read_whole(env.mountpoint / "cold.bin", cold)
        assert failed is not None
        assert failed.errno == errno.EACCES
        assert mounted.status()["fetcher"]["errors"].get("RequestTimeTooSkewed", 0) > 0
        env.proxy.clock_offset = 0.0
        assert drill.read_whole(env.mountpoint / "cold.bin", cold) is None
    drill.finish()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TlsCertificates:
    return make_test_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def front(proxy: FaultProxy, test_ca: TlsCertificates) -> Iterator[TlsFront]:
    with TlsFront(proxy.endpoint, test_ca) as running:
        yield running


@pytest.mark.drill("TLS endpoint with a private CA", limit=REFUSED_LIMIT)
def test_a_tls_endpoint_with_a_private_ca(
    drill: Drill, env: MountEnv, front: TlsFront, test_ca: TlsCertificates, tmp_path: Path
) -> None:
    """Without the CA the mount is refused in one line; with the remote's ca_bundle both
    lanes get through, data GETs take the lean lane over TLS, and a reset mid-body is resumed
    there: the bytes are exact and no handshake failed."""
    data = payload("tls/model", 4 * MiB)
    env.put("model.bin", data)
    for name in ("untrusted", "trusted", "mnt"):
        (tmp_path / name).mkdir()
    untrusted = make_config(tmp_path / "untrusted", front.endpoint)
    spec = f"test:{env.bucket}"
    refused = drill.call(
        lambda: run_cli(*Mounted(untrusted, spec, env.mountpoint, env.cache_dir).command())
    )
    assert refused.returncode == 1, refused.stderr
    assert "certificate verify failed" in refused.stderr
    failures_before = len(front.handshake_failures)
    trusted = make_config(
        tmp_path / "trusted", front.endpoint, extra=f"ca_bundle = {test_ca.ca_file}"
    )
    env.proxy.reset_next(after_bytes=300_000, match=gets_of("model.bin"))
    with Mounted(trusted, spec, env.mountpoint, env.cache_dir):
        assert drill.read_whole(env.mountpoint / "model.bin", data) is None
    gets = data_gets(env.proxy, "model.bin")
    assert {lane_of(r) for r in gets} == {"lean"}
    assert gets[0].fault == "reset"
    assert len(front.handshake_failures) == failures_before
    drill.finish()
