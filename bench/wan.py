"""The WAN profile: an S3 server in a network namespace of our own, behind a shaped link.

    root namespace (mounters, boto3)             namespace mfsbench<PID>
    ┌───────────────────────────┐   veth pair   ┌─────────────────────────────────────┐
    │ mfb<PID>c  10.213.N.1/30  │◄─────────────►│ mfb<PID>s  10.213.N.2/30            │
    └───────────────────────────┘               │   weed mini      :8333 (direct)     │
                                                │   [wanproxy.py   :8334 (shaped)]    │
                                                └─────────────────────────────────────┘

The /30 exists only on this veth pair and the namespace has no other route, so nothing but
the two ends can be reached. Data is uploaded over the unshaped direct port first, then the
link is shaped, by one of two emulators:

* `tc` (what the issue asks for): `netem delay 40ms` on the client-side veth's egress (the whole
  RTT on one side, because netem and fq cannot both be the root qdisc of the server side) and
  `fq maxrate 80mbit` (10 MB/s per flow) on the server-side egress. Mounters use :8333.
* `proxy` (fallback when the kernel lacks sch_netem or sch_fq, as this machine's does):
  wanproxy.py in the namespace, 20 ms each way + 10 MB/s per connection for responses.
  Mounters use :8334. See wanproxy.py for what it does and does not model.

Everything (processes in the namespace, the veth, the namespace) is removed by the cleanup
stack; leftovers of an earlier benchmark run that died by SIGKILL are removed at start.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import netns
from baselines import S3Target
from netns import ns_exec
from seaweed_support import find_weed, seaweed
from sysutil import (
    Cleanup,
    die_with_parent,
    log,
    run,
    safe_rmtree,
    stop_popen,
    wait_until,
)

_NS_PREFIX = "mfsbench"
_VETH_PREFIX = "mfb"
_SUBNET_SECOND_OCTET = 213  # 10.213.N.0/30: arbitrary private range, checked unused at start
# Ports inside the namespace: it is empty, so the SeaweedFS defaults cannot clash.
_S3_PORT = 8333  # seaweed.DEFAULT_PORTS.s3
_PROXY_PORT = 8334
_READY_TIMEOUT_S = 60.0
_NETEM_LIMIT_PACKETS = 100_000  # default 1,000 would drop at 40 ms x multi-Gbit/s of ACKs+data


@dataclass(frozen=True, slots=True)
class WanProfile:
    rtt_ms: float = 40.0
    per_connection_bytes_per_s: float = 10e6  # "10 MB/s" per connection, as in the issue

    def describe(self) -> str:
        return (
            f"{self.rtt_ms:.0f} ms RTT, "
            f"{self.per_connection_bytes_per_s / 1e6:.0f} MB/s per connection"
        )


class WanLink:
    def __init__(
        self,
        cleanup: Cleanup,
        workdir: Path,
        profile: WanProfile,
        emulator: str,
        access_key: str,
        secret_key: str,
    ) -> None:
        pid = os.getpid()
        self.namespace = f"{_NS_PREFIX}{pid}"
        self._client_veth = f"{_VETH_PREFIX}{pid}c"
        self._server_veth = f"{_VETH_PREFIX}{pid}s"
        self._cleanup = cleanup
        self._workdir = workdir
        self.profile = profile
        self._emulator = emulator
        self._keys = (access_key, secret_key)
        self._client_ip = self._server_ip = ""
        self.method = ""

    # -- link ----------------------------------------------------------------------------------

    def up(self) -> None:
        netns.remove_stale(_NS_PREFIX, veth_of=_VETH_PREFIX + "{pid}c")
        third = netns.free_subnet(_SUBNET_SECOND_OCTET)
        self._client_ip = f"10.{_SUBNET_SECOND_OCTET}.{third}.1"
        self._server_ip = f"10.{_SUBNET_SECOND_OCTET}.{third}.2"
        self._cleanup.push(f"delete namespace {self.namespace}", self._delete_namespace)
        steps = [
            ["ip", "netns", "add", self.namespace],
            [
                "ip",
                "link",
                "add",
                self._client_veth,
                "type",
                "veth",
                "peer",
                "name",
                self._server_veth,
            ],
            ["ip", "link", "set", self._server_veth, "netns", self.namespace],
            ["ip", "addr", "add", f"{self._client_ip}/30", "dev", self._client_veth],
            ["ip", "link", "set", self._client_veth, "up"],
            ns_exec(
                self.namespace,
                "ip",
                "addr",
                "add",
                f"{self._server_ip}/30",
                "dev",
                self._server_veth,
            ),
            ns_exec(self.namespace, "ip", "link", "set", self._server_veth, "up"),
            ns_exec(self.namespace, "ip", "link", "set", "lo", "up"),
        ]
        for step in steps:
            run(step)
        log(f"namespace {self.namespace}: {self._client_ip} <-> {self._server_ip}")

    def _delete_namespace(self) -> None:
        netns.kill_all(self.namespace, grace=0.0)  # only ours: nothing else runs there
        run(["ip", "link", "del", self._client_veth], check=False)
        run(["ip", "netns", "del", self.namespace], check=False)

    # -- server ------------------------------------------------------------------------------

    def start_server(self) -> S3Target:
        """SeaweedFS in the namespace; returns the direct (unshaped) endpoint for uploads."""
        data = self._workdir / "wan-weed"
        data.mkdir(parents=True, exist_ok=True)
        self._cleanup.push(f"remove {data}", lambda: safe_rmtree(data))  # after weed stops
        identities = data / "identities.json"
        access, secret = self._keys
        identities.write_text(json.dumps(seaweed().identities((access, secret))))
        ports = seaweed().DEFAULT_PORTS
        cmd = ns_exec(
            self.namespace,
            *seaweed().mini_command(find_weed(), data, self._server_ip, ports, identities),
        )
        self._spawn("weed mini (namespace)", cmd, data / "weed.log")
        target = S3Target(f"http://{self._server_ip}:{_S3_PORT}", "", access, secret)
        if not wait_until(target.answers, _READY_TIMEOUT_S, interval=0.2):
            raise RuntimeError(f"SeaweedFS in {self.namespace} not ready: see {data}/weed.log")
        return target

    def _spawn(self, what: str, cmd: list[str], log_path: Path) -> None:
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self._cleanup.push(f"stop {what}", lambda: stop_popen(process))

    # -- shaping -----------------------------------------------------------------------------

    def shape(self) -> str:
        """Shape the link; returns the endpoint the mounters must use."""
        if self._emulator in ("auto", "tc") and self._shape_with_tc():
            self.method = (
                f"tc: netem delay {self.profile.rtt_ms:.0f}ms on the client-side "
                f"veth, fq maxrate {self._maxrate_bits()}bit on the server side"
            )
            return f"http://{self._server_ip}:{_S3_PORT}"
        if self._emulator == "tc":
            raise RuntimeError("--wan-emulator tc: this kernel lacks sch_netem or sch_fq")
        self._start_proxy()
        self.method = (
            f"userspace proxy (kernel lacks sch_netem/sch_fq): "
            f"{self.profile.rtt_ms / 2:.0f} ms each way, "
            f"{self.profile.per_connection_bytes_per_s / 1e6:.0f} MB/s per connection"
        )
        return f"http://{self._server_ip}:{_PROXY_PORT}"

    def _maxrate_bits(self) -> int:
        return int(self.profile.per_connection_bytes_per_s * 8)

    def _shape_with_tc(self) -> bool:
        netem = run(
            [
                "tc",
                "qdisc",
                "add",
                "dev",
                self._client_veth,
                "root",
                "netem",
                "delay",
                f"{self.profile.rtt_ms}ms",
                "limit",
                str(_NETEM_LIMIT_PACKETS),
            ],
            check=False,
        )
        if netem.returncode != 0:
            log(f"tc netem unavailable ({netem.stderr.strip()})")
            return False
        fq = run(
            ns_exec(
                self.namespace,
                "tc",
                "qdisc",
                "add",
                "dev",
                self._server_veth,
                "root",
                "fq",
                "maxrate",
                f"{self._maxrate_bits()}bit",
            ),
            check=False,
        )
        if fq.returncode != 0:
            log(f"tc fq unavailable ({fq.stderr.strip()})")
            run(["tc", "qdisc", "del", "dev", self._client_veth, "root"], check=False)
            return False
        return True

    def _start_proxy(self) -> None:
        script = Path(__file__).with_name("wanproxy.py")
        cmd = ns_exec(
            self.namespace,
            sys.executable,
            str(script),
            "--listen",
            f"{self._server_ip}:{_PROXY_PORT}",
            "--target",
            f"{self._server_ip}:{_S3_PORT}",
            "--delay-ms",
            str(self.profile.rtt_ms / 2),
            "--rate",
            str(self.profile.per_connection_bytes_per_s),
        )
        self._spawn("WAN proxy", cmd, self._workdir / "wanproxy.log")
        if not wait_until(lambda: _accepts(self._server_ip, _PROXY_PORT), 30, interval=0.1):
            raise RuntimeError("WAN proxy did not start: see wanproxy.log")


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
