"""`TlsFront`: a TLS-terminating forwarder with a private CA, for testing HTTPS endpoints.

    client --HTTPS--> TlsFront 127.0.0.1:PORT --plain TCP--> upstream (e.g. a FaultProxy)

`make_test_ca(directory)` writes a throwaway CA and a server certificate it signed, valid for
"localhost" and 127.0.0.1, with the `openssl` command line (the `cryptography` package is not
a dependency). No system trust store knows the CA, so a client succeeds only if it was told
to trust `ca_file`.

The forwarder decrypts each accepted connection and copies bytes both ways, unchanged, to a
new connection to the upstream; it does not parse HTTP, so the upstream sees exactly what the
client sent (the Host header SigV4 signed included). Every handshake is counted:
`handshakes` succeeded, `handshake_failures` holds why the others failed (e.g. the client
did not trust the CA and sent an alert). Stdlib only, one thread per connection;
`_lock` guards the counters and the list of threads, and nothing else is locked.
"""

from __future__ import annotations

import select
import socket
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_PIECE = 1 << 20
_POLL_SECONDS = 0.05  # how often idle threads look at the stop flag
_HANDSHAKE_TIMEOUT = 5.0  # a client that connects and says nothing must not hold up stop()
_IO_TIMEOUT = 30.0  # a stuck peer must not pin a forwarding thread forever
_OPENSSL_TIMEOUT = 60.0
_DAYS = "2"
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")

_CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE",
    "keyUsage=critical,keyCertSign,cRLSign",
    "subjectKeyIdentifier=hash",
)
_SERVER_EXTENSIONS = """\
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
"""


@dataclass(frozen=True, slots=True)
class TlsCertificates:
    ca_file: Path  # the CA certificate a client must trust
    cert_file: Path  # the server's certificate, signed by the CA
    key_file: Path  # the server's private key


def make_test_ca(directory: Path) -> TlsCertificates:
    """A new CA and a server certificate for localhost / 127.0.0.1, written to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, ca_key = _make_ca(directory)
    cert_file, key_file = _make_server_certificate(directory, ca_file, ca_key)
    return TlsCertificates(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def _make_ca(directory: Path) -> tuple[Path, Path]:
    ca_file, ca_key = directory / "ca.pem", directory / "ca.key"
    extensions = [arg for extension in _CA_EXTENSIONS for arg in ("-addext", extension)]
    _openssl("req", "-x509", *_NEW_KEY, "-keyout", ca_key, "-out", ca_file,
             "-subj", "/CN=modelfs test CA", "-days", _DAYS, *extensions)  # fmt: skip
    return ca_file, ca_key


def _make_server_certificate(directory: Path, ca_file: Path, ca_key: Path) -> tuple[Path, Path]:
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    request, extensions = directory / "server.csr", directory / "server.ext"
    extensions.write_text(_SERVER_EXTENSIONS)
    _openssl("req", "-new", *_NEW_KEY, "-keyout", key_file, "-out", request,
             "-subj", "/CN=localhost")  # fmt: skip
    _openssl("x509", "-req", "-in", request, "-CA", ca_file, "-CAkey", ca_key,
             "-set_serial", "1", "-days", _DAYS, "-extfile", extensions,
             "-out", cert_file)  # fmt: skip
    return cert_file, key_file


def _openssl(*arguments: str | Path) -> None:
    subprocess.run(
        ["openssl", *map(str, arguments)],
        check=True,
        capture_output=True,
        timeout=_OPENSSL_TIMEOUT,
    )


class TlsFront:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(self, upstream: str, certificates: TlsCertificates) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certificates.cert_file, certificates.key_file)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_SECONDS)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._handshakes = 0
        self._failures: list[str] = []

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def handshakes(self) -> int:
        with self._lock:
            return self._handshakes

    @property
    def handshake_failures(self) -> list[str]:
        with self._lock:
            return list(self._failures)

    def start(self) -> TlsFront:
        self._spawn(self._accept_loop, f"tls-front-{self.port}")
        return self

    def stop(self) -> None:
        """Stop accepting, end every forwarding thread (within a poll interval) and wait."""
        self._stopping.set()
        while True:
            with self._lock:
                threads, self._threads = self._threads, []
            if not threads:
                break
            for thread in threads:
                thread.join()
        self._listener.close()

    def __enter__(self) -> TlsFront:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> bool:
        """Start a tracked thread; False (nothing started) once the front is stopping."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            if self._stopping.is_set():
                return False
            self._threads.append(thread)
        thread.start()
        return True

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._spawn(self._serve, f"tls-front-conn-{self.port}", connection):
                connection.close()

    def _serve(self, connection: socket.socket) -> None:
        connection.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            client = self._context.wrap_socket(connection, server_side=True)
        except OSError as exc:  # ssl.SSLError included: the client refused our certificate
            connection.close()
            with self._lock:
                self._failures.append(str(exc))
            return
        with self._lock:
            self._handshakes += 1
        client.settimeout(_IO_TIMEOUT)
        with client:
            try:
                upstream = socket.create_connection(self.upstream, timeout=_IO_TIMEOUT)
            except OSError:
                return
            with upstream:
                self._forward(client, upstream)

    def _forward(self, client: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the front stops)."""
        peer = {client: upstream, upstream: client}
        try:
            while not self._stopping.is_set():
                if client.pending():  # decrypted bytes select() cannot see
                    ready: list[socket.socket] = [client]
                else:
                    ready, _, _ = select.select([client, upstream], [], [], _POLL_SECONDS)
                for source in ready:
                    data = source.recv(_PIECE)
                    if not data:
                        return
                    peer[source].sendall(data)
        except OSError:
            return  # a reset or a TLS error on either side: drop both connections
