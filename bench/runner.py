"""The run: per profile, per repeat, the baselines and then each mounter through its cycles.

Order inside a repeat: boto3 and local baselines first, then the mounters one after another
(each through all its cycles). Repeats are the outer loop, so a slow patch of the shared
machine lands on every mounter rather than on one.

A mounter that fails to mount twice in a row is skipped for the rest of the profile (one
line says so); a measurement that fails (timeout, error) is listed under "Failures" and the
run goes on with the next cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import baselines
import dataset
import mounters
import workloads
from baselines import S3Target
from cycles import (
    CYCLES,
    CycleRun,
    Profile,
    cycles_for,
    describe_throughput,
    read_timeout,
)
from dataset import Dataset, DatasetSpec
from mounters import MountedFs, Mounter, MountError
from report import BOTO3, LOCAL, LOOPBACK, WAN, Results
from seaweed_support import seaweed
from sysutil import Cleanup, drop_page_cache, log, safe_rmtree
from wan import WanLink, WanProfile

BUCKET = "modelfs-bench"
# Over the WAN link a single stream of the whole object would take minutes and says nothing
# new (it is the per-connection cap): boto3's single stream reads only this prefix there.
_WAN_SINGLE_STREAM_BYTES = 64 << 20
_MAX_MOUNT_FAILURES = 2


@dataclass
class Options:
    spec: DatasetSpec
    quick: bool
    repeat: int
    wan_repeat: int
    fio_runtime: int
    mounters: list[str]
    groups: set[str]
    wan: bool
    loopback: bool
    wan_emulator: str
    workdir: Path
    data_dir: Path
    results_dir: Path
    command: str
    remove_workdir: bool
    complete: bool  # every mounter, row group and profile: comparable with other full runs


@dataclass(frozen=True, slots=True)
class WanInfo:
    profile: str
    method: str
    theoretical_mb_per_s: float  # 16 connections x the per-connection cap
    link_limit: str = "measured: boto3, 16 parallel ranged GETs of 8 MiB (the boto3 column)"


class Bench:
    def __init__(self, options: Options, cleanup: Cleanup) -> None:
        self.o = options
        self.cleanup = cleanup
        self.results = Results()
        self._mount_serial = 0

    # -- the Recorder protocol of cycles.py ----------------------------------------------------

    @property
    def groups(self) -> set[str]:
        return self.o.groups

    @property
    def fio_runtime(self) -> int:
        return self.o.fio_runtime

    def record(
        self,
        profile: Profile,
        row: str,
        subject: str,
        repeat: int,
        value: float,
        shown: str,
        **extra: float,
    ) -> None:
        self.results.add(profile.name, row, subject, repeat, value, **extra)
        log(f"  {profile.name} r{repeat} {subject:15s} {row:16s} {shown}")

    def record_each(
        self,
        profile: Profile,
        rows: tuple[str, ...],
        subject: str,
        repeat: int,
        value: float,
        shown: str,
    ) -> None:
        """The same reference figure under several rows (e.g. boto3 for cold, warm and hot)."""
        for row in rows:
            self.record(profile, row, subject, repeat, value, shown)

    def fail(self, message: str) -> None:
        self.results.failures.append(message)
        log(f"FAILED {message}")

    # -- baselines ---------------------------------------------------------------------------

    def boto3_best(self, profile: Profile, key: str, rows: tuple[str, ...], repeat: int) -> None:
        size = profile.data.size_of(key)
        limit = _WAN_SINGLE_STREAM_BYTES if profile.wan else None
        drop_page_cache()
        single = baselines.single_stream(profile.target, key, limit)
        drop_page_cache()
        parallel = baselines.parallel_ranged(profile.target, key, size)
        # Over WAN the single stream read only a prefix: it cannot be "best" there.
        best = parallel if limit else max(single, parallel, key=lambda t: t.mb_per_s)
        for subject, result in (
            (f"{BOTO3}-1stream", single),
            (f"{BOTO3}-16x8MiB", parallel),
            (BOTO3, best),
        ):
            self.record_each(
                profile, rows, subject, repeat, result.mb_per_s, describe_throughput(result)
            )

    def run_baselines(self, profile: Profile, repeat: int) -> None:
        log(f"{profile.name} repeat {repeat}: baselines")
        groups, wan = self.o.groups, profile.wan

        def rows(*loopback_rows: str) -> tuple[str, ...]:
            """The rows a reference figure serves; over WAN only the cold one exists."""
            return loopback_rows if not wan else tuple(r for r in loopback_rows if "cold" in r)

        if groups & {"seq", "ttfb", "fio"}:
            medium_rows = rows("seq_cold_medium", "seq_warm", "seq_hot")
            self.boto3_best(profile, dataset.MEDIUM_KEY, medium_rows, repeat)
        if "large" in groups and not wan:
            self.boto3_best(profile, dataset.LARGE_KEY, ("seq_cold_large",), repeat)
        if "safetensors" in groups:
            st_rows = rows("st_cold", "st_warm") if wan else ("st_seq_cold", "st_cold", "st_warm")
            self.boto3_best(profile, dataset.SAFETENSORS_KEY, st_rows, repeat)
        if groups & {"seq", "ttfb"}:
            seconds = baselines.first_byte(profile.target, dataset.MEDIUM_KEY)
            shown = f"{seconds * 1e3:8.1f} ms"
            self.record_each(
                profile, rows("ttfb_cold", "ttfb_warm"), BOTO3, repeat, seconds * 1e3, shown
            )
        if "tree" in groups:
            seconds, count = baselines.list_all(profile.target, profile.tree_prefix)
            shown = f"{seconds * 1e3:8.1f} ms ({count} keys)"
            self.record_each(
                profile, rows("ls_cold", "ls_warm"), BOTO3, repeat, seconds * 1e3, shown
            )
            seconds = baselines.get_each(profile.target, profile.tree_keys)
            shown = f"{seconds * 1e3:8.1f} ms ({len(profile.tree_keys)} GETs)"
            self.record_each(
                profile, rows("tree_cold", "tree_warm"), BOTO3, repeat, seconds * 1e3, shown
            )
        if not wan:
            self.local_baselines(profile, repeat)

    def local_baselines(self, profile: Profile, repeat: int) -> None:
        """The local disk copy: dd with the page cache dropped (the warm reference) and
        kept (hot); load_file with the page cache dropped."""
        if "seq" in self.o.groups:
            path = profile.data.local(dataset.MEDIUM_KEY)
            timeout = read_timeout(path.stat().st_size)
            drop_page_cache()
            for row in ("seq_warm", "seq_hot"):
                result = workloads.dd_read(path, timeout)
                self.record(
                    profile, row, LOCAL, repeat, result.mb_per_s, describe_throughput(result)
                )
        if "safetensors" in self.o.groups:
            path = profile.data.local(dataset.SAFETENSORS_KEY)
            drop_page_cache()
            result = workloads.safetensors_load(path, read_timeout(path.stat().st_size))
            self.record_each(
                profile,
                ("st_cold", "st_warm"),
                LOCAL,
                repeat,
                result.mb_per_s,
                describe_throughput(result),
            )

    # -- mounts and cycles -------------------------------------------------------------------

    def mount(self, mounter: Mounter, profile: Profile, cycle: str) -> MountedFs:
        self._mount_serial += 1
        base = self.o.workdir / "mounts" / f"{self._mount_serial:03d}-{mounter.name}-{cycle}"
        mountpoint, cache_dir = base / "mnt", base / "cache"
        mountpoint.mkdir(parents=True)
        cache_dir.mkdir()
        return mounter.mount(
            profile.target,
            mountpoint,
            cache_dir,
            profile.rclone_conf,
            base / "mount.log",
            self.cleanup,
            profile.data.root,
        )

    def run_cycle(self, mounter: Mounter, profile: Profile, cycle: str, repeat: int) -> None:
        where = f"{profile.name} r{repeat} {mounter.name} {cycle}"
        if profile.failures.get(mounter.name, 0) >= _MAX_MOUNT_FAILURES:
            return
        try:
            mounted = self.mount(mounter, profile, cycle)
        except MountError as exc:
            profile.failures[mounter.name] = profile.failures.get(mounter.name, 0) + 1
            self.fail(f"{where}: {exc}")
            if profile.failures[mounter.name] >= _MAX_MOUNT_FAILURES:
                log(
                    f"SKIPPING {mounter.name} for the rest of the {profile.name} profile: "
                    f"it failed to mount {_MAX_MOUNT_FAILURES} times in a row"
                )
            return
        profile.failures[mounter.name] = 0
        try:
            drop_page_cache()
            CYCLES[cycle][1](CycleRun(self, profile, mounted, repeat))
        except (workloads.WorkloadError, OSError) as exc:
            self.fail(f"{where}: {exc}")
        finally:
            mounted.unmount()
            # The cache can hold gigabytes; the mount log is kept for post-mortems.
            safe_rmtree(mounted.mountpoint.parent / "cache")

    def run_profile(self, profile: Profile, repeats: int, active: list[Mounter]) -> None:
        cycles = cycles_for(self.o.groups, profile.wan)
        for repeat in range(1, repeats + 1):
            try:
                self.run_baselines(profile, repeat)
            except Exception as exc:  # a broken baseline must not cost the mounter rows
                self.fail(f"{profile.name} r{repeat} baselines: {exc!r}")
            for mounter in active:
                if profile.wan and not mounter.remote:
                    continue  # a local copy: nothing to learn over a shaped link
                log(f"{profile.name} repeat {repeat}/{repeats}: {mounter.name}")
                for cycle in cycles:
                    self.run_cycle(mounter, profile, cycle, repeat)


def select_mounters(bench: Bench) -> list[Mounter]:
    """The requested mounters that can run here; the others are reported as skipped."""
    active = []
    for name in bench.o.mounters:
        mounter = mounters.ALL[name]
        reason = mounter.available()
        if reason is None:
            active.append(mounter)
        else:
            bench.results.skipped[name] = reason
            log(f"SKIPPING {name}: {reason}")
    return active


def _big_keys(groups: set[str], wan: bool) -> tuple[str, ...]:
    keys = [dataset.MEDIUM_KEY]
    if "large" in groups and not wan:
        keys.append(dataset.LARGE_KEY)
    if "safetensors" in groups:
        keys.append(dataset.SAFETENSORS_KEY)
    return tuple(keys)


def run_loopback(bench: Bench, data: Dataset, active: list[Mounter]) -> None:
    o = bench.o
    server = seaweed().SeaweedServer(o.workdir / "weed-loopback")
    log("starting SeaweedFS on loopback")
    server.start()
    bench.cleanup.push("stop SeaweedFS (loopback)", server.stop)
    target = S3Target(server.endpoint, BUCKET, server.access_key, server.secret_key)
    dataset.upload(
        data,
        target.client(),
        BUCKET,
        big_keys=_big_keys(o.groups, wan=False),
        tree_prefix=dataset.TREE_PREFIX,
        log=log,
    )
    conf = mounters.write_rclone_config(target, o.workdir / "rclone-loopback.conf")
    profile = Profile(LOOPBACK, target, data, dataset.TREE_PREFIX, conf)
    bench.run_profile(profile, o.repeat, active)
    server.stop()
    safe_rmtree(server.workdir)  # gigabytes of volumes


def run_wan(bench: Bench, data: Dataset, active: list[Mounter]) -> WanInfo:
    o = bench.o
    link = WanLink(
        bench.cleanup,
        o.workdir,
        WanProfile(),
        o.wan_emulator,
        access_key="bench",
        secret_key="bench-secret",
    )
    link.up()
    direct = dataclasses.replace(link.start_server(), bucket=BUCKET)
    dataset.upload(
        data,
        direct.client(),
        BUCKET,
        big_keys=_big_keys(o.groups, wan=True),
        tree_prefix=data.tree_subset_prefix,
        log=log,
    )
    endpoint = link.shape()
    log(f"WAN link shaped: {link.method}")
    target = dataclasses.replace(direct, endpoint=endpoint)
    conf = mounters.write_rclone_config(target, o.workdir / "rclone-wan.conf")
    profile = Profile(WAN, target, data, data.tree_subset_prefix, conf)
    bench.run_profile(profile, o.wan_repeat, active)
    return WanInfo(
        link.profile.describe(),
        link.method,
        baselines.THREADS * link.profile.per_connection_bytes_per_s / 1e6,
    )
