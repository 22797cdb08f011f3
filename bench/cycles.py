"""Measurement cycles: what runs on one fresh mount.

The runner mounts a mounter afresh (empty cache directory), drops the page cache and calls one
cycle; the cycle's first read is therefore cold. Anything "warm" inside a cycle reuses that
mount with its cache full, after dropping the page cache again.

| cycle  | loopback                                                  | WAN       |
|--------|-----------------------------------------------------------|-----------|
| seq    | cold dd (+ CPU), warm dd, hot dd, warm first byte, fio x2 | cold dd   |
| ttfb   | cold first byte                                           | same      |
| fio128 | cold fio 128 KiB                                          | same      |
| fio4   | cold fio 4 KiB                                            | same      |
| large  | cold dd of the 4 GiB object (+ CPU) + peak RSS            | -         |
| stseq  | cold dd of the safetensors file                           | -         |
| st     | cold load_file, warm load_file                            | cold only |
| tree   | ls -lR + read all, cold then warm                         | cold only |

Cold measurements that would disturb each other (a first-byte read starts a prefetch that a
following cold read would profit from) live in different cycles, hence different mounts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import dataset
import workloads
from baselines import S3Target
from dataset import Dataset
from mounters import MountedFs
from report import WAN
from sysutil import RssSampler, cpu_seconds, drop_page_cache

# Row groups selectable with --rows, and the cycles each one runs.
ROW_GROUPS = ("seq", "ttfb", "fio", "large", "safetensors", "tree")
# A read is given this long before it counts as hung: the slowest honest case is rclone's
# single stream over the WAN link (10 MB/s), so allow 2 MB/s plus start-up slack.
TIMEOUT_SLACK_S = 60.0
_SLOWEST_HONEST_BYTES_PER_S = 2e6
_SECONDS_PER_SMALL_FILE = 1.0  # before a tree walk counts as hung
_FIO_TIMEOUT_FACTOR = 3  # fio is time-based; 3x its runtime means a request hung


def read_timeout(nbytes: int) -> float:
    return TIMEOUT_SLACK_S + nbytes / _SLOWEST_HONEST_BYTES_PER_S


def describe_throughput(result: workloads.Throughput) -> str:
    return f"{result.mb_per_s:8.1f} MB/s ({result.nbytes >> 20} MiB in {result.seconds:.2f} s)"


@dataclass
class Profile:
    """One server and the objects of it that this profile reads."""

    name: str
    target: S3Target  # what mounters and boto3 use (shaped, for the WAN profile)
    data: Dataset
    tree_prefix: str
    rclone_conf: Path
    failures: dict[str, int] = field(default_factory=dict)  # mount failures in a row

    @property
    def tree_keys(self) -> tuple[str, ...]:
        return self.data.tree_keys_under(self.tree_prefix)

    @property
    def wan(self) -> bool:
        return self.name == WAN


class Recorder(Protocol):
    @property
    def groups(self) -> set[str]: ...

    @property
    def fio_runtime(self) -> int: ...

    def record(
        self,
        profile: Profile,
        row: str,
        subject: str,
        repeat: int,
        value: float,
        shown: str,
        **extra: float,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class CycleRun:
    """One cycle on one mount: where to read and how to record what was measured."""

    recorder: Recorder
    profile: Profile
    mounted: MountedFs
    repeat: int

    def path(self, key: str) -> Path:
        return self.mounted.mountpoint / key

    def value(self, row: str, value: float, shown: str, **extra: float) -> None:
        self.recorder.record(
            self.profile, row, self.mounted.name, self.repeat, value, shown, **extra
        )

    def throughput(self, row: str, result: workloads.Throughput) -> None:
        self.value(row, result.mb_per_s, describe_throughput(result))

    def millis(self, row: str, seconds: float, note: str = "") -> None:
        self.value(row, seconds * 1e3, f"{seconds * 1e3:8.1f} ms {note}".rstrip())

    def first_byte(self, row: str, key: str) -> None:
        self.millis(row, workloads.first_byte(self.path(key), TIMEOUT_SLACK_S))

    def fio(self, row: str, key: str, block: str) -> None:
        runtime = self.recorder.fio_runtime
        timeout = TIMEOUT_SLACK_S + _FIO_TIMEOUT_FACTOR * runtime
        result = workloads.fio_randread(self.path(key), block, runtime, timeout)
        shown = (
            f"{result.mb_per_s:8.1f} MB/s {result.iops:8.0f} IOPS "
            f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms"
        )
        # 4 KiB reads are counted in IOPS, 128 KiB reads in MB/s; the JSON keeps both.
        self.value(
            row,
            result.iops if block == "4k" else result.mb_per_s,
            shown,
            mb_per_s=result.mb_per_s,
            iops=result.iops,
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
        )


def cold_dd(run: CycleRun, row: str, key: str) -> None:
    """`dd` of `key` on the fresh mount: its rate under `row`, and the CPU seconds per GiB
    the mounter's processes spent meanwhile (/proc/PID/stat) under `row`_cpu."""
    pids = run.mounted.pids()
    before = cpu_seconds(pids)
    result = workloads.dd_read(run.path(key), read_timeout(run.profile.data.size_of(key)))
    per_gib = (cpu_seconds(pids) - before) / (result.nbytes / (1 << 30))
    run.throughput(row, result)
    run.value(f"{row}_cpu", per_gib, f"{per_gib:8.2f} CPU-s per GiB ({run.mounted.name})")


