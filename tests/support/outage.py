"""`Outage`: a store that goes away and comes back on the same address.

    client --> Outage 127.0.0.1:PORT (a FaultProxy; stopped while down) --> SeaweedFS

While down nothing listens on the port, so a connection is refused at once, as with a server
that is off; pooled connections are shut down with it. `up()` starts a new FaultProxy on the same
port, so a mount configured with `endpoint` finds the store again without being told. The
server behind it (the session's SeaweedFS) never stops, so other tests are not affected.
"""

from __future__ import annotations

from types import TracebackType

from .proxy import FaultProxy


class Outage:
    """See the module docstring. `proxy` is the FaultProxy of the current "up" period."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.proxy = FaultProxy(upstream).start()
        self.port = self.proxy.port
        self.is_up = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        """Stop listening (connections refused) and drop every open connection."""
        self.proxy.stop()
        self.is_up = False

    def up(self) -> None:
        """Listen again on the same port."""
        if not self.is_up:
            self.proxy = FaultProxy(self.upstream, port=self.port).start()
            self.is_up = True

    def __enter__(self) -> Outage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.proxy.stop()
