"""One node of the fleet simulation, run inside its namespace: mount, load, check, report.

    ip netns exec NS python bench/fleetnode.py --config C --spec origin:models/llama \\
        --mountpoint M --cache-dir D --files config.json model.safetensors \\
        --xxh3 HEX --result R -- [modelfs mount options]

1. `modelfs mount --daemon` (returns once the mount answers; the clock starts before it);
2. the loader: each file read in order, as a model loader reads it (the small config first,
   then the model in 8 MiB reads), every byte through one xxh3-128, whose digest must be the
   model's (computed when it was made): byte-exact or not;
3. `modelfs status --json` (where the bytes came from), then `modelfs unmount`.
The result (JSON in R): seconds to mount, to load, in all (the cold start), bytes, whether
they were exact, the mount's source counters, and its first warning lines. Exit status 0 only
if byte-exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import xxhash

_READ = 8 << 20


def modelfs(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load(mountpoint: Path, files: list[str]) -> tuple[int, str]:
    """Read `files` in order; (bytes read, xxh3-128 of the last file)."""
    total, digest = 0, ""
    buffer = bytearray(_READ)
    view = memoryview(buffer)
    for name in files:
        hasher = xxhash.xxh3_128()
        with open(mountpoint / name, "rb", buffering=0) as file:
            while got := file.readinto(buffer):
                hasher.update(view[:got])
                total += got
        digest = hasher.hexdigest()
    return total, digest


def warnings(log: Path, most: int = 20) -> list[str]:
    """The mount's first warning and error lines (why a source was left, for one)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if " WARNING " in line or " ERROR " in line][:most]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--mountpoint", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--files", nargs="+", required=True, help="read in order; model last")
    parser.add_argument("--xxh3", required=True, help="xxh3-128 of the last file")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("options", nargs="*", help="after --: modelfs mount options")
    args = parser.parse_args(argv)
    args.mountpoint.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"exact": False, "error": None}
    started = time.monotonic()
    mounted = modelfs(
        "--config", args.config, "mount", "--daemon", "--cache-dir", str(args.cache_dir),
        *args.options, args.spec, str(args.mountpoint),
    )  # fmt: skip
    result["mount_s"] = time.monotonic() - started
    if mounted.returncode != 0:
        result["error"] = f"mount: {mounted.stderr.strip()}"
        write_atomically(args.result, json.dumps(result))
        return 1
    try:
        total, digest = load(args.mountpoint, args.files)
        result["cold_start_s"] = time.monotonic() - started
        result["load_s"] = result["cold_start_s"] - result["mount_s"]
        result["bytes"] = total
        result["exact"] = digest == args.xxh3
        if not result["exact"]:
            result["error"] = f"xxh3-128 {digest}, not {args.xxh3}"
    except OSError as exc:
        result["error"] = f"read: {exc}"
    finally:
        status = modelfs("status", "--json", str(args.mountpoint), timeout=30)
        if status.returncode == 0:
            answer = json.loads(status.stdout)
            result["sources"] = answer.get("sources")
            result["verified"] = answer.get("fs", {}).get("verified")
        modelfs("unmount", str(args.mountpoint), timeout=60)
        result["warnings"] = warnings(args.cache_dir / "modelfs.log")
        write_atomically(args.result, json.dumps(result))
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
