"""Results of one benchmark run: samples, medians, the Markdown table, the target checks, JSON.

A sample is one measurement: (profile, row, subject, repeat) -> value. Subjects are the
mounters plus two reference columns: `boto3` (the ratio reference of the row, see `ROWS`) and
`local` (the same read of the local disk copy). A row's cell is the median over repeats,
followed by its ratio to the row's boto3 value: for throughput rows mounter/boto3 (higher is
better), for time rows mounter/boto3 (lower is better). Rows without a raw-S3 equivalent
(fio, RSS) have no ratio.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MB_S, MS, MIB, IOPS, CPU = "MB/s", "ms", "MiB", "IOPS", "CPU-s/GiB"
PASSTHROUGH = "passthrough"  # the Python FUSE ceiling: a bare pyfuse3 fs over the local copy
LOOPBACK, WAN = "loopback", "wan"
BOTO3, LOCAL = "boto3", "local"


@dataclass(frozen=True, slots=True)
class RowSpec:
    id: str
    label: str  # may hold {medium} {large} {tree} placeholders, filled per run
    unit: str
    reference: str  # what the boto3 column of this row is (for the table's footnotes)

    @property
    def higher_is_better(self) -> bool:
        return self.unit in (MB_S, IOPS)


ROWS = (
    RowSpec("seq_cold_medium", "1. cold seq read {medium} (dd bs=1M)", MB_S, "best boto3"),
    RowSpec("seq_cold_large", "1. cold seq read {large} (dd bs=1M)", MB_S, "best boto3"),
    RowSpec("seq_cold_medium_cpu", "1. CPU of the mounter per GiB, cold {medium}", CPU, ""),
    RowSpec("seq_cold_large_cpu", "1. CPU of the mounter per GiB, cold {large}", CPU, ""),
    RowSpec("seq_warm", "2. warm seq read {medium} (page cache dropped)", MB_S, "best boto3"),
    RowSpec("seq_hot", "2. hot seq read {medium} (page cache kept)", MB_S, "best boto3"),
    RowSpec("ttfb_cold", "3. first 4 KiB, cold", MS, "boto3 ranged GET, new connection"),
    RowSpec("ttfb_warm", "3. first 4 KiB, warm", MS, "boto3 ranged GET, new connection"),
    RowSpec("fio128_cold", "3. fio randread 128 KiB, cold", MB_S, ""),
    RowSpec("fio128_warm", "3. fio randread 128 KiB, warm", MB_S, ""),
    RowSpec("fio4_cold", "3. fio randread 4 KiB, cold", IOPS, ""),
    RowSpec("fio4_warm", "3. fio randread 4 KiB, warm", IOPS, ""),
    RowSpec("st_seq_cold", "4. cold seq read of the safetensors file", MB_S, "best boto3"),
    RowSpec("st_cold", "4. safetensors load_file, cold", MB_S, "best boto3"),
    RowSpec("st_warm", "4. safetensors load_file, warm (page cache dropped)", MB_S, "best boto3"),
    RowSpec("ls_cold", "5. ls -lR {tree}, cold", MS, "boto3 LIST"),
    RowSpec("ls_warm", "5. ls -lR {tree}, warm", MS, "boto3 LIST"),
    RowSpec("tree_cold", "5. read every file of {tree}, cold", MS, "boto3 GET each, 1 thread"),
    RowSpec("tree_warm", "5. read every file of {tree}, warm", MS, "boto3 GET each, 1 thread"),
    RowSpec("rss_large", "6. peak RSS during cold read of {large}", MIB, ""),
)
ROW_BY_ID = {row.id: row for row in ROWS}


@dataclass(frozen=True, slots=True)
class Sample:
    profile: str
    row: str
    subject: str
    repeat: int
    value: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    claim: str
    measured: str
    passed: bool | None  # None: not measured in this run


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(
        self, profile: str, row: str, subject: str, repeat: int, value: float, **extra: float
    ) -> None:
        self.samples.append(Sample(profile, row, subject, repeat, value, extra))

    def medians(self) -> dict[tuple[str, str, str], float]:
        grouped: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for sample in self.samples:
            grouped[(sample.profile, sample.row, sample.subject)].append(sample.value)
        return {key: statistics.median(values) for key, values in grouped.items()}


def _format_value(value: float, unit: str) -> str:
    if unit == CPU:
        return f"{value:.2f}"
    if unit == MS:
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _cell(value: float | None, reference: float | None, unit: str) -> str:
    if value is None:
        return "—"
    text = _format_value(value, unit)
    if reference:
        text += f" ({value / reference:.2f}x)"
    return text


def render_table(
    results: Results, profile: str, subjects: list[str], labels: dict[str, str]
) -> str:
    medians = results.medians()
    header = ["row", "unit", BOTO3, LOCAL, *subjects]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in ROWS:
        values = {s: medians.get((profile, row.id, s)) for s in [BOTO3, LOCAL, *subjects]}
        if all(v is None for s, v in values.items() if s not in (BOTO3, LOCAL)):
            continue
        reference = values[BOTO3] if row.reference else None
        cells = [
            row.label.format(**labels),
            row.unit,
            _cell(values[BOTO3], None, row.unit),
            _cell(values[LOCAL], None, row.unit),
        ]
        cells += [_cell(values[s], reference, row.unit) for s in subjects]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median(
    medians: dict[tuple[str, str, str], float], profile: str, row: str, subject: str
) -> float | None:
    return medians.get((profile, row, subject))


def evaluate_targets(results: Results, subject: str = "modelfs") -> list[Target]:
    """The issue's targets for modelfs, each on medians of this run."""
    m = results.medians()

    def get(row: str, who: str = subject, profile: str = LOOPBACK) -> float | None:
        return _median(m, profile, row, who)

    targets: list[Target] = []

    def check(
        claim: str,
        value: float | None,
        bound: float | None,
        *,
        at_least: bool,
        unit: str,
        factor: float = 1.0,
    ) -> None:
        if value is None or bound is None:
            targets.append(Target(claim, "not measured", None))
            return
        limit = bound * factor
        passed = value >= limit if at_least else value <= limit
        sign = ">=" if at_least else "<="
        targets.append(
            Target(
                claim,
                f"{_format_value(value, unit)} {unit} {sign} {_format_value(limit, unit)} {unit}",
                passed,
            )
        )

    for row in ("seq_cold_medium", "seq_cold_large"):
        check(
            f"cold seq ({row}) >= 0.7x best boto3",
            get(row),
            get(row, BOTO3),
            at_least=True,
            unit=MB_S,
            factor=0.7,
        )
    for row in ("seq_cold_medium", "seq_cold_large"):
        check(
            f"cold seq ({row}) >= 0.9x the Python FUSE ceiling (passthrough)",
            get(row),
            get(row, PASSTHROUGH),
            at_least=True,
            unit=MB_S,
            factor=0.9,
        )
        check(
            f"mount CPU per cold GiB ({row}) <= 0.6 CPU-s",
            get(f"{row}_cpu"),
            0.6,
            at_least=False,
            unit=CPU,
        )
    check(
        "WAN cold seq >= 0.7x link aggregate limit (measured)",
        get("seq_cold_medium", profile=WAN),
        get("seq_cold_medium", BOTO3, WAN),
        at_least=True,
        unit=MB_S,
        factor=0.7,
    )
    check(
        "WAN cold seq >= 4x rclone defaults",
        get("seq_cold_medium", profile=WAN),
        get("seq_cold_medium", "rclone", WAN),
        at_least=True,
        unit=MB_S,
        factor=4.0,
    )
    check(
        "warm >= 0.8x local dd (page cache dropped)",
        get("seq_warm"),
        get("seq_warm", LOCAL),
        at_least=True,
        unit=MB_S,
        factor=0.8,
    )
    check(
        "hot >= 0.7x local page cache",
        get("seq_hot"),
        get("seq_hot", LOCAL),
        at_least=True,
        unit=MB_S,
        factor=0.7,
    )
    # "within 1.3x of our cold seq" in time is, in throughput, >= cold seq / 1.3.
    check(
        "safetensors cold within 1.3x of our cold seq of the same file",
        get("st_cold"),
        get("st_seq_cold"),
        at_least=True,
        unit=MB_S,
        factor=1 / 1.3,
    )
    check(
        "safetensors warm within 1.5x of the local copy",
        get("st_warm"),
        get("st_warm", LOCAL),
        at_least=True,
        unit=MB_S,
        factor=1 / 1.5,
    )
    for row in ("ttfb_cold", "ttfb_warm"):
        check(f"TTFB ({row}) < 20 ms", get(row), 20.0, at_least=False, unit=MS)
    check(
        "ls -lR cold within 1.3x raw boto3 listing",
        get("ls_cold"),
        get("ls_cold", BOTO3),
        at_least=False,
        unit=MS,
        factor=1.3,
    )
    for row in ("fio128_cold", "fio4_cold"):
        check(
            f"cold random reads ({row}) >= s3fs",
            get(row),
            get(row, "s3fs"),
            at_least=True,
            unit=IOPS if row == "fio4_cold" else MB_S,
        )
    check(
        "read every small file cold >= 2x faster than s3fs",
        get("tree_cold"),
        get("tree_cold", "s3fs"),
        at_least=False,
        unit=MS,
        factor=0.5,
    )
    check(
        "peak RSS < 300 MiB during the large cold read",
        get("rss_large"),
        300.0,
        at_least=False,
        unit=MIB,
    )
    return targets


