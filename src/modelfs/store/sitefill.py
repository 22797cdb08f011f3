"""A site cache's copy that it has not fetched yet: start the fetch once, and wait for it.

A SeaweedFS bucket that remote-mounts the origin's (docs/fleet.md) lists every origin object
at once but holds an object's bytes only after something has read it. Until then its HEAD
answers an empty ETag, and a ranged GET waits a few seconds (2 to 10, by size) for the site to
fetch the object and then streams that range from the origin itself. A fleet reading a large
file through a cold site would so pull most of it from the origin once per node.

So a mount that finds a source's copy of a large object without an ETag reads one byte of it
(the site starts fetching the whole object from its origin, once for every reader), then asks
HEAD again every `poll` seconds until the copy has an ETag: the object is in the site, read by
the whole fleet from one origin read. The wait ends after `timeout` seconds; the copy is then
read as it is (the site streams what it lacks from its origin), and a source that fails while
it is waited for fails the read there, which moves on to the next source as any failure does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from modelfs.objects import ObjectId, ObjectInfo
from modelfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)

# Below this size a copy is read at once: what the site streams from its origin for each reader
# costs less than the wait (about two seconds) for a fetch of its own.
MIN_SIZE = 4 << 20


def fetched_copy(
    store: ObjectStore,
    copy: ObjectInfo,
    *,
    name: str,
    timeout: float,
    poll: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> ObjectInfo:
    """`copy` (HEAD of `store`'s key `copy.key`) once `store` holds its bytes (see above)."""
    if copy.etag or copy.size < MIN_SIZE or timeout <= 0:
        return copy
    log.info(
        "source %s is fetching %s from its origin: waiting for it (at most %.0fs)",
        name,
        copy.key,
        timeout,
    )
    started = clock()
    store.get_range(ObjectId(copy.key, ""), 0, 1)  # makes the site fetch the whole object
    while not copy.etag:
        if clock() - started >= timeout:
            log.warning(
                "source %s has not fetched %s within %.0fs: reading it as it is",
                name,
                copy.key,
                timeout,
            )
            return copy
        sleep(poll)
        copy = store.head(copy.key)
    log.info("source %s fetched %s in %.1fs", name, copy.key, clock() - started)
    return copy
