"""Cold `dd` through the WAN proxy on loopback, several source trees interleaved.

    python bench/experiments/wan_dd.py SRC [SRC ...]

Starts its own SeaweedFS with a 1 GiB object (KEY, default big.dat; a model suffix such as
big.bin also starts the whole-object fetch) and `bench/wanproxy.py` in front of it (20 ms each
way, 10 MB/s per connection: the benchmark's WAN profile without its network namespace). Each
repeat (REPS, default 2) first measures the link as 16 parallel 8 MiB ranged GETs with boto3,
then, for each `src/` directory, mounts it (PYTHONPATH) on an empty cache after dropping the
page cache and times `dd bs=1M` of the object: MB/s and the mount's CPU seconds. The mount logs
at DEBUG, and the probe's decisions on how many background GETs run (`read/concurrency.py`)
are printed under each run. Env BOTO_ONLY=1: only the boto3 runs, twice per repeat (does the
link hold up over a run?). Env PULL="OPTIONS": `modelfs pull OPTIONS` of the object into an
empty directory instead of the mount's `dd` (wall time to exit, CPU of the pull). Env DIRECT=1:
no proxy, straight to the server on loopback. A SRC may carry options of its own after a `|`
(`"src|--transfers 32"`): added to the mount's, or to PULL's. A pull's peak RSS is printed
too (`/usr/bin/time`). Run as root.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from _common import SeaweedServer, mounted, serving
from botocore.config import Config
from cold_cpu import cpu_seconds

REPO = Path(__file__).resolve().parents[2]
SIZE = 1 << 30
PART = 8 << 20
REPS = int(os.environ.get("REPS", "2"))
KEY = os.environ.get("KEY", "big.dat")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drop_page_cache() -> None:
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)


def boto3_link(server: SeaweedServer, endpoint: str) -> Callable[[], float]:
    """A measurement of the link: MB/s of 16 parallel ranged GETs of 8 MiB over the object."""

    def measure() -> float:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name="us-east-1",
            config=Config(max_pool_connections=32),
        )

        def get(offset: int) -> None:
            byte_range = f"bytes={offset}-{offset + PART - 1}"
            body = client.get_object(Bucket="perf", Key=KEY, Range=byte_range)["Body"]
            while body.read(1 << 20):
                pass

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(get, range(0, SIZE, PART)))
        client.close()
        return SIZE / 1e6 / (time.monotonic() - started)

    return measure


def dd_once(src: str, remotes: Path, work: Path) -> None:
    src, _, extra = src.partition("|")
    os.environ["PYTHONPATH"] = src
    drop_page_cache()
    log = work / "mount.log"
    options = ["--log-level", "DEBUG", "--log-file", str(log), *extra.split()]
    with mounted(remotes, work, options) as mountpoint:
        found = subprocess.run(
            ["pgrep", "-f", f"modelfs.*{mountpoint}"], capture_output=True, text=True, check=True
        )
        pid = int(found.stdout.split()[0])
        cpu, started = cpu_seconds(pid), time.monotonic()
        command = ["dd", f"if={mountpoint}/{KEY}", "of=/dev/null", "bs=1M"]
        subprocess.run(command, capture_output=True, check=True)
        seconds = time.monotonic() - started
        print(
            f"{src}: {SIZE / 1e6 / seconds:.1f} MB/s, {cpu_seconds(pid) - cpu:.2f} CPU-s",
            flush=True,
        )
    for line in log.read_text().splitlines():
        if "background GETs" in line:
            print("   ", line[11:23], line.split(": ", 1)[1])
    log.unlink()


def pull_once(src: str, remotes: Path, work: Path, options: list[str]) -> None:
    src, _, extra = src.partition("|")
    options = [*options, *extra.split()]
    dest = work / "dest"
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    drop_page_cache()
    command = ["/usr/bin/time", "-f", "peak RSS %M KiB", sys.executable, "-m", "modelfs"]
    command += ["--config", str(remotes), "pull", *options]
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    done = subprocess.run(
        [*command, f"t:perf/{KEY}", str(dest)], check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": src},
    )  # fmt: skip
    seconds, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    rss = int(done.stderr.rsplit("peak RSS ", 1)[1].split()[0]) >> 10
    print(
        f"{src} pull {' '.join(options)}: {SIZE / 1e6 / seconds:.1f} MB/s, {cpu:.2f} CPU-s, "
        f"peak RSS {rss} MiB"
    )


def main(sources: list[str]) -> None:
    with serving(KEY, SIZE) as (server, work, remotes):
        port, proxy_port = server.endpoint.rsplit(":", 1)[1], free_port()
        proxy = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "wanproxy.py"), "--listen",
             f"127.0.0.1:{proxy_port}", "--target", f"127.0.0.1:{port}", "--delay-ms", "20",
             "--rate", "10000000"]
        )  # fmt: skip
        time.sleep(1)
        endpoint = server.endpoint if os.environ.get("DIRECT") else f"http://127.0.0.1:{proxy_port}"
        remotes.write_text(remotes.read_text().replace(server.endpoint, endpoint))
        link = boto3_link(server, endpoint)
        try:
            for _ in range(REPS):
                if os.environ.get("BOTO_ONLY"):
                    print(f"boto3 16x8MiB: {link():.1f} then {link():.1f} MB/s", flush=True)
                    drop_page_cache()
                    continue
                print(f"boto3 16x8MiB: {link():.1f} MB/s", flush=True)
                for src in sources:
                    if "PULL" in os.environ:
                        pull_once(src, remotes, work, os.environ["PULL"].split())
                    else:
                        dd_once(src, remotes, work)
        finally:
            proxy.terminate()
            proxy.wait()


if __name__ == "__main__":
    main(sys.argv[1:] or [str(REPO / "src")])
