"""How much memory a process could still fill with page cache: the machine's and its cgroup's.

`available_memory(pid)` is the lower of
- the kernel's `MemAvailable` (/proc/meminfo): free memory plus what it can reclaim without
  swapping, its own estimate of what a new workload can use;
- the room left under the memory limits of `pid`'s cgroup and of each cgroup above it
  (limit minus usage; cgroup v2 `memory.max`/`memory.current`, or v1's memory controller
  `memory.limit_in_bytes`/`memory.usage_in_bytes`). Page cache is charged to the cgroup of
  the process that reads it, so a container's limit binds before the machine's memory does.

`MODELFS_MEMORY_AVAILABLE` (a size, e.g. `64M`) replaces the measurement: tests use it to give
a mount the memory of a small machine. None means nothing could be read (not Linux, no /proc):
the caller then decides as if memory were plentiful or scarce, its choice.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelfs.config.units import parse_size

MEMORY_ENV = "MODELFS_MEMORY_AVAILABLE"
PROC, CGROUPS = "/proc", "/sys/fs/cgroup"
_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge number (page-rounded LONG_MAX)


def available_memory(pid: int = 0, *, proc: str = PROC, cgroups: str = CGROUPS) -> int | None:
    """Bytes `pid` (0: this process) may still fill; see the module docstring."""
    injected = os.environ.get(MEMORY_ENV)
    if injected:
        return parse_size(injected)
    known = [
        figure
        for figure in (mem_available(proc), cgroup_room(pid, proc=proc, cgroups=cgroups))
        if figure is not None
    ]
    return min(known) if known else None


def mem_available(proc: str = PROC) -> int | None:
    try:
        with open(f"{proc}/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_room(pid: int = 0, *, proc: str = PROC, cgroups: str = CGROUPS) -> int | None:
    """The least room under any memory limit of `pid`'s cgroup and its ancestors; None if no
    limit applies (or none can be read)."""
    try:
        lines = Path(f"{proc}/{pid or 'self'}/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            files, base = ("memory.max", "memory.current"), Path(cgroups)
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
            base = Path(cgroups, "memory")
        else:
            continue
        node = base / path.lstrip("/")
        while True:
            room = _room(node, *files)
            if room is not None:
                rooms.append(room)
            if node == base or base not in node.parents:
                break
            node = node.parent
    return min(rooms) if rooms else None


def _room(node: Path, limit_file: str, usage_file: str) -> int | None:
    try:
        limit_text = (node / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= _UNLIMITED:
            return None
        return max(0, int(limit_text) - int((node / usage_file).read_text()))
    except (OSError, ValueError):
        return None
