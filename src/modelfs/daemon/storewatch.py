"""Serving through an outage: the store's probes, the metadata snapshot, and the way back.

`start_offline` is how a mount whose store cannot be reached at mount time starts: from the
metadata snapshot of its prefix (`daemon.snapshot`), or not at all (the store's error).

`StoreWatch.run` runs in the mount's nursery for the life of the mount (`daemon.serve` owns
it) and, every `TICK`:
- sends a probe (`GuardedStore.check_bucket`, in a worker thread) when the store's health asks
  for one (`StoreHealth.probe_due`: after a failed or stalled request, and every few seconds
  while the store is offline or refuses our keys); the health logs each change of state;
- once the store answers, opens the writer of a mount that started offline for writes (its
  `GatedWriter`, only there if the mount was asked to be writable);
- when credentials are renewed (refused keys accepted again, `StoreHealth.renewals`, or new
  keys in the config file, `keys_changes`), has the writer try the uploads and deletes that
  failed for good once more (`Writer.retry_failed`): a 403 is final for the queue, but not
  after the keys changed;
- saves the metadata snapshot when the namespace's last known listings changed, at most
  every `SNAPSHOT_INTERVAL`, and once more at unmount (`save_now`).

Everything but the probe and the snapshot's file I/O runs on the trio thread; `_saving` keeps
two saves (the periodic one, the one at unmount) from overlapping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from modelfs.core.namespace import Namespace
from modelfs.daemon.snapshot import SnapshotFile
from modelfs.errors import ModelfsError, StoreUnavailable
from modelfs.store.guarded import GuardedStore
from modelfs.store.health import StoreState
from modelfs.write.gate import GatedWriter
from modelfs.write.protocol import Writer

log = logging.getLogger(__name__)

TICK = 0.5  # seconds between two looks at the health and the listings
SNAPSHOT_INTERVAL = 10.0  # at most one snapshot write this often


def start_offline(
    namespace: Namespace,
    snapshot: SnapshotFile,
    offline: StoreUnavailable,
    source: str,
    *,
    read_only: bool,
) -> str:
    """Give `namespace` the snapshot's listings; the warning for the user. Raises `offline`
    when there is no usable snapshot (the mount then fails as the store did)."""
    loaded = snapshot.load(namespace.dir_prefix)
    if loaded is None:
        raise offline
    namespace.restore(loaded.listings)
    written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(loaded.written))
    then = "" if read_only else "; read-write once the store answers"
    warning = (
        f"{offline}: serving {source} read-only from its metadata snapshot of {written},"
        f" data from the cache only{then}"
    )
    log.warning("%s", warning)
    return warning


class StoreWatch:
    def __init__(
        self,
        store: GuardedStore,
        namespace: Namespace,
        snapshot: SnapshotFile,
        writer: Writer,
        *,
        gate: GatedWriter | None = None,
        keys_changes: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._snapshot = snapshot
        self._writer = writer
        self._gate = gate
        self._keys_changes = keys_changes or (lambda: 0)
        self._clock = clock
        self._renewed = self._renewal()
        self._saved_generation = namespace.generation
        self._saved_at = -float("inf")
        self._saving = trio.Lock()

    async def run(self) -> None:
        """Until cancelled (see the module docstring)."""
        health = self._store.health
        while True:
            if health.probe_due():
                await trio.to_thread.run_sync(self._probe)
            if self._gate is not None and health.state is StoreState.ONLINE:
                self._gate.open_for_writes()
                self._gate = None
                log.warning("the store answers: the mount is read-write now")
            self._retry_if_renewed()
            changed = self._namespace.generation != self._saved_generation
            if changed and self._clock() - self._saved_at >= SNAPSHOT_INTERVAL:
                await self.save_now()
            await trio.sleep(TICK)

    def _renewal(self) -> tuple[int, int]:
        return self._store.health.renewals, self._keys_changes()

    def _retry_if_renewed(self) -> None:
        renewal = self._renewal()
        if renewal == self._renewed:
            return
        self._renewed = renewal
        stats = self._writer.statistics()
        if stats is not None and stats.failures:
            log.warning(
                "credentials renewed: trying the %d upload(s) and delete(s) refused before again",
                len(stats.failures),
            )
            self._writer.retry_failed()

    def _probe(self) -> None:
        """Worker thread: one probe; the health takes its outcome."""
        try:
            self._store.check_bucket()
        except ModelfsError as exc:
            log.debug("probe of the store: %s", exc)

    async def save_now(self) -> None:
        """Save the snapshot if the listings changed since the last save (also at unmount)."""
        async with self._saving:
            generation = self._namespace.generation
            if generation == self._saved_generation:
                return
            listings = self._namespace.known()  # on this thread: the namespace is its
            self._saved_at = self._clock()
            try:
                count = await trio.to_thread.run_sync(self._snapshot.save, listings)
            except (OSError, ModelfsError) as exc:
                log.warning("cannot save the metadata snapshot %s: %s", self._snapshot.path, exc)
                return
            self._saved_generation = generation
            log.debug("metadata snapshot: %d directories in %s", count, self._snapshot.path)
