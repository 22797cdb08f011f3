"""Where the CPU of a cold read goes: the whole machine by process, and the mount by thread.

    python bench/experiments/cold_profile.py [extra modelfs mount options]

Each repeat makes two cold reads, each through a fresh mount with an empty cache after the
page cache is dropped (`dd bs=1M`): one under `perf record -a` (every CPU, so the S3 server,
the mount and `dd` are in one picture; idle time comes from /proc/stat), one under
`py-spy record --threads --nonblocking` of the mount (Python stacks; py-spy counts only
threads on the CPU). A profiler takes CPU of its own from the 2 cores, so each read's rate
is lower than without.
Prints each read's rate and CPU seconds per process (`/proc/<pid>/stat`), perf's share of
samples by process and by mount thread group, and py-spy's on-CPU samples by thread group
with the functions each group spends them in. Env: SIZE_MB (1024), REPS (2), KEY (big.dat).
Starts its own SeaweedFS. Run as root, with perf and py-spy on the PATH.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import mounted, serving
from cold_cpu import cpu_seconds, idle_and_steal, mount_pid

SIZE = int(os.environ.get("SIZE_MB", "1024")) << 20
REPS = int(os.environ.get("REPS", "2"))
KEY = os.environ.get("KEY", "big.dat")
TOP = 6
# py-spy's idle-looking frames: a thread parked in one of these is not doing the read's work.
_WAITING = ("epoll", "wait (threading", "_wait_for_tstate_lock", "get_events", "acquire")


def thread_group(main: bool, names: str) -> str:
    """A mount thread's role, from whether it is the main thread and its names or stack."""
    if main:
        return "event loop"
    if "modelfs-cache" in names or "cachewriter" in names:
        return "cache writers"
    # trio's worker threads: in a cold read nearly all of their time is the GET streams
    return "worker threads (GET streams)"


def threads_of(pid: int) -> dict[int, str]:
    """Thread id -> kernel thread name, for each thread of `pid` now."""
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "comm") as comm:
            names[int(task.name)] = comm.read().strip()
    return names


def python_threads_of(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name (Python does not give its names to the kernel)."""
    names = threads_of(pid)
    dump = subprocess.run(
        ["py-spy", "dump", "--nonblocking", "--json", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=True,
    )
    for thread in json.loads(dump.stdout):
        if thread.get("os_thread_id") in names:
            names[thread["os_thread_id"]] = thread.get("thread_name") or ""
    names[pid] = "MainThread"
    return names


def perf_shares(data: Path, mount: dict[int, str], server: dict[int, str]) -> list[str]:
    """Share of all samples by process, and by thread group inside the mount."""
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "pid", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    by_process: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        fields = line.split()
        if len(fields) < 2 or line.startswith("#") or not fields[0].endswith("%"):
            continue
        share = float(fields[0][:-1])
        tid_text, _, comm = fields[1].partition(":")
        tid = int(tid_text) if tid_text.isdigit() else -1
        if tid in mount:
            by_process["modelfs"] += share
            by_thread[thread_group(mount[tid] == "MainThread", f"{comm} {mount[tid]}")] += share
        elif tid in server:
            by_process["SeaweedFS"] += share
        elif tid != 0:  # idle: perf's clock barely samples an idle CPU here; /proc/stat counts it
            by_process[comm or "?"] += share
    busy = sum(by_process.values()) or 1.0
    for counter in (by_process, by_thread):
        for name in counter:
            counter[name] *= 100 / busy
    lines = ["perf -a, share of the busy samples by process: " + _shares(by_process)]
    lines.append("  modelfs by thread group: " + _shares(by_thread))
    return lines


def _shares(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{name} {share:.1f}%" for name, share in counter.most_common(6))


def pyspy_groups(raw: Path) -> list[str]:
    """On-CPU samples by thread group, with each group's top functions (self time)."""
    samples: collections.Counter[str] = collections.Counter()
    functions: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        if any(word in frames[-1] for word in _WAITING):
            continue
        group = thread_group(thread == "MainThread", stack)
        samples[group] += int(count)
        functions[group][frames[-1].split(" (", 1)[0]] += int(count)
    total = sum(samples.values()) or 1
    lines = [f"py-spy, on-CPU samples of the mount ({total}) by thread group:"]
    for group, count in samples.most_common():
        top = ", ".join(f"{name} {n / count:.0%}" for name, n in functions[group].most_common(TOP))
        lines.append(f"  {group} {count / total:.0%}: {top}")
    return lines


def cold_read(mountpoint: Path, server_pid: int, wrap: list[str], spy: list[str]) -> dict[int, str]:
    """One cold `dd`, run under `wrap` (a profiler of the whole machine for the `dd`'s
    duration) and with `spy` (a profiler taking the mount's pid last) attached to the mount;
    the mount's threads after it."""
    path = mountpoint / KEY
    path.stat()
    pid = mount_pid(mountpoint)
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    time.sleep(1)
    attached = None
    if spy:
        attached = subprocess.Popen([*spy, str(pid)], stdout=subprocess.DEVNULL)
        time.sleep(1.5)
    server0, mount0, (idle0, _) = cpu_seconds(server_pid), cpu_seconds(pid), idle_and_steal()
    start = time.perf_counter()
    dd = ["dd", f"if={path}", "of=/dev/null", "bs=1M"]
    subprocess.run([*wrap, *dd], capture_output=True, check=True)
    wall = time.perf_counter() - start
    server, mount = cpu_seconds(server_pid) - server0, cpu_seconds(pid) - mount0
    idle = idle_and_steal()[0] - idle0
    threads = python_threads_of(pid)
    if attached is not None:
        attached.send_signal(2)
        attached.wait(timeout=120)
    print(
        f"== {(wrap or spy)[0]}: {SIZE / wall / 1e6:.0f} MB/s in {wall:.2f} s; CPU seconds:"
        f" SeaweedFS {server:.2f}, modelfs {mount:.2f}, idle {idle:.2f} (of {2 * wall:.2f})"
    )
    return threads


def profiled_reads(remotes: Path, work: Path, server_pid: int, extra: list[str]) -> None:
    perf_data, spy_raw = work / "perf.data", work / "pyspy.txt"
    with mounted(remotes, work, extra) as mountpoint:
        record = ["perf", "record", "-q", "-a", "-F", "499", "-o", str(perf_data), "--"]
        threads = cold_read(mountpoint, server_pid, record, [])
    print("\n".join(perf_shares(perf_data, threads, threads_of(server_pid))), flush=True)
    with mounted(remotes, work, extra) as mountpoint:
        spy = ["py-spy", "record", "-r", "200", "--threads", "--nonblocking", "--format", "raw"]
        cold_read(mountpoint, server_pid, [], [*spy, "-o", str(spy_raw), "-p"])
    print("\n".join(pyspy_groups(spy_raw)), flush=True)


def main(argv: list[str]) -> int:
    missing = [tool for tool in ("perf", "py-spy") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"cold_profile: needs {' and '.join(missing)} on the PATH")
    with serving(KEY, SIZE) as (server, work, remotes):
        for _ in range(REPS):
            profiled_reads(remotes, work, server.pid, argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
