"""A stand-in for an AI app (IndexTTS's webui.py) that `modelfs run` starts in tests and demos.

What it does, from its working directory:
1. reads `cache_hub/manifest.json` (a modelfs manifest, docs/manifest.md, or the short form
   {"relative/path": "sha256 hex", ...}) and every file it names through `cache_hub/`,
   checking each hash: "pass 1: verified N files";
2. optionally waits (`--wait-for FILE`: until FILE exists) and verifies everything again,
   opening every file anew: "pass 2: verified N files" (a remounted bucket must serve this);
3. appends one line to `cache_hub/../logs/app.log` (in the bucket, through the link) unless
   `--no-log`;
4. exits with `--exit-code N`.

A hash mismatch or unreadable file prints the error and exits 10: the test then knows the app,
not the supervisor, failed. Standard library only, so it runs under any Python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

EXIT_BAD_DATA = 10
_CHUNK = 1 << 20  # read like a model loader: large sequential reads
_WAIT_POLL_SECONDS = 0.05


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(cache_hub: Path) -> int:
    data = json.loads((cache_hub / "manifest.json").read_text())
    if "files" in data:  # a modelfs manifest
        data = {entry["path"]: entry["sha256"] for entry in data["files"]}
    manifest: dict[str, str] = data
    for relative, expected in sorted(manifest.items()):
        actual = sha256_of(cache_hub / relative)
        if actual != expected:
            raise ValueError(f"{relative}: sha256 {actual} != {expected}")
    return len(manifest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--wait-for", type=Path, help="verify again once this file exists")
    parser.add_argument("--no-log", action="store_true")
    parser.add_argument("--link", default="cache_hub", help="name of the link to read through")
    args = parser.parse_args()

    cache_hub = Path(args.link)
    print(f"ready pid={os.getpid()}", flush=True)
    try:
        print(f"pass 1: verified {verify(cache_hub)} files", flush=True)
        if args.wait_for is not None:
            while not args.wait_for.exists():
                time.sleep(_WAIT_POLL_SECONDS)
            print(f"pass 2: verified {verify(cache_hub)} files", flush=True)
        if not args.no_log:
            with open(cache_hub / ".." / "logs" / "app.log", "a") as log:
                log.write(f"standin pid={os.getpid()} exit={args.exit_code}\n")
            print("log written", flush=True)
    except (OSError, ValueError) as exc:
        print(f"standin: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_DATA
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
