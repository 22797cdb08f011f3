"""Measurements that must run in their own process: first byte, safetensors load, tree read.

Each runs in a child so that a mount that hangs can be killed with its reader (the parent
enforces a timeout), and so the benchmark's own memory is not charged with 1 GiB of tensors.
The child times only the work itself, not its own start-up, and prints one JSON object.

    python probe.py first-byte FILE     {"seconds": open + read of the first 4 KiB}
    python probe.py safetensors FILE    {"seconds": ..., "tensors": N, "bytes": B}
    python probe.py read-tree DIR       {"seconds": ..., "files": N, "bytes": B}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

_FIRST_BYTES = 4096
_READ_CHUNK = 1 << 20  # reads as `cat` would issue them for a small file: one call


def first_byte(path: Path) -> dict[str, float]:
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, _FIRST_BYTES)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    if not data:
        raise SystemExit(f"{path}: empty read")
    return {"seconds": elapsed}


def safetensors_load(path: Path) -> dict[str, float]:
    # Imported here: numpy + safetensors take ~0.2 s to import, which is not the load.
    from safetensors.numpy import load_file

    start = time.perf_counter()
    tensors = load_file(str(path))  # safe_open, mmap backend, every tensor copied out
    elapsed = time.perf_counter() - start
    total = sum(array.nbytes for array in tensors.values())
    return {"seconds": elapsed, "tensors": len(tensors), "bytes": total}


def read_tree(root: Path) -> dict[str, float]:
    files = total = 0
    start = time.perf_counter()
    for directory, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb", buffering=0) as handle:
                while chunk := handle.read(_READ_CHUNK):
                    total += len(chunk)
            files += 1
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "files": files, "bytes": total}


_PROBES = {"first-byte": first_byte, "safetensors": safetensors_load, "read-tree": read_tree}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in _PROBES:
        print(f"usage: probe.py {{{','.join(_PROBES)}}} PATH", file=sys.stderr)
        return 2
    print(json.dumps(_PROBES[argv[0]](Path(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
