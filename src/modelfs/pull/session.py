"""One `modelfs pull`, from the command line to the summary: plan, skip, check the disk,
pull with progress, and say what happened (see `engine` for the pull itself)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from modelfs import console
from modelfs.config.units import format_size
from modelfs.memory import tune_malloc
from modelfs.pull.engine import (
    Puller,
    PullFile,
    PullOptions,
    PullResult,
    bytes_to_fetch,
    check_space,
)
from modelfs.pull.plan import auth_headers, make_plan
from modelfs.pull.progress import Counters, PlainEvents, events_for
from modelfs.pull.state import PullState
from modelfs.store.sourcespec import SourceSettings

_TICK = 0.2  # seconds between two looks at the progress counters


def settings_of(args: argparse.Namespace) -> SourceSettings:
    return SourceSettings(
        transfers=args.transfers,
        stall_timeout=args.stall_timeout,
        min_rate=args.min_rate,
        headers=auth_headers(args.token_file),
    )


def cmd_pull(args: argparse.Namespace) -> int:
    console.setup_logging(verbose=args.verbose, command="pull")
    plan = make_plan(
        args.src, args.config, settings_of(args), args.source, args.include, args.exclude
    )
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    needed = PullState(dest).pending(plan.files)
    fetching = {file.path for file in needed}
    skipped = [file for file in plan.files if file.path not in fetching]
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
    tune_malloc(args.max_memory)  # as a mount: blocks reuse freed heap, two arenas at most
    puller = Puller(plan.sources, dest, options, events)
    try:
        result = trio.run(_pull_with_progress, puller, needed, skipped, events)
    except BaseExceptionGroup as group:  # trio's nurseries wrap what their tasks raise
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None  # Ctrl-C: exit 130, no traceback
        raise
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
