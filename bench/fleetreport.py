"""The fleet simulation's results: one `Phase` per run of the nodes, the issue's targets, and
the one table the simulation prints (and writes as JSON).

A phase's figures: the origin's egress while it ran (bytes the shaped proxy saw the origin
send: the site's fetches and every node's own reads, HEADs and listings), each node's cold
start (`fleetnode`: mount + read every file byte-exact), and where each node's bytes came
from (the mount's own per-source counters).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Phase:
    name: str
    nodes: int
    model_size: int = 0
    site: bool = True  # the nodes read through the site cache (else from the origin alone)
    kill_site: bool = False  # the site is killed once half of the bytes have been read
    egress: int = 0
    seconds: float = 0.0
    killed_at: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)  # one per node (fleetnode)

    def cold_starts(self) -> list[float]:
        return sorted(r["cold_start_s"] for r in self.results if "cold_start_s" in r)

    def mount_times(self) -> list[float]:
        """Seconds to `modelfs mount` (part of the cold start): what 2 CPU cores shared by N
        mounts starting at once add to it, where a real fleet's nodes each have their own."""
        return sorted(r["mount_s"] for r in self.results if "mount_s" in r)

    def exact(self) -> int:
        return sum(1 for r in self.results if r.get("exact"))

    def egress_ratio(self) -> float:
        return self.egress / self.model_size if self.model_size else 0.0

    def from_source(self, which: str) -> int:
        """Bytes the nodes read from the sources whose name starts with `which`."""
        total = 0
        for result in self.results:
            for name, counts in ((result.get("sources") or {}).get("by_source") or {}).items():
                if name.startswith(which):
                    total += counts["bytes"]
        return total


def nodes_text(count: int) -> str:
    """'1 node', '16 nodes': how phase names start."""
    return f"{count} node" + ("" if count == 1 else "s")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank (the p95 of 16 values is the 16th, of 4 the 4th)."""
    if not values:
        return float("nan")
    rank = max(1, -(-len(values) * fraction // 1))
    return sorted(values)[int(rank) - 1]


def targets(phases: list[Phase], nodes: int) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for each of the issue's targets these phases measure."""
    by_name = {phase.name: phase for phase in phases}
    one, many = by_name.get("1 node, site"), by_name.get(f"{nodes} nodes, site")
    killed = by_name.get(f"{nodes_text(nodes)}, site killed halfway")
    found: list[tuple[str, bool, str]] = []
    if many is not None:
        ratio = many.egress_ratio()
        name = f"origin egress <= 1.1 x model ({nodes} nodes)"
        found.append((name, ratio <= 1.1, f"{ratio:.2f}"))
    if one is not None and many is not None and one.cold_starts() and many.cold_starts():
        ratio = percentile(many.cold_starts(), 0.95) / one.cold_starts()[0]
        found.append(("p95 cold start <= 1.3 x one node's", ratio <= 1.3, f"{ratio:.2f}"))
    if killed is not None:
        exact = killed.exact() == killed.nodes
        found.append(("site killed: every node byte-exact", exact, f"{killed.exact()}/{nodes}"))
        ratio = killed.egress_ratio()
        found.append((f"site killed: egress <= {nodes} x model", ratio <= nodes, f"{ratio:.2f}"))
    return found


def table(phases: list[Phase], args: argparse.Namespace, load: float) -> str:
    """The one table: parameters, a row per phase, then the targets."""
    lines = [
        f"fleet simulation: {args.nodes} nodes, model {args.model_mb} MiB (+ config, manifest), "
        f"origin uplink {args.uplink_mbit:g} Mbit/s shared by all, RTT {args.rtt_ms:g} ms, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the start; each node: modelfs mount "
        f"{args.node_options}",
        "",
    ]
    rows = [
        ("phase", "nodes", "origin egress", "x model", "cold start p50/p95/max (s)",
         "of it mount p50/p95", "from site/origin (MiB)", "byte-exact"),
    ]  # fmt: skip
    for phase in phases:
        starts = phase.cold_starts()
        rows.append(
            (
                phase.name + (f" (at {phase.killed_at:.0f} s)" if phase.killed_at else ""),
                str(phase.nodes),
                f"{phase.egress / 2**20:.1f} MiB",
                f"{phase.egress_ratio():.2f}",
                "/".join(f"{percentile(starts, q):.1f}" for q in (0.5, 0.95, 1.0)),
                "/".join(f"{percentile(phase.mount_times(), q):.1f}" for q in (0.5, 0.95)),
                f"{phase.from_source('site') >> 20}/{phase.from_source('origin') >> 20}",
                f"{phase.exact()}/{phase.nodes}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("")
    for name, met, measured in targets(phases, args.nodes):
        lines.append(f"target: {name}: {'met' if met else 'MISSED'} ({measured})")
    return "\n".join(lines)


def as_json(phases: list[Phase], args: argparse.Namespace, text: str) -> dict[str, Any]:
    """Everything measured, for `--json` (tests/test_fleet.py reads it)."""
    return {
        "parameters": {k: str(v) if k == "json" else v for k, v in vars(args).items()},
        "phases": [asdict(phase) | {"cold_starts": phase.cold_starts()} for phase in phases],
        "targets": [
            {"target": name, "met": met, "measured": measured}
            for name, met, measured in targets(phases, args.nodes)
        ],
        "table": text,
    }
