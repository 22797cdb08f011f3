"""The fleet simulation at CI size (docs/fleet.md): `NODES=4 MODEL_MB=64 scripts/fleet-sim.sh`,
network namespaces and real SeaweedFS servers, four real mounts at once; about two minutes.

Asserted: every node byte-exact in every phase; the origin sends the model once for four nodes
through the site (<= 1.1 x); the site killed once it has sent half of the bytes, the nodes
finish from the origin, byte-exact, with the origin's egress <= 4 x the model. The p95 cold
start against one node's (the issue's <= 1.3 x) is printed, not asserted: at this size the
cold start is mostly four mounts starting at once on two CPU cores, which other work on the
machine slows as much as the network; asserted is only that no node waited for a timeout
(within 2 x one node's + 30 s). Needs root (namespaces, FUSE), `ip` and `weed`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.seaweed import SeaweedError, find_weed

pytestmark = pytest.mark.mount

ROOT = Path(__file__).resolve().parent.parent
NODES, MODEL_MB = 4, 64


def _fleet_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.startswith("mfleet")}


def _missing_requirement() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, FUSE)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    try:
        find_weed()
    except SeaweedError as exc:
        return str(exc)
    return ""


@pytest.mark.skipif(bool(_missing_requirement()), reason=_missing_requirement() or "ready")
def test_four_nodes_read_the_model_once_from_the_origin_and_survive_the_site(
    tmp_path: Path,
) -> None:
    before = _fleet_namespaces()
    results = tmp_path / "fleet.json"
    env = os.environ | {
        "NODES": str(NODES),
        "MODEL_MB": str(MODEL_MB),
        "BASELINE": "off",
        "FLEET_JSON": str(results),
        "FLEET_TIMEOUT": "480",
        "MODELFS_PYTHON": sys.executable,
    }
    done = subprocess.run(
        [str(ROOT / "scripts" / "fleet-sim.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout)  # the simulation's progress lines, its table and its targets
    report = json.loads(results.read_text())
    phases = {phase["name"]: phase for phase in report["phases"]}
    model = MODEL_MB << 20
    one, many = phases["1 node, site"], phases[f"{NODES} nodes, site"]
    killed = phases[f"{NODES} nodes, site killed halfway"]
    for phase in (one, many, killed):
        assert [r.get("exact") for r in phase["results"]] == [True] * phase["nodes"], phase
    assert many["egress"] <= 1.1 * model
    assert killed["killed_at"] is not None
    assert killed["egress"] <= NODES * model
    p95, single = max(many["cold_starts"]), one["cold_starts"][0]  # p95 of 4: the slowest
    print(f"p95 cold start / one node's: {p95 / single:.2f} (the issue's target: <= 1.3)")
    assert p95 <= 2 * single + 30
    assert _fleet_namespaces() <= before  # the script removed its namespaces
