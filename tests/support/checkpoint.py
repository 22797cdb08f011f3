"""A many-tensor checkpoint and a stand-in app that loads it, for start profiles (replay).

`checkpoint(sizes, seed)` makes a safetensors file (8-byte header length, JSON header, tensor
data in file order). Run as a script, this module is the app:

    python checkpoint.py [--go FILE] [--every N] [--order file|shuffled] PATH...

It reads each PATH in turn: a `.safetensors` file as a loader without mmap does (the header,
then one read per tensor, in file order, or with `--order shuffled` in a fixed permutation, as
a model that loads its tensors in its own order does; with `--every N` only every Nth tensor,
as a model that loads part of a checkpoint), any other file whole. With `--go FILE` it first
waits until FILE exists (a test lets a replay finish first). It prints one JSON line: the
seconds from its first open to its last read, the wall-clock time it finished, the bytes read,
and their sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import struct
import sys
import time
from collections.abc import Sequence


def checkpoint(sizes: Sequence[int], seed: int) -> bytes:
    rng = random.Random(seed)
    header: dict[str, object] = {}
    offset = 0
    for index, size in enumerate(sizes):
        header[f"layer.{index}.weight"] = {
            "dtype": "U8",
            "shape": [size],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + rng.randbytes(offset)


def tensor_ranges(path: str) -> tuple[int, list[tuple[int, int]]]:
    """(where the data starts, [(start, end) of each tensor in file order])."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    ranges = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    return 8 + length, ranges


def load(paths: Sequence[str], every: int, shuffled: bool) -> tuple[int, str]:
    digest, total = hashlib.sha256(), 0
    for path in paths:
        if not path.endswith(".safetensors"):
            with open(path, "rb") as file:
                data = file.read()
            digest.update(data)
            total += len(data)
            continue
        base, ranges = tensor_ranges(path)
        wanted = ranges[::every]
        if shuffled:  # the model's order, not the file's: a fixed permutation
            random.Random(len(wanted)).shuffle(wanted)
        fd = os.open(path, os.O_RDONLY)
        try:
            for start, end in wanted:
                data = os.pread(fd, end - start, base + start)
                digest.update(data)
                total += len(data)
        finally:
            os.close(fd)
    return total, digest.hexdigest()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--go", default=None)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--order", choices=("file", "shuffled"), default="file")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    while args.go and not os.path.exists(args.go):
        time.sleep(0.02)
    started = time.monotonic()
    total, digest = load(args.paths, args.every, args.order == "shuffled")
    seconds = time.monotonic() - started
    figures = {"seconds": round(seconds, 3), "bytes": total, "sha256": digest}
    print(json.dumps(figures | {"finished": time.time()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
