"""Experiment only: what a cold read would cost if modelfs did not write its block cache.

Put this directory on a mount process's PYTHONPATH and set MODELFS_CEILING=no-cache-writes:
every fetched block is then reported written at once and never reaches the disk. No user
would run this (the next read of the file would go to the network again); it measures how
much of a cold read's CPU the cache writes take, i.e. an upper bound for any cheaper way of
writing them. Used by `cold_variants.py` and `cold_cpu.py`, e.g.

    python bench/experiments/cold_variants.py \
        ";PYTHONPATH=bench/experiments/ceiling,MODELFS_CEILING=no-cache-writes"
"""

from __future__ import annotations

import os
from collections.abc import Callable

if os.environ.get("MODELFS_CEILING") == "no-cache-writes":
    from modelfs import cachewriter

    def _skip_write(
        self: cachewriter.CacheWriter,
        obj: object,
        index: int,
        data: bytes,
        done: Callable[[], None],
    ) -> None:
        done()

    cachewriter.CacheWriter.submit = _skip_write  # type: ignore[assignment,method-assign]
