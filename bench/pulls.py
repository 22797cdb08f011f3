#!/usr/bin/env python3
"""Pull benchmark: model files onto local disk, modelfs pull vs boto3, rclone copy and aria2c.

Not a test: run by hand as root, from the repository root:

    python bench/pulls.py                      # 1 GiB + 2,000 files, loopback and WAN
    python bench/pulls.py --size-mib 256 --tree-files 200 --no-wan     # quicker

What is measured, each into an empty directory on local disk with the page cache dropped
first, wall time from start to every byte on disk (MB/s = 10^6 bytes/s):

| column | how |
|---|---|
| boto3 | `download_file` (s3transfer: 16 threads, 8 MiB parts); the tree: 16 threads of it |
| modelfs | `modelfs pull REMOTE:BUCKET/PREFIX DEST` (default: up to 32 GETs, probed, 8 MiB parts) |
| rclone | `rclone copy` (`--transfers 16`; rclone's own multi-thread streams for big files) |
| aria2 | `aria2c -x16 -s16` of a presigned URL; the tree: an input file of presigned URLs, `-j16` |

The WAN profile (a second SeaweedFS in a network namespace behind a link of 40 ms RTT and 10
MB/s per connection, see wan.py) reads the big file and one tenth of the tree. The modelfs
pull's peak RSS is sampled (its whole process tree) for the big file. One table, ratios to
boto3 from the same run (the big file in MB/s, the trees in seconds); the targets of the pull
issue are checked under it, the WAN one against the link as measured before the pulls (16
parallel 8 MiB ranged GETs to memory, as bench.py measures it), not its theoretical 160 MB/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dataset
import mounters
from baselines import S3Target, parallel_ranged
from boto3.s3.transfer import TransferConfig
from dataset import Dataset, DatasetSpec
from mounters import find_binary
from seaweed_support import seaweed
from sysutil import Cleanup, RssSampler, drop_page_cache, log, process_tree, safe_rmtree
from wan import WanLink, WanProfile

BUCKET = "pullbench"
MIB = 1 << 20
THREADS = 16
_TRANSFER = TransferConfig(
    multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=THREADS
)
_PRESIGN_SECONDS = 3600


@dataclasses.dataclass
class Row:
    name: str
    nbytes: int
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    rss_mib: float | None = None
    tree: bool = False  # a tree of files: shown in seconds (its MB/s says little), else MB/s
    cpu_s: float | None = None  # the modelfs pull's CPU seconds (user + system, all processes)

    def mb_per_s(self, tool: str) -> float | None:
        seconds = self.seconds.get(tool)
        return None if seconds is None else self.nbytes / seconds / 1e6


def timed(work: object, dest: Path) -> float:
    safe_rmtree(dest)
    dest.mkdir(parents=True)
    drop_page_cache()
    started = time.monotonic()
    work()  # type: ignore[operator]
    os.sync()  # every byte on disk, not only in the page cache
    return time.monotonic() - started


def boto3_one(target: S3Target, key: str, dest: Path) -> None:
    target.client(THREADS).download_file(BUCKET, key, str(dest / Path(key).name), Config=_TRANSFER)


def boto3_tree(target: S3Target, keys: tuple[str, ...], prefix: str, dest: Path) -> None:
    client = target.client(THREADS)

    def get(key: str) -> None:
        path = dest / key[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(path))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(get, keys))


def modelfs_pull(
    config: Path, source: str, dest: Path, rss: list[float] | None = None,
    cpu: list[float] | None = None,
) -> None:  # fmt: skip
    command = [sys.executable, "-m", "modelfs", "--config", str(config), "pull", source, str(dest)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with RssSampler(lambda: process_tree(process.pid)) as sampler:
        _, stderr = process.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"modelfs pull failed: {stderr.decode(errors='replace')[-400:]}")
    if rss is not None:
        rss.append(sampler.peak_mib)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)


def rclone_copy(config: Path, source: str, dest: Path) -> None:
    subprocess.run(
        [
            find_binary("rclone") or "rclone",
            "--config",
            str(config),
            "copy",
            source,
            str(dest),
            "--transfers",
            str(THREADS),
        ],
        check=True,
        capture_output=True,
    )


def aria2(urls: list[tuple[str, str]], dest: Path) -> None:
    """`urls`: (presigned URL, relative path) pairs."""
    listing = dest.parent / f"{dest.name}.aria2-input"
    listing.write_text("".join(f"{url}\n  out={path}\n" for url, path in urls))
    subprocess.run(
        ["aria2c", "-x16", "-s16", "-j16", "-k1M", "--file-allocation=none", "--quiet=true",
         "--console-log-level=warn", "--auto-file-renaming=false", "-d", str(dest),
         "-i", str(listing)],
        check=True,
        capture_output=True,
    )  # fmt: skip


def presigned(target: S3Target, keys: tuple[str, ...], prefix: str) -> list[tuple[str, str]]:
    client = target.client()
    return [
        (
            client.generate_presigned_url(
                "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=_PRESIGN_SECONDS
            ),
            key[len(prefix) :],
        )
        for key in keys
    ]


def measure(target: S3Target, data: Dataset, tree_prefix: str, work: Path, label: str) -> list[Row]:
    config = mounters.write_rclone_config(target, work / f"{label}.conf")
    remote = mounters.REMOTE
    dest = work / "dest"
    big = dataset.MEDIUM_KEY
    tree = data.tree_keys_under(tree_prefix)
    tree_bytes = sum(data.size_of(key) for key in tree)
    rows = [Row(f"{label}: pull of the {data.size_of(big) >> 20} MiB object", data.size_of(big))]
    rows.append(Row(f"{label}: pull of {len(tree)} files", tree_bytes, tree=True))
    big_source = f"{remote}:{BUCKET}/{big}"
    tree_source = f"{remote}:{BUCKET}/{tree_prefix}"
    rss: list[float] = []
    cpu: list[float] = []
    runs = {
        "boto3": (
            lambda: boto3_one(target, big, dest),
            lambda: boto3_tree(target, tree, tree_prefix, dest),
        ),
        "modelfs": (
            lambda: modelfs_pull(config, big_source, dest, rss, cpu),
            lambda: modelfs_pull(config, tree_source, dest),
        ),
        "rclone": (
            lambda: rclone_copy(config, big_source, dest),
            lambda: rclone_copy(config, tree_source, dest),
        ),
        "aria2": (
            lambda: aria2(presigned(target, (big,), "weights/"), dest),
            lambda: aria2(presigned(target, tree, tree_prefix), dest),
        ),
    }
    for tool, (one, many) in runs.items():
        for row, work_item in zip(rows, (one, many), strict=True):
            try:
                row.seconds[tool] = timed(work_item, dest)
            except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
                log(f"{label} {tool} {row.name}: failed: {exc}")
            else:
                log(f"{label} {tool:8} {row.name}: {row.mb_per_s(tool):.0f} MB/s")
    rows[0].rss_mib = max(rss) if rss else None
    rows[0].cpu_s = cpu[0] if cpu else None
    safe_rmtree(dest)
    return rows


def print_table(rows: list[Row], wan_link_mb_s: float | None) -> None:
    """The big file in MB/s, the trees in seconds (a tree's MB/s says little); ratios to boto3
    (for seconds, below 1 is faster)."""
    tools = ("boto3", "modelfs", "rclone", "aria2")
    print("\n| row | " + " | ".join(tools) + " |")
    print("|---|" + "---:|" * len(tools))
    for row in rows:
        in_seconds = row.tree
        unit = "s" if in_seconds else "MB/s"

        def value_of(tool: str, row: Row = row, in_seconds: bool = in_seconds) -> float | None:
            return row.seconds.get(tool) if in_seconds else row.mb_per_s(tool)

        base = value_of("boto3")
        cells = []
        for tool in tools:
            value = value_of(tool)
            if value is None:
                cells.append("—")
            elif base and tool != "boto3":
                cells.append(f"{value:.{1 if in_seconds else 0}f} ({value / base:.2f}x)")
            else:
                cells.append(f"{value:.{1 if in_seconds else 0}f}")
        print(f"| {row.name} ({unit}) | " + " | ".join(cells) + " |")
    if wan_link_mb_s is not None:
        measured = "boto3, 16 parallel 8 MiB GETs to memory"
        print(f"\nWAN link, measured ({measured}): {wan_link_mb_s:.0f} MB/s")
    print_targets(rows, wan_link_mb_s)


def print_targets(rows: list[Row], wan_link_mb_s: float | None) -> None:
    print("\n| target | measured | result |\n|---|---|---|")

    def check(name: str, value: float | None, floor: float | None) -> None:
        if value is None or floor is None:
            print(f"| {name} | not measured | — |")
            return
        verdict = "PASS" if value >= floor else "FAIL"
        print(f"| {name} | {value:.0f} >= {floor:.0f} | {verdict} |")

    loop_big, loop_tree = rows[0], rows[1]
    base = loop_big.mb_per_s("boto3")
    check("loopback 1 GiB >= 0.9x boto3", loop_big.mb_per_s("modelfs"), base and 0.9 * base)
    ours, rclone = loop_tree.seconds.get("modelfs"), loop_tree.seconds.get("rclone")
    if ours is None or rclone is None:
        print("| 2,000 files >= 2x rclone copy | not measured | — |")
    else:  # in seconds, as the table shows the trees: at most half of rclone's time
        verdict = "PASS" if ours <= rclone / 2 else "FAIL"
        print(f"| 2,000 files >= 2x rclone copy | {ours:.1f} s <= {rclone / 2:.1f} s | {verdict} |")
    if len(rows) > 2:
        wan_big = rows[2]
        link = wan_link_mb_s
        check("WAN >= 0.9x the link (measured)", wan_big.mb_per_s("modelfs"), link and 0.9 * link)
        check("WAN >= aria2c", wan_big.mb_per_s("modelfs"), wan_big.mb_per_s("aria2"))
    for row in rows:
        if row.rss_mib is not None:
            name = f"peak RSS of the pull, {row.name} (--max-memory 256M)"
            print(f"| {name} | {row.rss_mib:.0f} MiB | |")
        if row.cpu_s is not None:
            per_gib = row.cpu_s / (row.nbytes / (1 << 30))
            print(f"| CPU of the pull, {row.name} | {per_gib:.2f} CPU-s per GiB | |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--tree-files", type=int, default=2000)
    parser.add_argument("--no-wan", action="store_true")
    parser.add_argument("--data-dir", type=Path, default=Path("/var/tmp/modelfs-pullbench-data"))
    args = parser.parse_args()
    if shutil.which("aria2c") is None:
        log("aria2c is missing: apt-get install aria2 (the aria2 column stays empty)")
    cleanup = Cleanup()
    cleanup.install()
    work = Path(tempfile.mkdtemp(prefix="modelfs-pullbench-"))
    cleanup.push(f"remove {work}", lambda: safe_rmtree(work))
    try:
        spec = DatasetSpec(args.size_mib * MIB, MIB, MIB, args.tree_files)
        data = dataset.build(args.data_dir, spec, log)
        server = seaweed().SeaweedServer(work / "weed")
        server.start()
        cleanup.push("stop SeaweedFS", server.stop)
        target = S3Target(server.endpoint, BUCKET, server.access_key, server.secret_key)
        dataset.upload(
            data, target.client(), BUCKET, big_keys=(dataset.MEDIUM_KEY,),
            tree_prefix=dataset.TREE_PREFIX, log=log,
        )  # fmt: skip
        rows = measure(target, data, dataset.TREE_PREFIX, work, "loopback")
        server.stop()
        link_mb_s = None
        if not args.no_wan:
            link = WanLink(cleanup, work, WanProfile(), "auto", access_key="b", secret_key="bs")
            link.up()
            direct = dataclasses.replace(link.start_server(), bucket=BUCKET)
            dataset.upload(
                data, direct.client(), BUCKET, big_keys=(dataset.MEDIUM_KEY,),
                tree_prefix=data.tree_subset_prefix, log=log,
            )  # fmt: skip
            shaped = dataclasses.replace(direct, endpoint=link.shape())
            drop_page_cache()
            big = dataset.MEDIUM_KEY
            link_mb_s = parallel_ranged(shaped, big, data.size_of(big)).mb_per_s
            log(f"WAN link, measured: {link_mb_s:.0f} MB/s (theoretical "
                f"{THREADS * link.profile.per_connection_bytes_per_s / 1e6:.0f})")  # fmt: skip
            rows += measure(shaped, data, data.tree_subset_prefix, work, "WAN")
        print_table(rows, link_mb_s)
    finally:
        cleanup.run_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
