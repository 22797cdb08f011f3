"""The pull of the small-file tree alone, repeated: modelfs pull vs rclone copy vs boto3.

    python bench/experiments/tree_pull.py [--repeat 3] [--files 2000] [--modelfs SRC_DIR ...]

The tree row of bench/pulls.py (same dataset, same tools, same timing: an empty directory,
the page cache dropped, wall time to every byte on disk), without the 1 GiB object and the
WAN profile, repeated, tools interleaved within each repeat so that every ratio compares runs
made back to back. Each `--modelfs` names a source tree (`src/` of a checkout) to run
modelfs from, so two versions can be compared in one run; default: this checkout's.
Prints each run, then per tool the range of seconds, of the speed relative to rclone copy in
the same repeat, and of the CPU seconds the tool (its processes) and SeaweedFS spent: on a
shared machine the CPU figures move far less than the wall times.
Run as root (dropping the page cache needs it).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import dataset  # noqa: E402
import mounters  # noqa: E402
from baselines import S3Target  # noqa: E402
from pulls import BUCKET, boto3_tree, rclone_copy, timed  # noqa: E402
from seaweed_support import seaweed  # noqa: E402
from sysutil import log, safe_rmtree  # noqa: E402

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def own_cpu() -> float:
    """CPU seconds of this process and its waited-for children."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def modelfs_pull(src_dir: Path, config: Path, source: str, dest: Path) -> None:
    command = [sys.executable, "-m", "modelfs", "--config", str(config), "pull", source, str(dest)]
    env = {**os.environ, "PYTHONPATH": str(src_dir)}
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise RuntimeError(f"modelfs pull failed: {done.stderr.decode(errors='replace')[-400:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--modelfs", type=Path, action="append", default=[], metavar="SRC_DIR")
    parser.add_argument("--no-boto3", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=Path("/var/tmp/modelfs-treepull-data"))
    args = parser.parse_args()
    sources = args.modelfs or [REPO / "src"]
    spec = dataset.DatasetSpec(1 << 20, 1 << 20, 1 << 20, args.files)
    data = dataset.build(args.data_dir, spec, log)
    with tempfile.TemporaryDirectory(prefix="modelfs-treepull-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        server = seaweed().SeaweedServer(work / "weed")
        server.start()
        try:
            target = S3Target(server.endpoint, BUCKET, server.access_key, server.secret_key)
            dataset.upload(
                data, target.client(), BUCKET, big_keys=(), tree_prefix=dataset.TREE_PREFIX,
                log=log,
            )  # fmt: skip
            config = mounters.write_rclone_config(target, work / "remotes.conf")
            source = f"{mounters.REMOTE}:{BUCKET}/{dataset.TREE_PREFIX}"
            keys = data.tree_keys_under(dataset.TREE_PREFIX)
            dest = work / "dest"
            tools = {f"modelfs[{i}]": src for i, src in enumerate(sources)}
            weed = server._process.pid
            work_of = {
                name: (lambda s=src: modelfs_pull(s, config, source, dest))
                for name, src in tools.items()
            }
            work_of["rclone"] = lambda: rclone_copy(config, source, dest)
            if not args.no_boto3:
                work_of["boto3"] = lambda: boto3_tree(target, keys, dataset.TREE_PREFIX, dest)
            runs: dict[str, list[float]] = {name: [] for name in work_of}
            cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in work_of}
            for repeat in range(args.repeat):
                for name, work_item in work_of.items():
                    mine, served = own_cpu(), cpu_of(weed)
                    runs[name].append(timed(work_item, dest))
                    cpu[name].append((own_cpu() - mine, cpu_of(weed) - served))
                last = ", ".join(f"{n} {t[-1]:.2f}s" for n, t in runs.items() if t)
                log(f"repeat {repeat}: {last}")
                time.sleep(1)
            safe_rmtree(dest)
        finally:
            server.stop()
    rclone = runs["rclone"]
    for name, seconds in runs.items():
        if not seconds:
            continue
        speedups = [r / s for r, s in zip(rclone, seconds, strict=True)]
        tool_cpu = [c[0] for c in cpu[name]]
        weed_cpu = [c[1] for c in cpu[name]]
        print(
            f"{name:11} {min(seconds):.2f}-{max(seconds):.2f} s; "
            f"speed vs rclone {min(speedups):.2f}-{max(speedups):.2f}x; "
            f"CPU s: tool {min(tool_cpu):.2f}-{max(tool_cpu):.2f}, "
            f"SeaweedFS {min(weed_cpu):.2f}-{max(weed_cpu):.2f} "
            f"({', '.join(f'{s:.2f}' for s in seconds)})"
        )
    for i, src in enumerate(sources):
        print(f"modelfs[{i}] = {src}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
