"""Start time of an app through `modelfs run`, cold, with and without its start profile, over
the WAN profile (issue 18, item 2: target <= 0.6x with the profile).

    python bench/replay_start.py [--rounds 3] [--tensors 160] [--every 1] [--order file]
                                 [--delay-ms 20] [--rate 10e6] [--json FILE]

What it does:
1. a SeaweedFS server (tests/support/seaweed.py) holding an app's files: a many-tensor
   safetensors checkpoint (`--tensors` tensors of 256 KiB to 2 MiB, below the size at which
   a model file is fetched whole on open) and 24 small config/tokenizer files in 4 directories;
2. `wanproxy.py` in front of it on loopback: `--delay-ms` each way (40 ms RTT by default) and
   `--rate` bytes/s per connection (10 MB/s), the benchmark's WAN profile (see wan.py);
3. one `modelfs run --profile replay-bench` to record the profile (saved in the bucket at
   `.modelfs/profiles/replay-bench.json`);
4. `--rounds` times, alternating: a cold start without the profile (`--no-profile`) and one
   with it, each with a fresh cache dir and a fresh mount (so a cold page cache too).
The app (`tests/support/checkpoint.py`) reads the small files whole, then the checkpoint's
header and its tensors one by one, in file order or (`--order shuffled`) in the order a model
that does not follow the file's layout reads them (`--every N`: every Nth tensor).

Start time: from the mount answering (its log's `ready:` line) until the app has read its last
byte: `run`'s replay request, starting the app, and all of the app's reads. What comes before
(two Python processes starting, the mount's preflight) takes the same with or without a
profile; it is in "launch to done", shown beside, as is the app's own time from its first open.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.checkpoint import checkpoint  # noqa: E402
from support.seaweed import SeaweedServer  # noqa: E402

BUCKET = "replay"
PROFILE = "replay-bench"
MODEL = "models/model.safetensors"
APP = REPO / "tests" / "support" / "checkpoint.py"
WANPROXY = REPO / "bench" / "wanproxy.py"
_READY = re.compile(r"^(\S+ \S+) INFO modelfs: ready: ", re.MULTILINE)


def small_files() -> dict[str, bytes]:
    rng = random.Random(7)
    files: dict[str, bytes] = {}
    for directory in ("configs", "tokenizer", "voices", "models/extra"):
        for index in range(6):
            files[f"{directory}/file{index}.json"] = rng.randbytes(rng.randint(200, 60_000))
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_proxy(target: str, delay_ms: float, rate: float) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, str(WANPROXY), "--listen", f"127.0.0.1:{port}", "--target", target,
            "--delay-ms", str(delay_ms), "--rate", str(rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    process.stdout.readline()  # its banner: listening
    return process, f"http://127.0.0.1:{port}"


def one_start(
    work: Path, remotes: Path, paths: list[str], options: list[str], profile: bool
) -> dict[str, Any]:
    """A cold `modelfs run` of the app: its start time and the app's own figures."""
    cache, mountpoint = Path(tempfile.mkdtemp(dir=work, prefix="cache-")), work / "mnt"
    mountpoint.mkdir(exist_ok=True)
    argv = [
        sys.executable, "-m", "modelfs", "--config", str(remotes), "run",
        "--mount", f"wan:{BUCKET}", str(mountpoint), "--cache-dir", str(cache),
        "--workdir", str(work),
        *(["--profile", PROFILE] if profile else ["--no-profile"]),
        "--", sys.executable, str(APP), *options,
        *(str(mountpoint / path) for path in paths),
    ]  # fmt: skip
    launched = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        raise SystemExit(f"modelfs run failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    app = json.loads(done.stdout.strip().splitlines()[-1])
    log = (cache / "modelfs.log").read_text()
    ready = datetime.datetime.strptime(_READY.search(log)[1], "%Y-%m-%d %H:%M:%S,%f")  # type: ignore[index]
    if os.environ.get("REPLAY_BENCH_LOGS"):
        logs = Path(os.environ["REPLAY_BENCH_LOGS"])
        logs.mkdir(exist_ok=True)
        name = f"{'with' if profile else 'without'}-{cache.name}"
        (logs / f"{name}.mount.log").write_text(log)
        (logs / f"{name}.run.log").write_text(done.stderr)
    return {
        "start": app["finished"] - ready.timestamp(),
        "launch": app["finished"] - launched,
        "app": app["seconds"],
        "bytes": app["bytes"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tensors", type=int, default=160)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--order", choices=("file", "shuffled"), default="file")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=10e6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    options = ["--every", str(args.every), "--order", args.order]
    rng = random.Random(1)
    sizes = [rng.randint(256 << 10, 2 << 20) for _ in range(args.tensors)]
    smalls = small_files()
    paths = [*smalls, MODEL]
    server = SeaweedServer().start()
    proxy = None
    try:
        server.create_bucket(BUCKET)
        client = server.client()
        for key, body in smalls.items():
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
        model = checkpoint(sizes, seed=3)
        client.put_object(Bucket=BUCKET, Key=MODEL, Body=model)
        proxy, endpoint = start_proxy(server.endpoint.split("//")[1], args.delay_ms, args.rate)
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="replay-bench-") as scratch:
            work = Path(scratch)
            os.chmod(work, 0o700)
            remotes = work / "remotes.conf"
            remotes.write_text(
                f"[wan]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {server.access_key}\n"
                f"secret_access_key = {server.secret_key}\nendpoint = {endpoint}\n"
                "region = us-east-1\n"
            )
            os.chmod(remotes, 0o600)
            recording = one_start(work, remotes, paths, options, profile=True)
            print(f"recording start: {recording['start']:.2f}s", flush=True)
            rows: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
            for round_ in range(args.rounds):
                for kind in ("without", "with") if round_ % 2 == 0 else ("with", "without"):
                    row = one_start(work, remotes, paths, options, profile=kind == "with")
                    rows[kind].append(row)
                    print(f"round {round_ + 1} {kind:>7} profile: start {row['start']:.2f}s "
                          f"(launch to done {row['launch']:.2f}s, app alone {row['app']:.2f}s)",
                          flush=True)  # fmt: skip
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        server.close()

    def median(kind: str, figure: str) -> float:
        return statistics.median(row[figure] for row in rows[kind])

    read = rows["with"][0]["bytes"]
    print(
        f"\n{args.tensors} tensors ({len(model) / 2**20:.0f} MiB; every {args.every}, "
        f"{args.order} order), "
        f"{len(smalls)} small files, {read / 2**20:.1f} MiB read; WAN "
        f"{2 * args.delay_ms:.0f} ms RTT, {args.rate / 1e6:.0f} MB/s per connection; "
        f"medians of {args.rounds}:"
    )
    for figure, label in (("start", "start"), ("launch", "launch to done"), ("app", "app alone")):
        without, with_ = median("without", figure), median("with", figure)
        print(f"  {label:>14}: without {without:6.2f}s, with {with_:6.2f}s: {with_ / without:.2f}x")
    ratio = median("with", "start") / median("without", "start")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "rows": rows,
                                         "ratio": ratio}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
