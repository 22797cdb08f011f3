"""A static HTTP server of one directory, on a free loopback port, that records the paths
it was asked for: the "any static host" a manifest URL can point at. It answers a single
`Range: bytes=A-B` with 206, as static hosts and CDNs do (the stdlib's handler does not)."""

from __future__ import annotations

import functools
import os
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(SimpleHTTPRequestHandler):
    recorder: StaticHttp

    def do_GET(self) -> None:
        self.recorder.paths.append(self.path)
        wanted = _RANGE.match(self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if wanted is None or not path.is_file():
            super().do_GET()
            return
        size = path.stat().st_size
        first = int(wanted.group(1))
        last = min(int(wanted.group(2)) if wanted.group(2) else size - 1, size - 1)
        if first >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with path.open("rb") as file:
            file.seek(first)
            body = file.read(last - first + 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{os.stat(path).st_mtime_ns:x}-{size:x}"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


class StaticHttp:
    def __init__(self, directory: Path) -> None:
        self.paths: list[str] = []
        handler_class = type("Handler", (_Handler,), {"recorder": self})
        handler = functools.partial(handler_class, directory=str(directory))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StaticHttp:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
