"""Prometheus metrics of a mount at `http://HOST:PORT/metrics` (`--metrics HOST:PORT`).

Off by default. A port alone listens on 127.0.0.1; any other host must be named, and one that
is not loopback is logged as a warning (the figures name the bucket and the mountpoint).

Nothing is counted twice: `MountCollector` turns one `MountFigures` snapshot, taken at scrape
time, into metric families (`families`); the counters are the parts' own. The HTTP server is
prometheus_client's, in a thread of its own; a scrape asks the trio thread for the snapshot
(`trio.from_thread.run_sync`), so every `statistics()` is read where it is updated, and the
trio loop only ever spends the time of one snapshot on a scrape. `MetricsServer.close` stops
the server when the mount ends (it serves on while written files are uploaded at unmount).
The registry also holds prometheus_client's process collector (RSS, CPU, open files).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

import trio
from prometheus_client import ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from modelfs.daemon.figures import MountFigures
from modelfs.errors import MountError
from modelfs.store.health import StoreState

log = logging.getLogger(__name__)

_PREFIX = "modelfs_"
# (the `reason` label, `SourceList`'s counter)
_FALLBACK_REASONS = (
    ("failure", "failures"),
    ("slow", "slow"),
    ("missing", "missing"),
    ("other_version", "other_version"),
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: where it resolves is not ours to vouch for


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_PREFIX + name, doc, value=value)


def _source_families(figures: MountFigures) -> list[Metric]:
    """Per source of a mount that reads from several: bytes, and what each did not serve (a
    read moved on: `failure`, `slow`; an object skipped: `missing`, `other_version`)."""
    if figures.sources is None:
        return []
    read = CounterMetricFamily(
        _PREFIX + "source_bytes", "Bytes read from each of the mount's sources", labels=["source"]
    )
    fallbacks = CounterMetricFamily(
        _PREFIX + "source_fallbacks",
        "Reads or objects a source did not serve, sent to the next source, by reason: failure "
        "(down, an error, a stall), slow (below --min-rate), missing, other_version",
        labels=["source", "reason"],
    )
    waits = CounterMetricFamily(
        _PREFIX + "source_fetch_waits",
        "Objects a source (a site cache) was waited for while it fetched them from its origin",
        labels=["source"],
    )
    for name, counts in figures.sources.by_source.items():
        read.add_metric([name], counts["bytes"])
        waits.add_metric([name], counts["fetch_waits"])
        for reason, counter in _FALLBACK_REASONS:
            fallbacks.add_metric([name, reason], counts[counter])
    return [read, fallbacks, waits]


def families(figures: MountFigures) -> list[Metric]:
    """The metric families of one snapshot of a mount."""
    cache, fetcher, memory, fs = figures.cache, figures.fetcher, figures.memory, figures.fs
    source = [figures.source]
    info = GaugeMetricFamily(
        _PREFIX + "mount_info", "The mount: its source and mountpoint", labels=["source", "path"]
    )
    info.add_metric([figures.source, figures.mountpoint], 1)
    fetched = CounterMetricFamily(
        _PREFIX + "fetched_bytes", "Bytes fetched from a source", labels=["source"]
    )
    fetched.add_metric(source, fetcher.bytes_fetched)
    gets = CounterMetricFamily(_PREFIX + "gets", "Ranged GETs sent to a source", labels=["source"])
    gets.add_metric(source, fetcher.gets)
    errors = CounterMetricFamily(
        _PREFIX + "store_errors",
        "Failed store requests by operation and S3 error code (else the error's class)",
        labels=["source", "operation", "code"],
    )
    for code, count in sorted(fetcher.errors.items()):
        errors.add_metric([figures.source, "get", code], count)
    upload = figures.writeback
    for code, count in sorted((upload.errors if upload else {}).items()):
        errors.add_metric([figures.source, "upload", code], count)
    latency = figures.read_latency
    cumulative, buckets = 0, []
    for bound, count in zip((*latency.bounds, float("inf")), latency.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return [
        info,
        _gauge("uptime_seconds", "Seconds since the mount started", figures.uptime),
        _gauge("offline", "1 while the store cannot be reached", int(figures.offline)),
        _gauge(
            "credentials_refused",
            "1 while the store refuses the mount's credentials",
            int(figures.store.state == StoreState.REFUSED.value),
        ),
        _counter("cache_hits", "Blocks read from the block cache", cache.hits),
        _counter("cache_misses", "Blocks not in the block cache", cache.misses),
        _counter("cache_evictions", "Blocks evicted (least recently used)", cache.evictions),
        _counter("cache_corrupt", "Cached blocks that failed their checksum", cache.corrupt),
        _gauge("cache_bytes", "Bytes in the block cache", cache.bytes),
        _gauge("cache_limit_bytes", "The block cache's size limit", cache.max_bytes),
        _gauge("cache_blocks", "Blocks in the block cache", cache.blocks),
        _gauge("cache_pinned_bytes", "Bytes of pinned blocks (never evicted)", cache.pinned_bytes),
        fetched,
        gets,
        errors,
        _counter("reads", "Read requests that reached modelfs", fs.reads),
        _counter("read_bytes", "Bytes answered to read requests", fs.bytes_read),
        HistogramMetricFamily(
            _PREFIX + "read_latency_seconds",
            "Time from a read request reaching modelfs to its answer",
            buckets=buckets,
            sum_value=latency.total,
        ),
        _gauge("open_files", "Files open on the mount", fs.open_files),
        _counter("list_requests", "LIST requests sent", figures.namespace.list_requests),
        _gauge(
            "upload_queue_files", "Written files not yet uploaded", upload.files if upload else 0
        ),
        _gauge("upload_queue_bytes", "Their bytes", upload.bytes if upload else 0),
        _gauge(
            "upload_queue_oldest_seconds",
            "Age of the oldest of them",
            upload.oldest_age if upload else 0,
        ),
        _counter("uploaded_files", "Files uploaded", upload.uploaded_files if upload else 0),
        _counter("uploaded_bytes", "Bytes uploaded", upload.uploaded_bytes if upload else 0),
        _gauge("memory_in_use_bytes", "RAM held by data in flight", memory.in_use),
        _gauge("memory_limit_bytes", "The memory budget (--max-memory)", memory.limit),
        _gauge("memory_peak_bytes", "Most RAM data in flight has held", memory.peak),
        *_source_families(figures),
    ]


class MountCollector(Collector):
    """Reads a snapshot at scrape time; nothing (an empty scrape) once the mount has ended."""

    def __init__(self, snapshot: Callable[[], MountFigures | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        figures = self._snapshot()
        return [] if figures is None else families(figures)


def from_trio(
    figures: Callable[[], MountFigures], token: trio.lowlevel.TrioToken
) -> Callable[[], MountFigures | None]:
    """`figures`, callable from another thread: it runs on the trio thread of `token`."""

    def snapshot() -> MountFigures | None:
        try:
            return trio.from_thread.run_sync(figures, trio_token=token)
        except trio.RunFinishedError:
            return None

    return snapshot


class MetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(
        cls, address: tuple[str, int], snapshot: Callable[[], MountFigures | None]
    ) -> MetricsServer:
        """Listen on `address` and serve; MountError (one line) if it cannot listen there."""
        host, port = address
        registry = CollectorRegistry(auto_describe=False)
        registry.register(MountCollector(snapshot))
        ProcessCollector(registry=registry)
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise MountError(f"cannot serve --metrics on {host}:{port}: {reason}") from exc
        shown = f"[{host}]" if ":" in host else host
        log.info("metrics at http://%s:%d/metrics", shown, port)
        if not is_loopback(host):
            log.warning(
                "--metrics %s:%d is not loopback: whoever reaches it sees this mount's figures, "
                "its bucket and mountpoint",
                host,
                port,
            )
        return cls(server, thread)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
