"""Write throughput: a 1 GiB file written through a mount until it is in the bucket.

Not a test: run by hand as root (`python bench/writes.py [--size-mib 1024]`). One run prints one
table: boto3 `upload_file` of the file (the baseline), modelfs (`cp` into the mount, then
`modelfs sync`), and rclone mount `--vfs-cache-mode writes` (`cp`, then until the object is in
the bucket at full size). "end to end" is from the start of `cp` until the bucket has the bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import SeaweedServer  # noqa: E402

MiB = 1 << 20
BUCKET = "writebench"


def object_size(server: SeaweedServer, key: str) -> int:
    try:
        size: int = server.client().head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    except Exception:
        return -1
    return size


def timed_copy(source: Path, target: Path) -> float:
    started = time.monotonic()
    subprocess.run(["cp", str(source), str(target)], check=True)
    return time.monotonic() - started


def bench_boto3(server: SeaweedServer, source: Path) -> float:
    started = time.monotonic()
    server.client().upload_file(str(source), BUCKET, "boto3.bin")
    return time.monotonic() - started


def bench_modelfs(
    server: SeaweedServer, source: Path, work: Path, config: Path
) -> tuple[float, float]:
    mountpoint = work / "modelfs-mnt"
    mountpoint.mkdir()
    modelfs = [sys.executable, "-m", "modelfs", "--config", str(config)]
    subprocess.run(
        [*modelfs, "mount", "--daemon", "--write-back", "0s", "--cache-dir", str(work / "mc"),
         f"bench:{BUCKET}", str(mountpoint)],
        check=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        copy = timed_copy(source, mountpoint / "modelfs.bin")
        subprocess.run([*modelfs, "sync", str(mountpoint)], check=True)
        total = time.monotonic() - started
    finally:
        subprocess.run([*modelfs, "unmount", str(mountpoint)], check=False)
    assert object_size(server, "modelfs.bin") == source.stat().st_size
    return copy, total


def bench_rclone(
    server: SeaweedServer, source: Path, work: Path, config: Path
) -> tuple[float, float]:
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    mountpoint = work / "rclone-mnt"
    mountpoint.mkdir()
    process = subprocess.Popen(
        [rclone, "--config", str(config), "mount", f"bench:{BUCKET}", str(mountpoint),
         "--vfs-cache-mode", "writes", "--cache-dir", str(work / "rc")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if time.monotonic() > deadline:
                raise RuntimeError("rclone did not mount")
            time.sleep(0.1)
        started = time.monotonic()
        copy = timed_copy(source, mountpoint / "rclone.bin")
        while object_size(server, "rclone.bin") != source.stat().st_size:
            time.sleep(0.05)
        total = time.monotonic() - started
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        process.terminate()
        process.wait(30)
    return copy, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="modelfs-writebench-"))
    try:
        source = work / "source.bin"
        with source.open("wb") as file:
            chunk = os.urandom(64 * MiB)
            for _ in range(size // len(chunk)):
                file.write(chunk)
        with SeaweedServer(work / "seaweed") as server:
            server.create_bucket(BUCKET)
            config = work / "rclone.conf"
            config.write_text(
                f"[bench]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {server.access_key}\n"
                f"secret_access_key = {server.secret_key}\nendpoint = {server.endpoint}\n"
                "region = us-east-1\n"
            )
            boto3_s = bench_boto3(server, source)
            modelfs_copy, modelfs_total = bench_modelfs(server, source, work, config)
            rclone_copy, rclone_total = bench_rclone(server, source, work, config)
        mb = size / 1e6
        print(f"\n{args.size_mib} MiB written until it is in the bucket (MB/s; ratio to boto3)\n")
        print("| writer | cp returns | end to end |")
        print("|---|---:|---:|")
        print(f"| boto3 upload_file | | {mb / boto3_s:.0f} (1.00x) |")
        for name, copy, total in (
            ("modelfs (write-back, then `modelfs sync`)", modelfs_copy, modelfs_total),
            ("rclone mount --vfs-cache-mode writes", rclone_copy, rclone_total),
        ):
            print(f"| {name} | {mb / copy:.0f} | {mb / total:.0f} ({boto3_s / total:.2f}x) |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
