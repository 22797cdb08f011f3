"""Serving through an outage: the store's probes, the metadata snapshot, and the way back.

`StoreWatch.run` runs in the mount's nursery for the life of the mount (`daemon.serve` owns
it) and, every `TICK`:
- sends a probe (`GuardedStore.check_bucket`, in a worker thread) when the store's health asks
  for one (`StoreHealth.probe_due`: after a failed or stalled request, and every few seconds
  while the store is offline or refuses our keys); the health logs each change of state;
- saves the metadata snapshot (`daemon.snapshot`) when the namespace's last known listings
  changed, at most every `SNAPSHOT_INTERVAL`, and once more at unmount (`save_now`);
- tells the mount once the store answers (`on_online`), which opens a mount that started
  offline for writes, if it was asked to be writable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from modelfs.core.namespace import DirListing, Namespace
from modelfs.daemon.snapshot import SnapshotFile
from modelfs.errors import ModelfsError
from modelfs.store.guarded import GuardedStore
from modelfs.store.health import StoreState

log = logging.getLogger(__name__)

TICK = 0.5  # seconds between two looks at the health and the listings
SNAPSHOT_INTERVAL = 10.0  # at most one snapshot write this often


class StoreWatch:
    def __init__(
        self,
        store: GuardedStore,
        namespace: Namespace,
        snapshot: SnapshotFile,
        *,
        on_online: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._snapshot = snapshot
        self._on_online = on_online
        self._clock = clock
        self._saved_generation = namespace.generation
        self._saved_at = -float("inf")

    async def run(self) -> None:
        """Until cancelled (see the module docstring)."""
        health = self._store.health
        while True:
            if health.probe_due():
                await trio.to_thread.run_sync(self._probe)
            if self._on_online is not None and health.state is StoreState.ONLINE:
                on_online, self._on_online = self._on_online, None
                on_online()
            generation = self._namespace.generation
            due = self._clock() - self._saved_at >= SNAPSHOT_INTERVAL
            if generation != self._saved_generation and due:
                listings = self._namespace.known()  # on this thread: the namespace is its
                await trio.to_thread.run_sync(self._save, listings, generation)
            await trio.sleep(TICK)

    def _probe(self) -> None:
        """Worker thread: one probe; the health takes its outcome."""
        try:
            self._store.check_bucket()
        except ModelfsError as exc:
            log.debug("probe of the store: %s", exc)

    def save_now(self) -> None:
        """Save the snapshot now if the listings changed since the last save (at unmount)."""
        self._save(self._namespace.known(), self._namespace.generation)

    def _save(self, listings: list[tuple[str, DirListing]], generation: int) -> None:
        if generation == self._saved_generation:
            return
        self._saved_at = self._clock()
        try:
            count = self._snapshot.save(listings)
        except OSError as exc:
            log.warning("cannot save the metadata snapshot %s: %s", self._snapshot.path, exc)
            return
        self._saved_generation = generation
        log.debug("metadata snapshot: %d directories in %s", count, self._snapshot.path)
