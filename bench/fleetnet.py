"""The fleet simulation's network: one namespace per machine, all on one bridge.

    root namespace (the driver)                 namespace <run>-hub: bridge br0
    mf<pid>b0  10.214.K.254 ─────────veth──────── port
    namespace <run>-origin  eth0 10.214.K.2 ─────── port    wanproxy :8333 (the WAN)
        └ veth 169.254.214.1/30 ── namespace <run>-store 169.254.214.2: weed mini :8334
    namespace <run>-site    eth0 10.214.K.3 ─────── port    weed mini :8333 (remote mount)
    namespace <run>-n01     eth0 10.214.K.11 ────── port    modelfs mount + loader
    ...
    namespace <run>-nNN     eth0 10.214.K.(10+N) ── port

The /24 exists only on these veths; nothing else is routed. The origin's SeaweedFS sits in a
namespace of its own behind the proxy's (which forwards nothing): the proxy is the only way to
it, and it reaches nothing else. (Network namespaces do not separate everything: `weed mini`
also talks to its own parts over Unix sockets in /tmp named by port, so `fleet` gives the
origin's and the site's SeaweedFS ports of their own.)
Names carry the pid of the driver (or of scripts/fleet-sim.sh), so two simulations never
share one, and leftovers of a run whose driver died (SIGKILL: no cleanup ran) are removed at
the next start. `destroy` stops what runs in the namespaces (every process there was started
by this run: a node's mount unmounts on SIGTERM) and deletes them; deleting the hub takes
every veth with it.
Processes in a namespace are started with `ip netns exec`, which also gives each its own mount
namespace: a node's FUSE mount is seen by that node's processes only, and goes away with them.
Naming, subnets and the removal of leftovers are `netns`'s.
"""

from __future__ import annotations

import netns
from netns import ns_exec
from sysutil import log, run

NS_PREFIX = "mfleet"
_SECOND_OCTET = 214  # 10.214.K.0/24: private, checked unused in the root namespace
_PROXY_SIDE, _STORE_IP = "169.254.214.1", "169.254.214.2"  # the origin's own /30


class FleetNet:
    """The namespaces of one simulation and their addresses (see the module docstring)."""

    def __init__(self, nodes: int, run_id: int) -> None:
        self.run = f"{NS_PREFIX}{run_id}"  # a live pid: `netns.remove_stale` leaves it alone
        self.nodes = nodes
        self.hub = f"{self.run}-hub"
        self.origin = f"{self.run}-origin"
        self.store = f"{self.run}-store"  # the origin's SeaweedFS, behind the proxy
        self.site = f"{self.run}-site"
        self.subnet = ""
        self._created: list[str] = []

    def node(self, index: int) -> str:
        return f"{self.run}-n{index:02d}"

    def ip(self, namespace: str) -> str:
        if namespace == self.store:
            return _STORE_IP
        if namespace == self.origin:
            return f"{self.subnet}.2"
        if namespace == self.site:
            return f"{self.subnet}.3"
        return f"{self.subnet}.{10 + int(namespace.rsplit('-n', 1)[1])}"

    def create(self) -> None:
        netns.remove_stale(NS_PREFIX)
        self.subnet = f"10.{_SECOND_OCTET}.{netns.free_subnet(_SECOND_OCTET)}"
        self._add_namespace(self.hub)
        run(ns_exec(self.hub, "ip", "link", "add", "br0", "type", "bridge"))
        run(ns_exec(self.hub, "ip", "link", "set", "br0", "up"))
        self._attach(0, None, f"{self.subnet}.254")  # the driver's own port
        members = [self.origin, self.site] + [self.node(i) for i in range(1, self.nodes + 1)]
        for index, namespace in enumerate(members, start=1):
            self._add_namespace(namespace)
            self._attach(index, namespace, self.ip(namespace))
        self._add_namespace(self.store)
        pid = self.run.removeprefix(NS_PREFIX)
        proxy_end, store_end = f"mf{pid}o", f"mf{pid}s"
        run(["ip", "link", "del", proxy_end], check=False)
        run(["ip", "link", "add", proxy_end, "type", "veth", "peer", "name", store_end])
        for end, namespace, address in (
            (proxy_end, self.origin, _PROXY_SIDE),
            (store_end, self.store, _STORE_IP),
        ):
            run(["ip", "link", "set", end, "netns", namespace])
            run(ns_exec(namespace, "ip", "addr", "add", f"{address}/30", "dev", end))
            run(ns_exec(namespace, "ip", "link", "set", end, "up"))
        log(f"network: {len(members)} namespaces on a bridge, {self.subnet}.0/24, and the origin")

    def _add_namespace(self, namespace: str) -> None:
        run(["ip", "netns", "add", namespace])
        self._created.append(namespace)
        run(ns_exec(namespace, "ip", "link", "set", "lo", "up"))

    def _attach(self, index: int, namespace: str | None, address: str) -> None:
        pid = self.run.removeprefix(NS_PREFIX)
        port, end = f"mf{pid}a{index}", f"mf{pid}b{index}"
        run(["ip", "link", "del", end], check=False)  # of a run with this id, still going away
        run(["ip", "link", "add", port, "type", "veth", "peer", "name", end])
        run(["ip", "link", "set", port, "netns", self.hub])
        run(ns_exec(self.hub, "ip", "link", "set", port, "master", "br0", "up"))
        if namespace is None:
            run(["ip", "addr", "add", f"{address}/24", "dev", end])
            run(["ip", "link", "set", end, "up"])
            return
        run(["ip", "link", "set", end, "netns", namespace])
        run(ns_exec(namespace, "ip", "link", "set", end, "name", "eth0"))
        run(ns_exec(namespace, "ip", "addr", "add", f"{address}/24", "dev", "eth0"))
        run(ns_exec(namespace, "ip", "link", "set", "eth0", "up"))

    def destroy(self) -> None:
        """Stop every process in the namespaces and delete them (the nodes first, the hub with
        the bridge last)."""
        members = [n for n in self._created if n != self.hub]
        for namespace in [*members, self.hub]:
            if namespace in self._created:
                netns.delete(namespace)
        self._created.clear()
