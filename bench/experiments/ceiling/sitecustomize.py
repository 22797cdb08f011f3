"""Experiment only: what parts of the block cache's writes cost a cold read.

Put this directory on a mount process's PYTHONPATH and set MODELFS_CEILING to one of:

- `no-cache-writes`: every fetched block is reported written at once and never reaches the
  disk. No user would run this (the next read of the file would go to the network again); it
  measures how much of a cold read's CPU the cache writes take, i.e. an upper bound for any
  cheaper way of writing them;
- `no-rename`: each block file is written in place instead of to a temporary name that is
  then renamed (a crash could leave a torn block under its real name);
- `no-checksum`: the block header's checksum is written as 0 (every later read in another
  process would find the block corrupt).

Used with `cold_variants.py` and `cold_cpu.py`, e.g.

    python bench/experiments/cold_variants.py \
        ";PYTHONPATH=bench/experiments/ceiling,MODELFS_CEILING=no-cache-writes"
"""

from __future__ import annotations

import os
from collections.abc import Callable

_VARIANT = os.environ.get("MODELFS_CEILING", "")

if _VARIANT == "no-cache-writes":
    from modelfs.cache import writer as cachewriter

    def _skip_write(
        self: cachewriter.CacheWriter,
        obj: object,
        index: int,
        data: bytes,
        done: Callable[[], None],
    ) -> None:
        done()

    cachewriter.CacheWriter.submit = _skip_write  # type: ignore[assignment,method-assign]

elif _VARIANT == "no-rename":
    from modelfs.cache import blockfile, tree

    def _write_in_place(
        self: tree.BlockTree, name: blockfile.BlockName, payload: bytes, mtime: float
    ) -> blockfile.Stamp:
        path = self.block_path(name)
        return self.writer.write(path, blockfile.encode_header(name, payload), payload, mtime)

    tree.BlockTree.write = _write_in_place  # type: ignore[method-assign]

elif _VARIANT == "no-checksum":
    from modelfs.cache import blockfile

    blockfile.checksum = lambda prefix, payload: 0
