"""Cold reads through fresh mounts of several source trees, interleaved: mount CPU by thread.

    python bench/experiments/cold_ab.py LABEL=SRC[:WORDS] LABEL=SRC[:WORDS] ...

Each variant is a `src/` directory (PYTHONPATH of its `python -m modelfs`) with optional mount
options and NAME=VALUE environment variables (space-separated words after a colon), or `s3fs`
(s3fs-fuse with a cache directory, as bench/mounters.py mounts it). Every repeat runs every
variant once, in turn, each on a fresh mount with an empty cache after `drop_caches`, so a slow
patch of a shared machine hits every variant alike. Prints per run the workload's figure, the
mount's CPU seconds (utime + stime from /proc/<pid>/stat) split by thread role (event loop, GET
streams, cache writers) and the server's, then per variant the range over the repeats.
Env: SIZE_MB (1024), REPS (3), KEY (big.dat; a model suffix such as big.bin also starts the
whole-object fetch), WORKLOAD:
- dd (default): `dd bs=1M` of the object; MB/s, CPU-s per GiB;
- fio128 / fio4: `fio` random reads of 128 or 4 KiB for FIO_S seconds (5); MB/s or IOPS, CPU-s
  per GiB of the object;
- whole: a read of the first 4 KiB (with a model suffix in KEY, that starts the whole-object
  fetch), then a wait until every block is in the block cache; MB/s and CPU-s per GiB of the
  fetch alone (modelfs variants only);
- tree: `ls -lR` and a read of each of 2,000 small files under tree/; ms, CPU-s of the run;
- ls: the `ls -lR` alone.
Starts its own SeaweedFS. Run as root, with py-spy on the PATH (it names the threads).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _common import SeaweedServer, mounted, serving
from cold_cpu import TICKS, cpu_seconds
from cold_profile import python_threads_of

SIZE = int(os.environ.get("SIZE_MB", "1024")) << 20
REPS = int(os.environ.get("REPS", "3"))
KEY = os.environ.get("KEY", "big.dat")
TREE_FILES = 2000
WORKLOAD = os.environ.get("WORKLOAD", "dd")
FIO_S = int(os.environ.get("FIO_S", "5"))
GIB = 1 << 30
BLOCK = 1 << 20  # the block cache's block: one file each


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` now."""
    seconds: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


def roles_of(pid: int) -> dict[int, str]:
    """Thread id -> role, from the Python thread names (`python_threads_of`)."""
    roles = {}
    for tid, name in python_threads_of(pid).items():
        if tid == pid:
            roles[tid] = "loop"
        elif "cache-writer" in name:
            roles[tid] = "writers"
        else:
            roles[tid] = "gets"
    return roles


def fio(path: Path) -> float:
    """MB/s (128k) or IOPS (4k) of `fio` random reads over `path` for FIO_S seconds."""
    block = WORKLOAD.removeprefix("fio")
    command = ["fio", "--name=r", f"--filename={path}", "--readonly", "--rw=randread"]
    command += [f"--bs={block}k", "--ioengine=psync", "--time_based", f"--runtime={FIO_S}"]
    done = subprocess.run([*command, "--output-format=json"], capture_output=True, check=True)
    read = json.loads(done.stdout[done.stdout.index(b"{") :])["jobs"][0]["read"]
    return float(read["iops"] if block == "4" else read["bw_bytes"] / 1e6)


def whole_fetch(mountpoint: Path, path: Path) -> None:
    """Read 4 KiB at 0 of `path`, then wait until the block cache beside the mount (as
    `mounted` lays it out) holds every block of it."""
    blocks = -(-SIZE // BLOCK)
    cache = mountpoint.parent / "cache"
    deadline = time.monotonic() + 600
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, 0)
        while sum(len(files) for top, _, files in os.walk(cache) if "blocks" in top) < blocks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the whole-object fetch of {path} did not end")
            time.sleep(0.02)
    finally:
        os.close(fd)


