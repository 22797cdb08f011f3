"""CPU per process around one cold `dd` through a fresh mount: SeaweedFS, modelfs, dd, idle.

    python bench/experiments/cold_cpu.py [extra modelfs mount options]

Each repeat mounts with an empty cache, drops the page cache and reads the object once with
`dd bs=1M`, and prints the rate, the CPU seconds (utime + stime from /proc/<pid>/stat) of the
server and of the mount, the system's idle + iowait seconds (/proc/stat) over the read, and the
GETs the mount counted. Env: SIZE_MB (1024), REPS (3), KEY (big.dat; a model suffix such as
big.bin also starts the whole-object fetch). Starts its own SeaweedFS. Run as root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _common import mounted, serving

SIZE = int(os.environ.get("SIZE_MB", "1024")) << 20
REPS = int(os.environ.get("REPS", "3"))
KEY = os.environ.get("KEY", "big.dat")
PRETOUCH_MB = int(os.environ.get("PRETOUCH_MB", "0"))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def idle_and_steal() -> tuple[float, float]:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (fields[3] + fields[4]) / TICKS, fields[7] / TICKS  # idle + iowait, steal


def pretouch(megabytes: int) -> None:
    if megabytes:
        touch = f"b = bytearray({megabytes} << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"
        subprocess.run([sys.executable, "-c", touch], check=True)


def mount_pid(mountpoint: Path) -> int:
    found = subprocess.run(
        ["pgrep", "-f", f"modelfs.*mount.*{mountpoint}"], capture_output=True, text=True
    )
    return int(found.stdout.split()[0])


def fetched_line(mountpoint: Path) -> str:
    status = subprocess.run(
        [sys.executable, "-m", "modelfs", "status", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    return next((line for line in status.stdout.splitlines() if "fetched" in line), "")


def one_read(mountpoint: Path, server_pid: int) -> str:
    path = mountpoint / KEY
    path.stat()
    pid = mount_pid(mountpoint)
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    pretouch(PRETOUCH_MB)
    time.sleep(1)
    server0, mount0 = cpu_seconds(server_pid), cpu_seconds(pid)
    idle0, steal0 = idle_and_steal()
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)
    wall = time.perf_counter() - start
    server, mount = cpu_seconds(server_pid) - server0, cpu_seconds(pid) - mount0
    idle1, steal1 = idle_and_steal()
    idle, steal = idle1 - idle0, steal1 - steal0
    return (
        f"{SIZE / wall / 1e6:.0f} MB/s in {wall:.2f} s: SeaweedFS {server:.2f} s, "
        f"modelfs {mount:.2f} s, idle {idle:.2f} s, steal {steal:.2f} s of CPU; "
        f"{fetched_line(mountpoint).strip()}"
    )


def main(argv: list[str]) -> int:
    with serving(KEY, SIZE) as (server, work, remotes):
        for _ in range(REPS):
            with mounted(remotes, work, argv[1:]) as mountpoint:
                print(one_read(mountpoint, server.pid), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
