#!/usr/bin/env python3
"""modelfs read benchmark (issue 3): modelfs vs rclone vs s3fs vs raw boto3, one table per run.

Run by hand, as root (FUSE, drop_caches, network namespaces), from the repository root:

    python bench/bench.py                 # the issue's full spec, medians of 3 (~30-40 min)
    python bench/bench.py --quick         # small sizes, 1 repeat: a smoke test of the script
    python bench/bench.py --only modelfs,rclone --rows seq,tree --no-wan

Shape of a run:

1. Make the data on local disk (dataset.py), start SeaweedFS on loopback, upload it.
2. For each repeat: the boto3 and local-disk baselines, then for each mounter each
   measurement cycle (CYCLES). Every cycle mounts afresh with an empty cache directory and
   drops the page cache first, so each "cold" figure is really cold; "warm" figures reuse the
   same mount with its cache full and the page cache dropped again.
3. WAN profile (wan.py): a second SeaweedFS inside a network namespace behind a shaped veth
   (40 ms RTT, 10 MB/s per connection); the cold cycles again, against boto3 over that link.
4. Print the tables and the target checks; save everything to bench/results/<time>.json.

Everything started is stopped, and every mount unmounted, on any exit (sysutil.Cleanup).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import sys
import tempfile
from pathlib import Path

import dataset
import mounters
import report
from cycles import ROW_GROUPS
from dataset import Dataset, DatasetSpec
from report import LOOPBACK, WAN, Results
from runner import Bench, Options, WanInfo, run_loopback, run_wan, select_mounters
from seaweed_support import find_weed
from sysutil import Cleanup, log, machine_info, safe_rmtree

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB = 1 << 30
MIB = 1 << 20
FULL = DatasetSpec(medium_bytes=GIB, large_bytes=4 * GIB, safetensors_bytes=GIB, tree_files=2000)
QUICK = DatasetSpec(
    medium_bytes=64 * MIB, large_bytes=256 * MIB, safetensors_bytes=64 * MIB, tree_files=200
)


def _size_label(nbytes: int) -> str:
    return f"{nbytes / GIB:g} GiB" if nbytes >= GIB else f"{nbytes / MIB:g} MiB"


def _labels(data: Dataset, tree_files: int) -> dict[str, str]:
    return {
        "medium": _size_label(data.spec.medium_bytes),
        "large": _size_label(data.spec.large_bytes),
        "tree": f"{tree_files} files",
    }


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    cleanup = Cleanup()
    cleanup.install()
    try:
        return run(options, cleanup)
    except KeyboardInterrupt:
        log("interrupted: unmounting and stopping everything")
        return 130  # the shell's code for death by SIGINT
    except SystemExit:
        log("terminated: unmounting and stopping everything")
        raise
    finally:
        cleanup.run_all()


def run(o: Options, cleanup: Cleanup) -> int:
    started = datetime.datetime.now(datetime.UTC)
    o.workdir.mkdir(parents=True, exist_ok=True)
    if o.remove_workdir:
        cleanup.push(f"remove {o.workdir}", lambda: safe_rmtree(o.workdir))
    bench = Bench(o, cleanup)
    active = select_mounters(bench)
    data = dataset.build(o.data_dir, o.spec, log)
    if o.loopback:
        run_loopback(bench, data, active)
    wan = run_wan(bench, data, active) if o.wan else None
    names = [m.name for m in active]
    quick = o.quick
    machine = machine_info(
        {
            "rclone": [mounters.find_binary("rclone") or "rclone", "version"],
            "s3fs": ["s3fs", "--version"],
            "weed": [find_weed(), "version"],
            "fio": ["fio", "--version"],
        }
    )
    meta = {
        "command": o.command,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "complete": o.complete,
        "machine": machine,
        "options": {
            "repeat": o.repeat,
            "wan_repeat": o.wan_repeat,
            "fio_runtime_s": o.fio_runtime,
            "groups": sorted(o.groups),
            "mounters": names,
            "dataset": dataclasses.asdict(o.spec),
            "safetensors_bytes": data.safetensors_size,
        },
        "wan": dataclasses.asdict(wan) if wan else None,
    }
    targets = report.evaluate_targets(bench.results)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    tags = ("-quick" if quick else "") + ("" if o.complete else "-partial")
    out = o.results_dir / f"{stamp}{tags}.json"
    report.save_json(out, bench.results, meta, targets)
    header = [
        f"## modelfs benchmark{' (--quick run: small sizes, NOT the issue spec)' if quick else ''}",
        f"command: `{o.command}`  ",
        "machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()),
    ]
    print_summary(bench.results, header, o, names, data, wan, targets, out)
    minutes = (datetime.datetime.now(datetime.UTC) - started).total_seconds() / 60
    log(f"done in {minutes:.1f} min")
    return 0


def print_summary(
    results: Results,
    header: list[str],
    o: Options,
    names: list[str],
    data: Dataset,
    wan: WanInfo | None,
    targets: list[report.Target],
    out: Path,
) -> None:
    print()
    print("\n".join(header))
    print()
    print("Cells: median (ratio to the boto3 column). MB/s = 10^6 bytes/s.")
    if o.loopback:
        print()
        print(f"### Loopback (medians of {o.repeat})")
        print()
        labels = _labels(data, data.spec.tree_files)
        print(report.render_table(results, LOOPBACK, names, labels))
        print()
        print(report.render_baselines(results, LOOPBACK))
    if wan is not None:
        print()
        print(f"### WAN ({wan.profile}; {wan.method}), medians of {o.wan_repeat}")
        print(
            f"boto3 column = link aggregate limit, {wan.link_limit}; theoretical "
            f"{wan.theoretical_mb_per_s:.0f} MB/s."
        )
        print()
        subset = len(data.tree_keys_under(data.tree_subset_prefix))
        print(report.render_table(results, WAN, names, _labels(data, subset)))
        print()
        print(report.render_baselines(results, WAN))
    print()
    print(report.render_targets(targets))
    if results.failures:
        print()
        print("Failures:")
        for failure in results.failures:
            print(f"- {failure}")
    for name, reason in results.skipped.items():
        print(f"- skipped {name}: {reason}")
    print()
    print(f"saved {out}")


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="64 MiB / 256 MiB objects, 200 files, 1 repeat, short fio",
    )
    parser.add_argument("--repeat", type=int, help="loopback repeats (default 3, quick 1)")
    parser.add_argument(
        "--wan-repeat",
        type=int,
        default=1,
        help="WAN repeats (default 1: rclone's defaults alone take minutes)",
    )
    parser.add_argument(
        "--only",
        default=",".join(mounters.ALL),
        help=f"mounters, comma-separated (default {','.join(mounters.ALL)})",
    )
    parser.add_argument(
        "--rows", default=",".join(ROW_GROUPS), help=f"row groups (default {','.join(ROW_GROUPS)})"
    )
    parser.add_argument("--no-wan", action="store_true", help="skip the WAN profile")
    parser.add_argument(
        "--no-loopback",
        action="store_true",
        help="skip the loopback profile (to try the WAN part alone)",
    )
    parser.add_argument("--wan-emulator", choices=("auto", "tc", "proxy"), default="auto")
    parser.add_argument(
        "--size-scale",
        type=float,
        default=1.0,
        help="multiply the object sizes (not the file count)",
    )
    parser.add_argument("--fio-runtime", type=int, help="seconds per fio run (default 5, quick 1)")
    parser.add_argument(
        "--workdir", type=Path, help="scratch space (default: a new dir in /var/tmp)"
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the workdir (logs of every mount) at exit"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the generated data here and reuse it next time "
        "(default: inside the workdir, deleted at exit)",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error(
            "run as root: it mounts FUSE filesystems, drops the page cache and "
            "creates a network namespace"
        )
    base = QUICK if args.quick else FULL
    spec = DatasetSpec(
        medium_bytes=_scaled(base.medium_bytes, args.size_scale),
        large_bytes=_scaled(base.large_bytes, args.size_scale),
        safetensors_bytes=_scaled(base.safetensors_bytes, args.size_scale),
        tree_files=base.tree_files,
    )
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    groups = {group.strip() for group in args.rows.split(",") if group.strip()}
    for name in chosen:
        if name not in mounters.ALL:
            parser.error(f"unknown mounter {name!r} (known: {', '.join(mounters.ALL)})")
    for group in groups:
        if group not in ROW_GROUPS:
            parser.error(f"unknown row group {group!r} (known: {', '.join(ROW_GROUPS)})")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelfs-bench-", dir="/var/tmp"))
    return Options(
        spec=spec,
        quick=args.quick,
        repeat=args.repeat or (1 if args.quick else 3),
        wan_repeat=args.wan_repeat,
        fio_runtime=args.fio_runtime or (1 if args.quick else 5),
        mounters=chosen,
        groups=groups,
        wan=not args.no_wan,
        loopback=not args.no_loopback,
        wan_emulator=args.wan_emulator,
        workdir=workdir,
        data_dir=args.data_dir or workdir / "data",
        results_dir=args.results_dir,
        remove_workdir=not args.keep_workdir,
        complete=(
            set(chosen) == set(mounters.ALL)
            and groups == set(ROW_GROUPS)
            and not args.no_wan
            and not args.no_loopback
            and args.size_scale == 1.0
        ),
        command=shlex.join(["python", Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
    )


def _scaled(nbytes: int, factor: float) -> int:
    return max(MIB, int(nbytes * factor) // MIB * MIB)


if __name__ == "__main__":
    sys.exit(main())