@contextlib.contextmanager
def s3fs_mounted(server: SeaweedServer, work: Path) -> Iterator[Path]:
    """Bucket `perf` mounted by s3fs (as bench/mounters.py does) at work/mnt."""
    cache, mountpoint, passwd = work / "s3fs-cache", work / "mnt", work / "s3fs.passwd"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    mountpoint.mkdir(exist_ok=True)
    passwd.write_text(f"{server.access_key}:{server.secret_key}\n")
    passwd.chmod(0o600)
    options = f"url={server.endpoint},use_path_request_style,endpoint=us-east-1,"
    options += f"use_cache={cache},passwd_file={passwd}"
    s3fs = ["s3fs", "perf", str(mountpoint), "-f", "-o", options]
    process = subprocess.Popen(s3fs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not os.path.ismount(mountpoint):
            time.sleep(0.1)
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mount_of(mountpoint: Path) -> int:
    """The pid of the process serving `mountpoint` (s3fs, or modelfs as its status says)."""
    found = subprocess.run(
        ["pgrep", "-f", f"s3fs perf {mountpoint}"], capture_output=True, text=True
    )
    if found.stdout:
        return int(found.stdout.split()[0])
    status = subprocess.run(
        [sys.executable, "-m", "modelfs", "status", "--json", str(mountpoint)],
        capture_output=True,
        check=True,
        text=True,
    )
    return int(json.loads(status.stdout)["pid"])


def one_read(mountpoint: Path, server_pid: int) -> dict[str, float]:
    path = mountpoint / KEY
    path.stat()
    pid = mount_of(mountpoint)
    subprocess.run("sync; echo 3 > /proc/sys/vm/drop_caches", shell=True, check=True)
    time.sleep(1)
    server0, mount0, threads0 = cpu_seconds(server_pid), cpu_seconds(pid), thread_cpu(pid)
    start = time.perf_counter()
    if WORKLOAD.startswith("fio"):
        rate = fio(path)
    elif WORKLOAD in ("tree", "ls"):
        tree = mountpoint / "tree"
        subprocess.run(["sh", "-c", 'exec ls -lR "$0" > /dev/null', str(tree)], check=True)
        for directory, _, names in os.walk(tree) if WORKLOAD == "tree" else ():
            for name in names:
                with open(os.path.join(directory, name), "rb", buffering=0) as file:
                    while file.read(1 << 20):
                        pass
    elif WORKLOAD == "whole":
        whole_fetch(mountpoint, path)
    else:
        dd = ["dd", f"if={path}", "of=/dev/null", "bs=1M"]
        subprocess.run(dd, capture_output=True, check=True)
    wall = time.perf_counter() - start
    if WORKLOAD in ("tree", "ls"):
        rate = wall * 1e3  # ms for the listing (and every file)
    elif not WORKLOAD.startswith("fio"):
        rate = SIZE / wall / 1e6
    threads1 = thread_cpu(pid)
    roles = roles_of(pid) if "s3fs" not in Path(f"/proc/{pid}/comm").read_text() else {}
    per_gib = 1.0 if WORKLOAD in ("tree", "ls") else GIB / SIZE
    figures = {
        "MB/s": rate,
        "mount": (cpu_seconds(pid) - mount0) * per_gib,
        "server": (cpu_seconds(server_pid) - server0) * per_gib,
    }
    for role in ("loop", "gets", "writers"):
        figures[role] = 0.0
    for tid, seconds in threads1.items():
        role = roles.get(tid, "gets")
        figures[role] += (seconds - threads0.get(tid, 0.0)) * per_gib
    return figures


def shown(figures: dict[str, float]) -> str:
    return (
        f"{figures['MB/s']:6.0f} MB/s  mount {figures['mount']:.2f} CPU-s/GiB "
        f"(loop {figures['loop']:.2f}, GETs {figures['gets']:.2f}, "
        f"writers {figures['writers']:.2f})  server {figures['server']:.2f}"
    )


def put_tree(server: SeaweedServer) -> None:
    """TREE_FILES small files (256 B - 64 KiB, log-uniform) in 10 directories under tree/."""
    client, rng = server.client(), random.Random(3)
    for number in range(TREE_FILES):
        size = int(256 * 256 ** rng.random())
        key = f"tree/d{number % 10:02}/f{number:04}.bin"
        client.put_object(Bucket="perf", Key=key, Body=rng.randbytes(size))


def main(argv: list[str]) -> int:
    variants = []
    for spec in argv[1:]:
        label, _, rest = spec.partition("=")
        src, _, words = rest.partition(":")
        env = dict(word.split("=", 1) for word in words.split() if "=" in word)
        options = [word for word in words.split() if "=" not in word]
        variants.append((label, os.path.abspath(src), options, env))
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _, _ in variants}
    with serving(KEY, SIZE) as (server, work, remotes):
        if WORKLOAD in ("tree", "ls"):
            put_tree(server)
        for rep in range(REPS):
            for label, src, options, extra_env in variants:
                env = {"PYTHONPATH": src, **extra_env}
                mount = (
                    s3fs_mounted(server, work)
                    if src.endswith("/s3fs")
                    else mounted(remotes, work, options, env)
                )
                with mount as mountpoint:
                    figures = one_read(mountpoint, server.pid)
                results[label].append(figures)
                print(f"{rep} {label:>10}: {shown(figures)}", flush=True)
    print()
    for label, runs in results.items():
        cells = []
        for name in ("MB/s", "mount", "loop", "gets", "writers", "server"):
            values = sorted(run[name] for run in runs)
            cells.append(f"{name} {values[0]:.2f}-{values[-1]:.2f}")
        print(f"{label:>10}: " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
