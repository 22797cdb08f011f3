"""The reads the benchmark times, each in a child process with a timeout.

A child process per measurement keeps the benchmark alive when a mount hangs: the child is
killed at its timeout (FUSE waits are killable) and the row is recorded as failed. What is
timed, per workload:

* `dd_read`: `dd if=FILE of=/dev/null bs=1M`; bytes and seconds as dd reports them.
* `first_byte`: open + read of the first 4 KiB (probe.py), i.e. what an app waits for.
* `fio_randread`: fio psync random reads of one block size for a fixed time, one job.
* `safetensors_load`: `safetensors.numpy.load_file` (safe_open, mmap, every tensor).
* `list_recursive`: `ls -lR DIR > /dev/null`, wall clock of the child.
* `read_tree`: open + read + close of every file under DIR, one after another (probe.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROBE = Path(__file__).with_name("probe.py")
_DD_REPORT = re.compile(r"^(\d+) bytes .* copied, ([0-9.e+-]+) s", re.MULTILINE)
_C_LOCALE = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


class WorkloadError(RuntimeError):
    """A measurement that did not complete (timeout, error exit, unparsable output)."""


@dataclass(frozen=True, slots=True)
class Throughput:
    nbytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


@dataclass(frozen=True, slots=True)
class FioResult:
    mb_per_s: float
    iops: float
    p50_ms: float
    p99_ms: float


def _run(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, env=_C_LOCALE, check=False
        )
    except subprocess.TimeoutExpired:
        raise WorkloadError(f"{Path(cmd[0]).name} timed out after {timeout:.0f}s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WorkloadError(f"{Path(cmd[0]).name} exited {result.returncode}: {detail[0]}")
    return result


def _probe(kind: str, path: Path, timeout: float) -> dict[str, Any]:
    result = _run([sys.executable, str(_PROBE), kind, str(path)], timeout)
    try:
        parsed: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise WorkloadError(f"probe {kind}: unparsable output {result.stdout!r}") from None
    return parsed


def dd_read(path: Path, timeout: float) -> Throughput:
    result = _run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], timeout)
    match = _DD_REPORT.search(result.stderr)
    if not match:
        raise WorkloadError(f"dd: unparsable report {result.stderr!r}")
    return Throughput(int(match.group(1)), float(match.group(2)))


def first_byte(path: Path, timeout: float) -> float:
    """Seconds from open() to holding the first 4 KiB."""
    return float(_probe("first-byte", path, timeout)["seconds"])


def fio_randread(path: Path, block: str, runtime_s: int, timeout: float) -> FioResult:
    result = _run(
        [
            "fio",
            "--name=randread",
            f"--filename={path}",
            "--readonly",
            "--rw=randread",
            f"--bs={block}",
            "--ioengine=psync",
            "--numjobs=1",
            "--time_based",
            f"--runtime={runtime_s}",
            "--output-format=json",
        ],
        timeout,
    )
    try:
        read = json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]["read"]
        percentiles = read["clat_ns"]["percentile"]
        return FioResult(
            mb_per_s=read["bw_bytes"] / 1e6,
            iops=read["iops"],
            p50_ms=percentiles["50.000000"] / 1e6,
            p99_ms=percentiles["99.000000"] / 1e6,
        )
    except (ValueError, KeyError, IndexError) as exc:
        raise WorkloadError(f"fio: unparsable JSON ({exc})") from None


def safetensors_load(path: Path, timeout: float) -> Throughput:
    report = _probe("safetensors", path, timeout)
    return Throughput(path.stat().st_size, float(report["seconds"]))


def list_recursive(path: Path, timeout: float) -> float:
    start = time.perf_counter()
    _run(["sh", "-c", 'exec ls -lR "$0" > /dev/null', str(path)], timeout)
    return time.perf_counter() - start


def read_tree(path: Path, timeout: float, expected_files: int) -> float:
    report = _probe("read-tree", path, timeout)
    if int(report["files"]) != expected_files:
        raise WorkloadError(f"read {report['files']} files under {path}, expected {expected_files}")
    return float(report["seconds"])
