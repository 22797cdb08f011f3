"""sd_notify without libsystemd: tell the service manager about our state.

systemd (and other managers implementing the protocol) passes a unix datagram socket in
`$NOTIFY_SOCKET`; a service writes newline-separated `KEY=VALUE` assignments to it in one
datagram (`READY=1`, `STOPPING=1`, `STATUS=...`, `MAINPID=...`). The address is either a
filesystem path or, when it starts with '@', a Linux abstract socket whose name starts with a
NUL byte instead.

Invariants: `notify` never raises. Outside systemd (no `$NOTIFY_SOCKET`) it is a cheap no-op
returning False, and a manager that went away (ECONNREFUSED, ENOENT) is logged, not fatal: a
mount must keep serving even if nobody listens for its readiness.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def notify_address(raw: str) -> str | bytes | None:
    """The `connect`/`sendto` address for a `$NOTIFY_SOCKET` value, or None if unusable.

    '@name' is the abstract socket '\\0name'; anything else must be an absolute path
    (systemd also accepts 'vsock:' addresses, which a local mount never needs).
    """
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1", "STATUS=mounted") as one datagram; True if sent."""
    raw = os.environ.get(NOTIFY_SOCKET_ENV)
    if not raw or not states:
        return False
    address = notify_address(raw)
    if address is None:
        log.warning("ignoring unsupported %s=%r", NOTIFY_SOCKET_ENV, raw)
        return False
    message = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify %s to %s failed: %s", states, raw, exc)
        return False
    return True


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without `$NOTIFY_SOCKET`.

    Processes we start (the app, a `mount --daemon`) must not speak for our unit: systemd
    would ignore them with the default NotifyAccess=main, and a helper that signals READY
    before we are ready would be wrong anyway.
    """
    env = dict(os.environ if environ is None else environ)
    env.pop(NOTIFY_SOCKET_ENV, None)
    return env