def cycle_seq(run: CycleRun) -> None:
    """Cold read, then (loopback) warm, hot, first byte warm and fio warm on the same mount."""
    path = run.path(dataset.MEDIUM_KEY)
    timeout = read_timeout(run.profile.data.size_of(dataset.MEDIUM_KEY))
    cold_dd(run, "seq_cold_medium", dataset.MEDIUM_KEY)
    if run.profile.wan:
        return
    drop_page_cache()
    run.throughput("seq_warm", workloads.dd_read(path, timeout))
    run.throughput("seq_hot", workloads.dd_read(path, timeout))
    if "ttfb" in run.recorder.groups:
        drop_page_cache()
        run.first_byte("ttfb_warm", dataset.MEDIUM_KEY)
    if "fio" in run.recorder.groups:
        for block, row in (("128k", "fio128_warm"), ("4k", "fio4_warm")):
            drop_page_cache()
            run.fio(row, dataset.MEDIUM_KEY, block)


def cycle_ttfb(run: CycleRun) -> None:
    run.first_byte("ttfb_cold", dataset.MEDIUM_KEY)


def cycle_fio128(run: CycleRun) -> None:
    run.fio("fio128_cold", dataset.MEDIUM_KEY, "128k")


def cycle_fio4(run: CycleRun) -> None:
    run.fio("fio4_cold", dataset.MEDIUM_KEY, "4k")


def cycle_large(run: CycleRun) -> None:
    """Cold read of the large object while sampling the mounter's memory."""
    with RssSampler(run.mounted.pids) as rss:
        cold_dd(run, "seq_cold_large", dataset.LARGE_KEY)
    run.value("rss_large", rss.peak_mib, f"{rss.peak_mib:8.0f} MiB peak RSS")


def cycle_st_seq(run: CycleRun) -> None:
    timeout = read_timeout(run.profile.data.safetensors_size)
    run.throughput("st_seq_cold", workloads.dd_read(run.path(dataset.SAFETENSORS_KEY), timeout))


def cycle_st(run: CycleRun) -> None:
    path = run.path(dataset.SAFETENSORS_KEY)
    timeout = read_timeout(run.profile.data.safetensors_size)
    run.throughput("st_cold", workloads.safetensors_load(path, timeout))
    if run.profile.wan:
        return
    drop_page_cache()
    run.throughput("st_warm", workloads.safetensors_load(path, timeout))


def cycle_tree(run: CycleRun) -> None:
    """ls -lR, then read every file (the listing is warm by then, the data is not)."""
    root = run.path(run.profile.tree_prefix.rstrip("/"))
    files = len(run.profile.tree_keys)
    timeout = TIMEOUT_SLACK_S + files * _SECONDS_PER_SMALL_FILE
    for phase in ("cold",) if run.profile.wan else ("cold", "warm"):
        if phase == "warm":
            drop_page_cache()
        run.millis(f"ls_{phase}", workloads.list_recursive(root, timeout))
        run.millis(f"tree_{phase}", workloads.read_tree(root, timeout, files), f"({files} files)")


CYCLES: dict[str, tuple[str, Callable[[CycleRun], None]]] = {
    # name: (row group, function), in the order they run
    "seq": ("seq", cycle_seq),
    "ttfb": ("ttfb", cycle_ttfb),
    "fio128": ("fio", cycle_fio128),
    "fio4": ("fio", cycle_fio4),
    "large": ("large", cycle_large),
    "stseq": ("safetensors", cycle_st_seq),
    "st": ("safetensors", cycle_st),
    "tree": ("tree", cycle_tree),
}
WAN_CYCLES = frozenset({"seq", "ttfb", "fio128", "fio4", "st", "tree"})


def cycles_for(groups: set[str], wan: bool) -> list[str]:
    return [
        name
        for name, (group, _) in CYCLES.items()
        if group in groups and (name in WAN_CYCLES or not wan)
    ]
