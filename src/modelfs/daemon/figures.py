"""What a mount reports about itself: one snapshot of every part's statistics.

`MountFigures` gathers the `statistics()` of the block cache, the fetcher, the memory budget,
the namespace, the filesystem core (with its read latency), the read policy, the writer, the
store's health (`store.health`: online, offline, credentials refused) and, for a mount that
reads from several sources, the `SourceList` (bytes and fallbacks per source), taken together
on the trio thread (`serve.Mount.figures`). It is the one source of the three views of a
mount: `modelfs status` (`as_status`, the control socket's JSON), `status --watch` (the same
JSON, once a second) and `/metrics` (`daemon.metrics`), so they show the same figures and none
of them keeps counters of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from modelfs.cache.protocol import CacheStatistics
from modelfs.core.filesystem import FsStatistics
from modelfs.core.latency import LatencyStatistics
from modelfs.core.namespace import NamespaceStatistics
from modelfs.memory import BudgetStatistics
from modelfs.read.fetcher import FetcherStatistics
from modelfs.read.policy import ReadStatistics
from modelfs.store.health import StoreState, StoreStatistics
from modelfs.store.sources import SourceStatistics
from modelfs.write.queue import WriteBackStatistics


@dataclass(frozen=True, slots=True)
class MountFigures:
    pid: int
    source: str  # REMOTE:BUCKET[/PREFIX]; the one source GETs go to today
    mountpoint: str
    uptime: float  # seconds
    cache: CacheStatistics
    fetcher: FetcherStatistics
    memory: BudgetStatistics
    namespace: NamespaceStatistics
    fs: FsStatistics
    reads: ReadStatistics
    read_latency: LatencyStatistics
    writeback: WriteBackStatistics | None  # None: a read-only mount uploads nothing
    store: StoreStatistics
    read_only: bool  # refuses changes: `--read-only`, or started offline and not back yet
    sources: SourceStatistics | None = None  # None: one source (the mounted remote alone)

    @property
    def offline(self) -> bool:
        """The store cannot be reached: the mount serves its last known listings and cache."""
        return self.store.state == StoreState.OFFLINE.value

    def as_status(self) -> dict[str, Any]:
        """The JSON object `modelfs status --json` prints (and `status --watch` reads)."""
        return {
            "pid": self.pid,
            "source": self.source,
            "mountpoint": self.mountpoint,
            "uptime": round(self.uptime, 1),
            "cache": asdict(self.cache),
            "fetcher": asdict(self.fetcher),
            "memory": asdict(self.memory),
            "namespace": asdict(self.namespace),
            "fs": asdict(self.fs) | asdict(self.reads),
            "read_latency": asdict(self.read_latency),
            "writeback": asdict(self.writeback) if self.writeback is not None else None,
            "store": asdict(self.store) | {"read_only": self.read_only},
            "offline": self.offline,
            "sources": _sources(self.sources),
        }


def _sources(statistics: SourceStatistics | None) -> dict[str, Any] | None:
    """Per source, in the order read: bytes, and the reads and objects it did not serve."""
    if statistics is None:
        return None
    return {
        "order": list(statistics.by_source),
        "fallbacks": statistics.fallbacks,
        "by_source": statistics.by_source,
    }
