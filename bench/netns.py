"""Network namespaces for the benchmarks (`wan`, `fleetnet`): names, subnets, and cleanup.

Every namespace a run creates is named PREFIX<pid>[-suffix], with the pid of the process that
created it, so two runs never share one and `remove_stale` can tell the leftovers of a run
that died by SIGKILL (no cleanup ran) from those of a run still alive. Everything that runs in
such a namespace was started by its run: `kill_all` may stop all of it.
"""

from __future__ import annotations

import os
import re
import signal
import time

from sysutil import log, pid_alive, run

_KILL_GRACE_S = 8.0  # for a mount in the namespace to unmount after SIGTERM


def ns_exec(namespace: str, *cmd: str) -> list[str]:
    """`cmd` run in `namespace` (`ip netns exec` also gives it a mount namespace of its own)."""
    return ["ip", "netns", "exec", namespace, *cmd]


def free_subnet(second_octet: int) -> int:
    """A K with no address of 10.<second_octet>.K.0/24 on this machine's interfaces."""
    used = run(["ip", "-4", "-o", "addr"], check=False).stdout
    for third in range(1, 255):
        if f" 10.{second_octet}.{third}." not in used:
            return third
    raise RuntimeError(f"no free 10.{second_octet}.K.0/24 subnet")


def remove_stale(prefix: str, veth_of: str = "") -> None:
    """Delete the namespaces PREFIX<pid>[-...] of runs whose process is gone (last the one
    without a suffix or `-hub`, which holds the others' veth ends), with what runs in them;
    `veth_of` (a format of `pid`): a veth in the root namespace to delete with them."""
    listing = run(["ip", "netns", "list"], check=False).stdout
    dead: dict[str, str] = {}
    for name, pid in re.findall(rf"^({prefix}(\d+)(?:-\S+)?)", listing, re.MULTILINE):
        if not pid_alive(int(pid)):
            dead[name] = pid
    for name in sorted(dead, key=lambda n: n.endswith("-hub") or "-" not in n):
        log(f"removing namespace {name} of a run that died")
        kill_all(name, grace=0.0)
        if veth_of:
            run(["ip", "link", "del", veth_of.format(pid=dead[name])], check=False)
        run(["ip", "netns", "del", name], check=False)


def kill_all(namespace: str, grace: float = _KILL_GRACE_S) -> None:
    """SIGTERM every process in `namespace` (a mount unmounts on it), SIGKILL what is left."""
    pids = [int(p) for p in run(["ip", "netns", "pids", namespace], check=False).stdout.split()]
    for pid in pids:
        _signal(pid, signal.SIGTERM if grace else signal.SIGKILL)
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)


def delete(namespace: str, grace: float = _KILL_GRACE_S) -> None:
    """Stop what runs in `namespace`, then delete it (and the veth ends inside it)."""
    kill_all(namespace, grace)
    run(["ip", "netns", "del", namespace], check=False)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
