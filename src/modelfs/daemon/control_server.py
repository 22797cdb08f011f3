"""The server side of the control socket (see `control` for the layout and the protocol).

A handler gets the request and `send`, which writes a progress line before the answer (a long
request such as `warm`); `send` raises trio.BrokenResourceError once the client has gone, which
ends the request: the client stopped waiting for it (Ctrl-C)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from modelfs.host.control import checked_dir, socket_path

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Send], Awaitable[dict[str, Any]]]
_MAX_REQUEST = 64 << 10  # a request is one small JSON object


async def serve(
    ident: str,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control requests until cancelled."""
    checked_dir(create=True)
    path = socket_path(ident)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(_answer, trio.SocketStream(conn), handler)


async def _answer(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        buffer = b""
        while not buffer.endswith(b"\n") and len(buffer) < _MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buffer += chunk

        async def send(line: dict[str, Any]) -> None:
            await stream.send_all(json.dumps(line, default=str).encode() + b"\n")

        try:
            answer = await handler(json.loads(buffer), send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away
        except Exception as exc:
            log.exception("control request failed")
            answer = {"ok": False, "error": str(exc)}
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(answer, default=str).encode() + b"\n")
