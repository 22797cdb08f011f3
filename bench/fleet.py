"""The fleet simulation (issue 20, docs/fleet.md): N nodes cold-start one model through a site
cache, on one machine.

    origin: weed mini       <- wanproxy :8333 <---- WAN (RTT, one shared uplink) ---+
            (reached only       counts what the origin sends: its egress              |
             through the proxy)                                                       |
    site:   weed mini, bucket `models` = a remote mount of the origin's -------------+
    node i: modelfs mount origin:models/llama, sources [site, origin], and a loader --+

Each machine is a network namespace (`fleetnet`); the WAN is our own shaping proxy
(`wanproxy --total-rate`), as this kernel has no netem. Every phase starts cold: a new site
cache (a fresh SeaweedFS, the remote mount made again, nothing fetched), new node caches, the
proxy's counters read before and after. The phases:
1. one node, through the site: the single node's cold start the others are compared with;
2. N nodes at once, through the site;
3. N nodes at once, the site killed (SIGKILL) once it has sent half of their bytes (its own
   S3 metrics say): they carry on from the origin and must stay byte-exact;
4. (--baseline) N nodes at once from the origin alone: what the site saves.
It prints one table (`fleetreport`; JSON too with --json). The model is random bytes made
here and uploaded with a manifest: the site keeps ETags of its own, so the nodes read it
from the site for the files the manifest lists, whose sha256 they check (docs/fleet.md).

Run it through scripts/fleet-sim.sh (root; it also cleans up after a driver killed by SIGKILL).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import xxhash
from baselines import S3Target
from fleetnet import FleetNet
from fleetreport import Phase, as_json, nodes_text, table
from netns import ns_exec
from seaweed_support import find_weed, seaweed
from sysutil import Cleanup, die_with_parent, log, safe_rmtree, stop_popen, wait_until

ACCESS, SECRET = "fleet-sim", "fleet-sim-secret"  # a simulation's own, throwaway identity
BUCKET, PREFIX = "models", "llama/"
FILES = ("config.json", "model.safetensors")  # read in this order; the model last
_SHAPED = 8333  # the origin's proxy: what the nodes and the site reach the origin at
_PART = 64 << 20
# Four GETs at a time per node (modelfs's default is 16): 16 nodes x 16 GETs on two CPU cores
# keep the site's own reads past SeaweedFS's 2 s first-byte deadline, after which it serves
# them from the origin instead (docs/fleet.md: size a site's CPU and disks for its nodes).
_NODE_OPTIONS = (
    "--read-only", "--max-memory", "128M", "--cache-max-size", "256M", "--transfers", "4",
)  # fmt: skip
_BENCH = Path(__file__).resolve().parent


class Fleet:
    """The machines of one simulation, and the runs of its phases."""

    def __init__(self, args: argparse.Namespace, cleanup: Cleanup) -> None:
        self.args = args
        self.cleanup = cleanup
        self.net = FleetNet(args.nodes, args.run_id or os.getpid())
        self.work = Path(args.workdir or f"/tmp/modelfs-fleet-{os.getpid()}")
        self.model_size = args.model_mb << 20
        self.rate = args.uplink_mbit * 1e6 / 8  # bytes/s
        self.site: subprocess.Popen[bytes] | None = None
        self.sites = 0
        self.ports = _two_port_sets()
        self.xxh3 = ""
        self.total_bytes = 0  # what one node reads

    def set_up(self) -> None:
        """The network, the origin with the model, and the shaping proxy in front of it."""
        if not self.args.keep:
            self.cleanup.push(f"remove {self.work}", lambda: safe_rmtree(self.work))
        self.work.mkdir(parents=True, exist_ok=True)
        for ports in self.ports.values():
            self.cleanup.push("remove weed's sockets", functools.partial(_remove_sockets, ports))
        self.cleanup.push("delete the namespaces", self.net.destroy)
        self.net.create()
        identities = seaweed().identities((ACCESS, SECRET))
        (self.work / "identities.json").write_text(json.dumps(identities))
        # The origin's SeaweedFS is in a namespace of its own (`fleetnet`): the proxy is the
        # only way to it, and nothing reaches its master, filer or volume server.
        origin, store = self.net.ip(self.net.origin), self.net.ip(self.net.store)
        proxy = [
            sys.executable, str(_BENCH / "wanproxy.py"),
            "--listen", f"{origin}:{_SHAPED}", "--target", f"{store}:{self.ports['origin'].s3}",
            "--delay-ms", str(self.args.rtt_ms / 2), "--total-rate", str(self.rate),
            "--stats", str(self.work / "egress.json"),
        ]  # fmt: skip
        self._spawn("wanproxy", ns_exec(self.net.origin, *proxy), self.work / "wanproxy.log")
        shaped = S3Target(f"http://{origin}:{_SHAPED}", BUCKET, ACCESS, SECRET)
        self._weed(self.net.store, "origin", store, self.ports["origin"], shaped)
        self._put_model(shaped)  # uploads are not shaped: only what the origin sends is

    def _weed(
        self, namespace: str, name: str, ip: str, ports: Any, reached: S3Target
    ) -> subprocess.Popen[bytes]:
        """`weed mini` in `namespace` on `ip`, its data in a fresh WORK/name; returns once it
        answers at `reached` (its S3 API, or the proxy in front of it)."""
        data = self.work / name
        safe_rmtree(data)
        data.mkdir(parents=True)
        extra = seaweed().SITE_ARGS if namespace == self.net.site else ()
        command = seaweed().mini_command(
            find_weed(), data, ip, ports, self.work / "identities.json", extra
        )
        process = self._spawn(f"weed ({name})", ns_exec(namespace, *command), data / "weed.log")
        if not wait_until(reached.answers, 90, interval=0.2):
            raise RuntimeError(f"SeaweedFS ({name}) did not start: see {data}/weed.log")
        return process

    def _spawn(self, what: str, command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        self.cleanup.push(f"stop {what}", lambda: stop_popen(process))
        return process

    def _put_model(self, origin: S3Target) -> None:
        """Random bytes as the model (made and uploaded part by part, hashed on the way), a
        small config beside it, and the manifest of both."""
        client = origin.client()
        client.create_bucket(Bucket=BUCKET)
        config = json.dumps({"model_type": "llama", "hidden_size": 4096}).encode()
        client.put_object(Bucket=BUCKET, Key=PREFIX + FILES[0], Body=config)
        sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
        key = PREFIX + FILES[1]
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        parts: list[Any] = []
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
        files = [
            {"path": FILES[0], "size": len(config), "sha256": hashlib.sha256(config).hexdigest()},
            {"path": FILES[1], "size": self.model_size, "sha256": sha.hexdigest()},
        ]
        manifest = {"name": "llama", "version": "1", "files": files}
        client.put_object(Bucket=BUCKET, Key=PREFIX + "manifest.json", Body=json.dumps(manifest))
        self.xxh3 = xxh.hexdigest()
        self.total_bytes = len(config) + self.model_size
        log(f"origin: {BUCKET}/{PREFIX}: {self.args.model_mb} MiB model, config, manifest")

    def _fresh_site(self) -> None:
        """A new site cache: SeaweedFS with the origin's bucket remote-mounted, nothing fetched
        (the recipe of docs/fleet.md)."""
        self._stop_site()
        site_ip, origin_ip = self.net.ip(self.net.site), self.net.ip(self.net.origin)
        ports = self.ports["site"]
        site = S3Target(f"http://{site_ip}:{ports.s3}", BUCKET, ACCESS, SECRET)
        self.sites += 1  # each its own data directory (kept with --keep)
        self.site = self._weed(self.net.site, f"site{self.sites}", site_ip, ports, site)
        commands = seaweed().remote_mount_commands(
            f"http://{origin_ip}:{_SHAPED}", BUCKET, ACCESS, SECRET
        )
        shell = ns_exec(
            self.net.site,
            find_weed(),
            "shell",
            f"-master={site_ip}:{ports.master}",
            f"-filer={site_ip}:{ports.filer}",
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

    def run_phase(self, phase: Phase) -> Phase:
        """Start the phase's nodes at once, wait for them (killing the site halfway if asked),
        and gather their results and the origin's egress."""
        log(f"phase: {phase.name}")
        phase.model_size = self.model_size
        if phase.site:
            self._fresh_site()
        else:
            self._stop_site()
        config = self._node_config(phase.site)
        before = self._proxy_stats()
        runs = self.work / phase.name.replace(" ", "-").replace(",", "")
        safe_rmtree(runs)
        started = time.monotonic()
        nodes = [self._start_node(i, config, runs) for i in range(1, phase.nodes + 1)]
        wanted = phase.nodes * self.total_bytes
        # Bounded: every node's bytes through the uplink twice over, plus the start-up.
        limit = 120 + 2 * wanted / self.rate
        while any(process.poll() is None for process, _ in nodes):
            if time.monotonic() - started > limit:
                log(f"  phase took over {limit:.0f} s: stopping its nodes")
                for process, _ in nodes:
                    stop_popen(process)
                break
            if phase.kill_site and phase.killed_at is None:
                sent = self._site_sent()
                if sent >= wanted / 2:
                    self._stop_site()
                    phase.killed_at = time.monotonic() - started
                    log(f"  site killed at {phase.killed_at:.1f} s, {sent / wanted:.0%} sent")
            time.sleep(0.2)
        phase.seconds = time.monotonic() - started
        time.sleep(1.0)  # the proxy writes its counters twice a second
        after = self._proxy_stats()
        phase.egress = after["down"] - before["down"]
        log(
            f"  origin: {after['connections'] - before['connections']} connections, "
            f"{(after['dropped'] - before['dropped']) / 2**20:.1f} MiB sent to clients gone"
        )
        for _, directory in nodes:
            result = directory / "result.json"
            phase.results.append(json.loads(result.read_text()) if result.exists() else {})
        if phase.site:
            self._log_site_errors()
        for number, answer in enumerate(phase.results, 1):
            if not answer.get("exact"):
                log(f"  node {number}: {answer.get('error') or 'no result'}")
            by_source = (answer.get("sources") or {}).get("by_source") or {}
            site: dict[str, int] = next(iter(by_source.values()), {})
            if phase.site and not phase.kill_site and site.get("bytes", 0) < self.model_size:
                for line in answer.get("warnings", [])[:4]:
                    log(f"  node {number}: {line}")
        if not self.args.keep:
            safe_rmtree(runs)  # the node caches
        log(
            f"  {phase.exact()}/{phase.nodes} byte-exact, origin egress "
            f"{phase.egress_ratio():.2f} x the model, {phase.seconds:.1f} s"
        )
        return phase

    def _start_node(
        self, index: int, config: Path, runs: Path
    ) -> tuple[subprocess.Popen[bytes], Path]:
        directory = runs / f"n{index:02d}"
        directory.mkdir(parents=True)
        command = ns_exec(
            self.net.node(index), sys.executable, str(_BENCH / "fleetnode.py"),
            "--config", str(config), "--spec", f"origin:{BUCKET}/{PREFIX}",
            "--mountpoint", str(directory / "mnt"), "--cache-dir", str(directory / "cache"),
            "--files", *FILES, "--xxh3", self.xxh3,
            "--result", str(directory / "result.json"),
            "--", *_NODE_OPTIONS,
        )  # fmt: skip
        with (directory / "node.log").open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        return process, directory

    def _node_config(self, with_site: bool) -> Path:
        """The nodes' config: [origin] (through the WAN) with `sources = site, origin`."""
        path = self.work / ("site.conf" if with_site else "origin.conf")
        origin, site = self.net.ip(self.net.origin), self.net.ip(self.net.site)
        sources = f"sources = site:{BUCKET}, origin:{BUCKET}\n" if with_site else ""
        path.write_text(
            _remote("origin", f"http://{origin}:{_SHAPED}") + sources + "\n"
            + _remote("site", f"http://{site}:{self.ports['site'].s3}")
        )  # fmt: skip
        path.chmod(0o600)
        return path

    def _log_site_errors(self) -> None:
        """The site's error lines (a fetch that failed and was made again costs egress)."""
        log_path = self.work / f"site{self.sites}" / "weed.log"
        lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
        errors = [line for line in lines if line.startswith("E")]
        if errors:
            log(f"  site: {len(errors)} error lines, the first: {errors[0][:300]}")

    def _site_sent(self) -> float:
        """Bytes the site has sent to the nodes (its S3 metrics; 0 while it does not answer)."""
        url = f"http://{self.net.ip(self.net.site)}:{self.ports['site'].metrics}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        found = seaweed().samples(text, "SeaweedFS_s3_bucket_traffic_sent_bytes_total")
        return float(sum(value for _, value in found))

    def _proxy_stats(self) -> dict[str, int]:
        """The shaping proxy's counters (`wanproxy --stats`): `down` is the origin's egress."""
        stats: dict[str, int] = json.loads((self.work / "egress.json").read_text())
        return stats