def render_targets(targets: list[Target]) -> str:
    lines = ["| target (modelfs) | measured | result |", "|---|---|---|"]
    for target in targets:
        verdict = {True: "PASS", False: "FAIL", None: "—"}[target.passed]
        lines.append(f"| {target.claim} | {target.measured} | {verdict} |")
    return "\n".join(lines)


def save_json(path: Path, results: Results, meta: dict[str, Any], targets: list[Target]) -> None:
    medians = [
        {"profile": p, "row": r, "subject": s, "median": v}
        for (p, r, s), v in sorted(results.medians().items())
    ]
    document = {
        **meta,
        "medians": medians,
        "targets": [asdict(t) for t in targets],
        "failures": results.failures,
        "skipped": results.skipped,
        "samples": [asdict(s) for s in results.samples],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def render_baselines(results: Results, profile: str) -> str:
    """The raw boto3 figures behind the boto3 column, one line per row and variant."""
    medians = results.medians()
    lines = []
    for row in ROWS:
        parts = [
            f"{subject} {_format_value(value, row.unit)} {row.unit}"
            for (p, r, subject), value in sorted(medians.items())
            if p == profile and r == row.id and subject.startswith(f"{BOTO3}-")
        ]
        if parts:
            lines.append(f"- {row.id}: " + ", ".join(parts))
    return "\n".join(lines)
