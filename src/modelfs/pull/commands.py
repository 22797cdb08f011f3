"""The commands without a mount: `pull`, `manifest create` and `verify`.

Exit codes, as every command: 0 done; 1 a runtime failure (a file that could not be fetched
or checked, too little disk space, a verify that found a problem); 2 bad input (a malformed
manifest, an unknown remote, a SRC that is none of the three kinds).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TypeAlias

import trio

from modelfs import console
from modelfs.config.options import parse_positive
from modelfs.config.units import format_size, parse_duration, parse_size
from modelfs.pull import create, verify
from modelfs.pull.engine import (
    Puller,
    PullFile,
    PullOptions,
    PullResult,
    bytes_to_fetch,
    check_space,
)
from modelfs.pull.plan import SourceSettings, make_plan
from modelfs.pull.progress import Counters, PlainEvents, events_for
from modelfs.pull.state import PullState

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
log = logging.getLogger("modelfs")

_TICK = 0.2  # seconds between two looks at the progress counters


def register(commands: Subparsers) -> None:
    pull = commands.add_parser(
        "pull",
        help="fetch a remote prefix, a manifest or a manifest URL into DEST, verified",
        description="SRC is REMOTE:BUCKET[/PREFIX], a manifest file, or a manifest URL.",
    )
    pull.add_argument("src", metavar="SRC")
    pull.add_argument("dest", metavar="DEST")
    add_source_arguments(pull)
    pull.add_argument("--include", action="append", default=[], metavar="GLOB")
    pull.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    pull.add_argument("--dry-run", action="store_true", help="say what would be fetched")
    pull.add_argument("--json", action="store_true", help="JSON lines, one per event")
    pull.add_argument("--part-size", type=parse_size, default="8M", metavar="SIZE")
    pull.add_argument("--max-memory", type=parse_size, default="256M", metavar="SIZE")
    pull.set_defaults(func=cmd_pull)
    create.register(commands)
    verify.register(commands)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Where bytes come from, and when a source is given up (shared by pull and verify)."""
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SOURCE",
        help="REMOTE:BUCKET/PREFIX or a base URL, tried before the manifest's (repeatable)",
    )
    parser.add_argument("--transfers", type=parse_positive, default="16", metavar="N")
    parser.add_argument(
        "--stall-timeout",
        type=parse_duration,
        default="30s",
        metavar="DUR",
        help="a source that sends nothing this long is left for the next (default 30s)",
    )
    parser.add_argument(
        "--min-rate",
        type=parse_size,
        default="0",
        metavar="SIZE",
        help="bytes/s below which a source is left for the next, over 10 s (default: none)",
    )


def settings_of(args: argparse.Namespace) -> SourceSettings:
    return SourceSettings(
        transfers=args.transfers, stall_timeout=args.stall_timeout, min_rate=args.min_rate
    )


def cmd_pull(args: argparse.Namespace) -> int:
    console.setup_logging(verbose=args.verbose, command="pull")
    plan = make_plan(
        args.src, args.config, settings_of(args), args.source, args.include, args.exclude
    )
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    needed = PullState(dest).pending(plan.files)
    skipped = [file for file in plan.files if file not in needed]
    if args.dry_run:
        return _dry_run(plan.description, needed, skipped, bytes_to_fetch(dest, needed))
    check_space(dest, needed)
    counters = Counters(sum(file.size for file in needed), len(plan.files))
    events = events_for(counters, json_lines=args.json)
    options = PullOptions(
        transfers=args.transfers,
        part_size=args.part_size,
        max_memory=args.max_memory,
        files_at_once=args.transfers,
    )
    puller = Puller(plan.sources, dest, options, events)
    result = trio.run(_pull_with_progress, puller, needed, skipped, events)
    return _summary(puller, result, events)


async def _pull_with_progress(
    puller: Puller, needed: list[PullFile], skipped: list[PullFile], events: PlainEvents
) -> PullResult:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_tick, events)
        result = await puller.pull(needed, skipped)
        nursery.cancel_scope.cancel()
    return result


async def _tick(events: PlainEvents) -> None:
    while True:
        events.tick()
        await trio.sleep(_TICK)


def _dry_run(description: str, needed: list[PullFile], skipped: list[PullFile], fetch: int) -> int:
    for file in needed:
        print(f"would fetch {file.path} ({format_size(file.size)})")
    print(
        f"{description}: {len(needed)} file(s) to fetch, {format_size(fetch)} from the network; "
        f"{len(skipped)} already complete"
    )
    return console.EXIT_OK


def _summary(puller: Puller, result: PullResult, events: PlainEvents) -> int:
    events.close()
    statistics = puller.sources.statistics()
    by_source = ", ".join(
        f"{name} {format_size(count)}" for name, count in statistics.bytes_by_source.items()
    )
    line = (
        f"pull: {len(result.fetched)} fetched, {len(result.skipped)} already complete, "
        f"{len(result.failed)} failed; bytes by source: {by_source or 'none'}"
    )
    print(line, file=sys.stderr)
    for error in result.failed:
        console.error_line(error)
    return console.EXIT_FAILURE if result.failed else console.EXIT_OK
