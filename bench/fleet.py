"""The fleet simulation (issue 20): N nodes cold-start one model through a site cache.

    origin: weed mini :8334 ◄── wanproxy :8333 ◄───── WAN (RTT, one shared uplink) ──┐
                                 counts what the origin sends: the origin's egress     │
    site:   weed mini :8333, bucket `models` = remote mount of the origin's ───────────┤
    node i: modelfs mount origin:models/llama, sources [site, origin], and a loader ───┘

All on one machine (`fleetnet`: a namespace per machine, a bridge, our own shaping proxy, as
this kernel has no netem). Each phase starts from cold: a fresh site cache (a new SeaweedFS
with the remote mount, nothing cached), fresh node caches, the proxy's counters read before
and after. Phases:
1. one node, through the site (the single node's cold start the others are compared with);
2. N nodes at once, through the site;
3. N nodes at once, the site killed (SIGKILL) once the loaders have read half of the bytes:
   the nodes carry on from the origin and must stay byte-exact;
4. (--baseline) N nodes at once from the origin alone, no site: what the tier saves.
It prints one table (and writes it as JSON with --json). The model is random bytes made here,
uploaded with a manifest (sha256: a SeaweedFS site keeps ETags of its own, see docs/fleet.md).

Run it through scripts/fleet-sim.sh (root; it cleans up on any exit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import xxhash
from botocore.config import Config
from fleetnet import FleetNet, ns_exec
from seaweed_support import seaweed
from sysutil import Cleanup, log, safe_rmtree, stop_popen, wait_until

ACCESS, SECRET = "fleet-sim", "fleet-sim-secret"  # a simulation's own, throwaway identity
BUCKET, PREFIX = "models", "llama/"
FILES = ("config.json", "model.safetensors")
_WEED_PORTS = ("-master.port=9333", "-volume.port=8080", "-filer.port=8888", "-admin.port=23646")
_DIRECT, _SHAPED = 8334, 8333  # the origin's own S3 port, and the proxy in front of it
_PART = 64 << 20
_BENCH = Path(__file__).resolve().parent


@dataclass
class Phase:
    name: str
    nodes: int
    model_size: int = 0
    site: bool = True
    kill_site: bool = False
    egress: int = 0
    seconds: float = 0.0
    killed_at: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    def cold_starts(self) -> list[float]:
        return sorted(r["cold_start_s"] for r in self.results if "cold_start_s" in r)

    def exact(self) -> int:
        return sum(1 for r in self.results if r.get("exact"))

    def from_source(self, which: str) -> int:
        total = 0
        for result in self.results:
            for name, counts in ((result.get("sources") or {}).get("by_source") or {}).items():
                if name.startswith(which):
                    total += counts["bytes"]
        return total


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 16 values is the 16th)."""
    if not values:
        return float("nan")
    rank = max(1, -(-len(values) * fraction // 1))
    return values[int(rank) - 1]


class Fleet:
    def __init__(self, args: argparse.Namespace, cleanup: Cleanup) -> None:
        self.args = args
        self.cleanup = cleanup
        self.net = FleetNet(args.nodes)
        self.work = Path(args.workdir or f"/tmp/modelfs-fleet-{os.getpid()}")
        self.model_size = args.model_mb << 20
        self.rate = args.uplink_mbit * 1e6 / 8
        self.weed = seaweed().find_weed()
        self.site: subprocess.Popen[bytes] | None = None
        self.xxh3 = ""
        self.total_bytes = 0

    # -- set-up ------------------------------------------------------------------------------

    def set_up(self) -> None:
        if not self.args.keep:
            self.cleanup.push(f"remove {self.work}", lambda: safe_rmtree(self.work))
        self.work.mkdir(parents=True, exist_ok=True)
        self.cleanup.push("delete the namespaces", self.net.destroy)
        self.net.create()
        (self.work / "identities.json").write_text(json.dumps(_identities()))
        origin = self.net.ip(self.net.origin)
        self._weed(self.net.origin, "origin", _DIRECT)
        self._put_model(f"http://{origin}:{_DIRECT}")
        proxy = [
            sys.executable, str(_BENCH / "wanproxy.py"),
            "--listen", f"{origin}:{_SHAPED}", "--target", f"{origin}:{_DIRECT}",
            "--delay-ms", str(self.args.rtt_ms / 2), "--total-rate", str(self.rate),
            "--stats", str(self.work / "egress.json"),
        ]  # fmt: skip
        self._spawn(ns_exec(self.net.origin, *proxy), self.work / "wanproxy.log")
        if not wait_until(lambda: (self.work / "egress.json").exists(), 30, interval=0.1):
            raise RuntimeError(f"the shaping proxy did not start: see {self.work}/wanproxy.log")

    def _weed(
        self, namespace: str, name: str, s3_port: int, *extra: str
    ) -> subprocess.Popen[bytes]:
        data = self.work / name
        safe_rmtree(data)
        data.mkdir(parents=True)
        ip = self.net.ip(namespace)
        command = ns_exec(
            namespace, self.weed, "mini", f"-dir={data}", f"-ip={ip}", f"-ip.bind={ip}",
            f"-s3.port={s3_port}", *_WEED_PORTS, "-metricsPort=9327",
            f"-s3.config={self.work / 'identities.json'}", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=100", *extra,
        )  # fmt: skip
        process = self._spawn(command, data / "weed.log")
        client = _client(f"http://{ip}:{s3_port}", attempts=1)
        if not wait_until(lambda: _answers(client), 90, interval=0.2):
            raise RuntimeError(f"SeaweedFS ({name}) did not start: see {data}/weed.log")
        return process

    def _spawn(self, command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.cleanup.push(f"stop {command[4]}", lambda: stop_popen(process))
        return process

    def _put_model(self, endpoint: str) -> None:
        """Random bytes as the model (made and uploaded part by part, hashed on the way), a
        small config beside it, and the manifest of both."""
        client = _client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        config = json.dumps({"model_type": "llama", "hidden_size": 4096}).encode()
        client.put_object(Bucket=BUCKET, Key=PREFIX + FILES[0], Body=config)
        sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
        key = PREFIX + FILES[1]
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        parts = []
        for number, start in enumerate(range(0, self.model_size, _PART), 1):
            body = os.urandom(min(_PART, self.model_size - start))
            sha.update(body)
            xxh.update(body)
            answer = client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})
        client.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
        manifest = {
            "name": "llama",
            "version": "1",
            "files": [
                {
                    "path": FILES[0],
                    "size": len(config),
                    "sha256": hashlib.sha256(config).hexdigest(),
                },
                {"path": FILES[1], "size": self.model_size, "sha256": sha.hexdigest()},
            ],
        }
        client.put_object(Bucket=BUCKET, Key=PREFIX + "manifest.json", Body=json.dumps(manifest))
        self.xxh3 = xxh.hexdigest()
        self.total_bytes = len(config) + self.model_size
        log(f"origin: {BUCKET}/{PREFIX}: {self.args.model_mb} MiB model, config, manifest")

    def _fresh_site(self) -> None:
        """A new site cache: SeaweedFS with the origin's bucket remote-mounted, nothing cached."""
        self._stop_site()
        extra = seaweed().SITE_ARGS
        self.site = self._weed(self.net.site, "site", 8333, *extra)
        site_ip, origin_ip = self.net.ip(self.net.site), self.net.ip(self.net.origin)
        commands = seaweed().remote_mount_commands(
            f"http://{origin_ip}:{_SHAPED}", BUCKET, ACCESS, SECRET
        )
        shell = ns_exec(
            self.net.site, self.weed, "shell", f"-master={site_ip}:9333", f"-filer={site_ip}:8888"
        )
        done = subprocess.run(
            shell, input="\n".join([*commands, "exit"]) + "\n", capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0 or "error" in done.stdout.lower():
            raise RuntimeError(f"remote mount on the site failed: {done.stdout}{done.stderr}")

    def _stop_site(self) -> None:
        if self.site is not None:
            self.site.kill()
            self.site.wait(30)
            self.site = None

    # -- phases ------------------------------------------------------------------------------

    def run_phase(self, phase: Phase) -> Phase:
        log(f"phase: {phase.name}")
        if phase.site:
            self._fresh_site()
        else:
            self._stop_site()
        config = self._node_config(phase.site)
        before = self._egress()
        runs = self.work / phase.name.replace(" ", "-").replace(",", "")
        safe_rmtree(runs)
        started = time.monotonic()
        nodes = [self._start_node(i, config, runs) for i in range(1, phase.nodes + 1)]
        wanted = phase.nodes * self.total_bytes
        limit = 300 + 4 * self.total_bytes / self.rate * (phase.nodes if not phase.site else 2)
        while any(process.poll() is None for process, _ in nodes):
            if time.monotonic() - started > limit:
                log(f"  phase took over {limit:.0f} s: stopping its nodes")
                for process, _ in nodes:
                    stop_popen(process)
                break
            if phase.kill_site and phase.killed_at is None:
                done = sum(_read_int(directory / "progress") for _, directory in nodes)
                if done >= wanted / 2:
                    self._stop_site()
                    phase.killed_at = time.monotonic() - started
                    log(f"  site killed at {phase.killed_at:.1f} s ({done / wanted:.0%} read)")
            time.sleep(0.2)
        phase.seconds = time.monotonic() - started
        time.sleep(1.0)  # the proxy writes its counters twice a second
        phase.egress = self._egress() - before
        for _, directory in nodes:
            result_path = directory / "result.json"
            result = json.loads(result_path.read_text()) if result_path.exists() else {}
            phase.results.append(result or {"error": "no result"})
        if not self.args.keep:
            safe_rmtree(runs)  # the node caches: N x the model on disk
        log(
            f"  {phase.exact()}/{phase.nodes} byte-exact, origin egress "
            f"{phase.egress / self.model_size:.2f} x the model, {phase.seconds:.1f} s"
        )
        return phase

    def _start_node(
        self, index: int, config: Path, runs: Path
    ) -> tuple[subprocess.Popen[bytes], Path]:
        directory = runs / f"n{index:02d}"
        directory.mkdir(parents=True)
        stall = max(60, int(3 * self.model_size / self.rate) + 60)  # see docs/fleet.md
        command = ns_exec(
            self.net.node(index), sys.executable, str(_BENCH / "fleetnode.py"),
            "--config", str(config), "--spec", f"origin:{BUCKET}/{PREFIX}",
            "--mountpoint", str(directory / "mnt"), "--cache-dir", str(directory / "cache"),
            "--files", *FILES, "--xxh3", self.xxh3,
            "--progress", str(directory / "progress"), "--result", str(directory / "result.json"),
            "--", "--read-only", "--stall-timeout", f"{stall}s", "--max-memory", "128M",
        )  # fmt: skip
        with (directory / "node.log").open("ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        return process, directory

    def _node_config(self, with_site: bool) -> Path:
        path = self.work / ("site.conf" if with_site else "origin.conf")
        origin, site = self.net.ip(self.net.origin), self.net.ip(self.net.site)
        sources = f"sources = site:{BUCKET}, origin:{BUCKET}\n" if with_site else ""
        path.write_text(
            _remote("origin", f"http://{origin}:{_SHAPED}") + sources + "\n"
            + _remote("site", f"http://{site}:8333")
        )  # fmt: skip
        return path

    def _egress(self) -> int:
        return int(json.loads((self.work / "egress.json").read_text())["down"])


def _remote(name: str, endpoint: str) -> str:
    return (
        f"[{name}]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {ACCESS}\n"
        f"secret_access_key = {SECRET}\nendpoint = {endpoint}\nregion = us-east-1\n"
    )


def _identities() -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": ACCESS,
                "credentials": [{"accessKey": ACCESS, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _client(endpoint: str, attempts: int = 3) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=2,
            read_timeout=60,
            retries={"total_max_attempts": attempts},
        ),
    )


def _answers(client: Any) -> bool:
    try:
        client.list_buckets()
    except Exception:
        return False
    return True


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


# -- the table ----------------------------------------------------------------------------------


def targets(phases: list[Phase], nodes: int) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for the issue's targets that these phases measure."""
    by_name = {phase.name: phase for phase in phases}
    one, many = by_name.get("1 node, site"), by_name.get(f"{nodes} nodes, site")
    killed = by_name.get(f"{nodes} nodes, site killed halfway")
    found: list[tuple[str, bool, str]] = []
    if many is not None:
        ratio = many.egress / many.model_size if many.model_size else 0.0
        found.append(
            (f"origin egress <= 1.1 x model at {nodes} nodes", ratio <= 1.1, f"{ratio:.2f} x")
        )
    if one is not None and many is not None and one.cold_starts() and many.cold_starts():
        ratio = percentile(many.cold_starts(), 0.95) / one.cold_starts()[0]
        found.append(("p95 cold start <= 1.3 x one node's", ratio <= 1.3, f"{ratio:.2f} x"))
    if killed is not None:
        ratio = killed.egress / killed.model_size if killed.model_size else 0.0
        exact = killed.exact() == killed.nodes
        found.append(
            ("site killed: every node byte-exact", exact, f"{killed.exact()}/{killed.nodes}")
        )
        found.append(
            (f"site killed: origin egress <= {nodes} x model", ratio <= nodes, f"{ratio:.2f} x")
        )
    return found


def table(phases: list[Phase], args: argparse.Namespace) -> str:
    header = (
        f"fleet simulation: model {args.model_mb} MiB (+ config, manifest), origin uplink "
        f"{args.uplink_mbit} Mbit/s shared by all, RTT {args.rtt_ms} ms, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start"
    )
    rows = [
        ("phase", "nodes", "origin egress", "x model", "cold start p50/p95/max (s)",
         "from site/origin (MiB)", "byte-exact"),
    ]  # fmt: skip
    for phase in phases:
        starts = phase.cold_starts()
        rows.append(
            (
                phase.name,
                str(phase.nodes),
                f"{phase.egress / 2**20:.1f} MiB",
                f"{phase.egress / phase.model_size:.2f}",
                "/".join(f"{percentile(starts, q):.1f}" for q in (0.5, 0.95, 1.0)),
                f"{phase.from_source('site') >> 20}/{phase.from_source('origin') >> 20}",
                f"{phase.exact()}/{phase.nodes}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [header, ""]
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("")
    for name, met, measured in targets(phases, args.nodes):
        lines.append(f"target: {name}: {'met' if met else 'MISSED'} ({measured})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--model-mb", type=int, default=1024)
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    parser.add_argument("--uplink-mbit", type=float, default=200.0)
    parser.add_argument(
        "--baseline", choices=("on", "off", "auto"), default="auto",
        help="also N nodes from the origin alone (auto: when it takes under ~3 minutes)",
    )  # fmt: skip
    parser.add_argument("--workdir", help="default /tmp/modelfs-fleet-PID (removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("fleet: needs root (network namespaces, FUSE)", file=sys.stderr)
        return 2
    cleanup = Cleanup()
    cleanup.install()
    fleet = Fleet(args, cleanup)
    fleet.set_up()
    plan = [Phase("1 node, site", 1)]
    if args.nodes > 1:
        plan.append(Phase(f"{args.nodes} nodes, site", args.nodes))
    plan.append(Phase(f"{args.nodes} nodes, site killed halfway", args.nodes, kill_site=True))
    baseline_s = args.nodes * fleet.model_size / fleet.rate
    if args.baseline == "on" or (args.baseline == "auto" and baseline_s < 180):
        plan.append(Phase(f"{args.nodes} nodes, origin only", args.nodes, site=False))
    phases = []
    for phase in plan:
        phase.model_size = fleet.model_size
        phases.append(fleet.run_phase(phase))
    text = table(phases, args)
    print("\n" + text, flush=True)
    if args.json is not None:
        data = {
            "parameters": {k: v for k, v in vars(args).items() if k != "json"},
            "phases": [asdict(phase) | {"cold_starts": phase.cold_starts()} for phase in phases],
            "targets": [
                {"target": n, "met": m, "measured": v} for n, m, v in targets(phases, args.nodes)
            ],
            "table": text,
        }
        args.json.write_text(json.dumps(data, indent=2))
    cleanup.run_all()
    return 0 if all(phase.exact() == phase.nodes for phase in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