def _two_port_sets() -> dict[str, Any]:
    """Ports for the origin's SeaweedFS and the site's, none shared: `weed mini` talks to its
    own parts over Unix sockets named by port in /tmp (/tmp/seaweedfs-filer-grpc-<port>.sock),
    which every namespace sees; two servers on the same ports would use each other's."""
    origin = seaweed().pick_ports()
    while True:
        site = seaweed().pick_ports()
        if not set(dataclasses.astuple(site)) & set(dataclasses.astuple(origin)):
            return {"origin": origin, "site": site}


def _remove_sockets(ports: Any) -> None:
    """The Unix sockets `weed mini` left in /tmp for these ports (it was killed)."""
    for port in dataclasses.astuple(ports):
        for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            leftover.unlink(missing_ok=True)


def _remote(name: str, endpoint: str) -> str:
    return (
        f"[{name}]\ntype = s3\nprovider = SeaweedFS\naccess_key_id = {ACCESS}\n"
        f"secret_access_key = {SECRET}\nendpoint = {endpoint}\nregion = us-east-1\n"
    )


def plan(args: argparse.Namespace) -> list[Phase]:
    """The phases to run (see the module docstring)."""
    phases = [Phase(f"{nodes_text(1)}, site", 1)]
    if args.nodes > 1:
        phases.append(Phase(f"{args.nodes} nodes, site", args.nodes))
    many = nodes_text(args.nodes)
    phases.append(Phase(f"{many}, site killed halfway", args.nodes, kill_site=True))
    baseline_s = args.nodes * (args.model_mb << 20) / (args.uplink_mbit * 1e6 / 8)
    if args.baseline == "on" or (args.baseline == "auto" and baseline_s < 180):
        phases.append(Phase(f"{many}, origin only", args.nodes, site=False))
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--model-mb", type=int, default=1024)
    parser.add_argument("--rtt-ms", type=float, default=40.0)
    parser.add_argument("--uplink-mbit", type=float, default=200.0)
    parser.add_argument(
        "--baseline", choices=("on", "off", "auto"), default="auto",
        help="also N nodes from the origin alone (auto: when that takes under ~3 minutes)",
    )  # fmt: skip
    parser.add_argument("--workdir", help="default /tmp/modelfs-fleet-PID (removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--run-id", type=int, help="a live pid the namespaces are named after (default: ours)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("fleet: needs root (network namespaces, FUSE)", file=sys.stderr)
        return 2
    args.node_options = " ".join(_NODE_OPTIONS)  # for the table
    load = os.getloadavg()[0]
    cleanup = Cleanup()
    cleanup.install()
    fleet = Fleet(args, cleanup)
    fleet.set_up()
    phases = [fleet.run_phase(phase) for phase in plan(args)]
    text = table(phases, args, load)
    print("\n" + text, flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(phases, args, text), indent=2))
    cleanup.run_all()
    return 0 if all(phase.exact() == phase.nodes for phase in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
