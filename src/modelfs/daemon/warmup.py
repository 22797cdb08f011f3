"""The mount's warm-up: pay the first-request costs before the app asks.

Right after mounting: the root's listing, a connection in the pool and the client's
first-call setup of a GET (a GET of a key nobody should create: any answer, 404 included, has
warmed the connection and the client), then the listings of the root's first `WARM_UP_DIRS`
directories (`cache_hub/`, `checkpoints/`: where an app's first model file is). An app started
right after the mount then finds its first lookups in memory.

Every listing is delimited (one request per directory, however big the bucket): a lookup
arriving meanwhile waits for it. `ls -lR` loses nothing: a directory it opens whose
subdirectories are not cached still lists its whole subtree (see `core.namespace`).
"""

from __future__ import annotations

import contextlib
import logging

import trio

from modelfs.core.namespace import Namespace
from modelfs.errors import ModelfsError
from modelfs.read.fetcher import BlockFetcher

log = logging.getLogger(__name__)

WARM_UP_NAME = ".modelfs-warm-up-probe"  # under the mount's prefix
WARM_UP_DIRS = 16  # the root's directories listed at mount: a few requests, in parallel


async def warm_up(namespace: Namespace, fetcher: BlockFetcher) -> None:
    """Never raises: the app's own requests report what fails here."""
    try:
        root = await namespace.listing("")
        await fetcher.warm_up(namespace.dir_prefix("") + WARM_UP_NAME)
        async with trio.open_nursery() as nursery:
            for name in sorted(root.dirs)[:WARM_UP_DIRS]:
                nursery.start_soon(_list_quietly, namespace, name)
    except ModelfsError as exc:
        log.debug("warm-up failed: %s", exc)


async def _list_quietly(namespace: Namespace, path: str) -> None:
    with contextlib.suppress(ModelfsError):
        await namespace.listing(path)
