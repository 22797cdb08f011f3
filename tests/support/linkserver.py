"""A `modelfs serve` under test: the bucket it serves (`Bucket`, reached through a
`FaultProxy`), the service as a subprocess (`LinkServer`), and small HTTP helpers. Used by
the link service tests (tests/test_linkservice.py, tests/test_serve_section.py)."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from support import FaultProxy, SeaweedServer
from support.mounting import MODELFS, run_cli

MiB = 1 << 20
TOKEN = "tok-" + "7" * 40


@dataclass
class Bucket:
    seaweed: SeaweedServer
    name: str
    proxy: FaultProxy
    config: Path
    tmp: Path
    files: dict[str, bytes] = field(default_factory=dict)

    def put(self, key: str, data: bytes) -> None:
        self.seaweed.client().put_object(Bucket=self.name, Key=key, Body=data)
        self.files[key] = data

    def cli(self, *args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run_cli("--config", self.config, *args, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LinkServer:
    """`modelfs serve` in a subprocess, stopped (SIGTERM) at the end."""

    def __init__(self, store: Bucket, *options: str, port: int | None = None) -> None:
        """`serve a:BUCKET --listen (a free port) --access-log FILE OPTIONS`; with `port`,
        `serve OPTIONS` alone (they say where it listens, e.g. a config section)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens = store.tmp / "tokens"
        self.access_log = store.tmp / "access.log"
        command = [*MODELFS, "--config", str(store.config), "serve"]
        if port is None:
            command += [f"a:{store.name}", "--listen", f"127.0.0.1:{self.port}"]
            command += ["--access-log", str(self.access_log)]
        self.process = subprocess.Popen(
            [*command, *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited: {self.process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("serve did not answer /healthz")

    def request(
        self, method: str, path: str, token: str | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with the path sent exactly as given (no client normalisation)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=20)
        return stderr


def follow(url: str, token: str | None = TOKEN) -> bytes:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return bytes(answer.read())


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
