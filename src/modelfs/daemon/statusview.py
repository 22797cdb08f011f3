"""`modelfs status`: a mount's figures as lines, once or (`--watch`) refreshed every second.

The figures are the control socket's `status` answer (`daemon.figures.MountFigures`), the same
snapshot `/metrics` serves: the store (online, offline, credentials refused: since when and
why), cache, reads and their latency, fetches and errors by code, memory, the upload queue.
`status_lines` words them; `--watch` adds what changed in the last interval (rates, and the
latency quantiles of the reads made in it) and redraws them in place with rich on a terminal,
or prints them as plain blocks, one per interval, when stdout is not a terminal (a log, a
pipe). `--watch --json` prints one JSON object per line. Ctrl-C ends the watch with exit 0; a
mount that stops answering ends it with an error line and exit 1.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from modelfs import console
from modelfs.config.units import format_duration, format_size
from modelfs.core.latency import LatencyStatistics
from modelfs.errors import ModelfsError

Answer = dict[str, Any]
_QUANTILES = (0.5, 0.9, 0.99)
_SOURCE_EVENTS = (
    ("failures", "failed"),
    ("slow", "below the floor"),
    ("missing", "missing"),
    ("other_version", "other versions"),
    ("fetch_waits", "waited for while it fetched from its origin"),
)


def _latency(answer: Answer) -> LatencyStatistics | None:
    shown = answer.get("read_latency")
    if not shown:
        return None
    return LatencyStatistics(
        tuple(shown["bounds"]), tuple(shown["counts"]), shown["total"], shown["count"]
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "> 10s"
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _quantiles(latency: LatencyStatistics) -> str:
    if latency.count == 0:
        return "no reads yet"
    shown = ", ".join(f"p{round(q * 100)} <= {_seconds(latency.quantile(q))}" for q in _QUANTILES)
    return f"{shown} (of {latency.count} reads)"


def _errors(counts: dict[str, int]) -> str:
    return ", ".join(f"{code} {count}" for code, count in sorted(counts.items())) or "none"


def _sources(sources: Answer) -> str:
    parts = [
        f"{name} {format_size(counts['bytes'])}"
        + "".join(f", {counts[what]} {label}" for what, label in _SOURCE_EVENTS if counts.get(what))
        for name, counts in sources["by_source"].items()
    ]
    return f"{'; '.join(parts)}; {sources['fallbacks']} reads moved on"


def store_line(store: dict[str, Any]) -> str:
    """'online', or 'offline since 2025-01-02 10:00:00 (5m ago): REASON' (likewise
    'credentials refused since ...')."""
    text = str(store.get("state", "unknown"))
    since = store.get("since")
    if isinstance(since, int | float):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        text += f" since {when} ({format_duration(time.time() - since)} ago)"
    if store.get("reason"):
        text += f": {store['reason']}"
    return text


def status_lines(answer: Answer) -> list[str]:
    """The figures of one `status` answer, a header line first."""
    store = answer.get("store") or {}
    state = store.get("state", "offline" if answer.get("offline") else "online")
    where = f"{answer.get('source')} on {answer.get('mountpoint')}"
    lines = [f"{where} (pid {answer.get('pid')}, up {answer.get('uptime')}s, {state})"]
    if store:
        lines.append(f"store: {store_line(store)}")
    cache = answer.get("cache", {})
    if cache:
        used, limit = format_size(cache["bytes"]), format_size(cache["max_bytes"])
        lines.append(
            f"cache: {used} of {limit} in {cache['blocks']} blocks, {cache['hits']} hits,"
            f" {cache['misses']} misses, {cache['evictions']} evictions,"
            f" {cache['corrupt']} corrupt, {format_size(cache.get('pinned_bytes', 0))} pinned"
            f" ({cache.get('pinned_files', 0)} file(s))"
        )
    fs = answer.get("fs", {})
    if fs:
        lines.append(
            f"reads: {fs['reads']} requests, {format_size(fs['bytes_read'])} served,"
            f" {fs['open_files']} files open, {format_size(fs['dropped_behind'])} of page cache"
            " dropped behind readers"
        )
    latency = _latency(answer)
    if latency is not None:
        lines.append(f"latency: {_quantiles(latency)}")
    fetcher = answer.get("fetcher", {})
    if fetcher:
        lines.append(
            f"fetched: {format_size(fetcher['bytes_fetched'])} in {fetcher['gets']} GETs,"
            f" errors: {_errors(fetcher.get('errors', {}))}"
        )
    sources = answer.get("sources")
    if sources:
        lines.append(f"sources: {_sources(sources)}")
    memory = answer.get("memory", {})
    if memory:
        lines.append(
            f"memory: {format_size(memory['in_use'])} in use of {format_size(memory['limit'])},"
            f" peak {format_size(memory['peak'])}, {memory['waits']} waits for room"
        )
    upload = answer.get("writeback")
    if upload:
        queued = format_size(int(upload.get("bytes", 0)))
        lines.append(
            f"upload queue: {upload.get('files', 0)} files, {queued},"
            f" oldest {upload.get('oldest_age', 0):.0f}s,"
            f" last error: {upload.get('last_error') or 'none'}"
            + (f", errors: {_errors(upload['errors'])}" if upload.get("errors") else "")
        )
        for failure in upload.get("failures") or ():
            lines.append(f"not uploaded, held until `modelfs sync` or the next mount: {failure}")
    return lines


def change_lines(answer: Answer, previous: Answer, seconds: float) -> list[str]:
    """What changed since `previous`, `seconds` earlier: rates and the latest reads' latency."""
    per_second = max(seconds, 1e-3)

    def rate(section: str, key: str) -> float:
        now, then = answer.get(section) or {}, previous.get(section) or {}
        return float(now.get(key, 0) - then.get(key, 0)) / per_second

    lines = [
        f"last {seconds:.1f}s: {rate('fs', 'reads'):.0f} reads/s,"
        f" {format_size(int(rate('fs', 'bytes_read')))}/s served,"
        f" {format_size(int(rate('fetcher', 'bytes_fetched')))}/s fetched,"
        f" {rate('fetcher', 'gets'):.0f} GETs/s, {rate('cache', 'hits'):.0f} cache hits/s"
    ]
    now, then = _latency(answer), _latency(previous)
    if now is not None and then is not None and now.count > then.count:
        lines.append(f"latest latency: {_quantiles(now.since(then))}")
    return lines


def _table(lines: list[str]) -> Group:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for line in lines[1:]:
        label, _, rest = line.partition(": ")
        table.add_row(label, rest)
    return Group(Text(lines[0], style="bold"), table)


def watch(ask: Callable[[], Answer], *, json_lines: bool, interval: float = 1.0) -> int:
    """Show `ask()`'s answer every `interval` until Ctrl-C (exit 0)."""
    out = Console()
    live = None if json_lines or not out.is_terminal else Live(console=out, auto_refresh=False)
    previous: tuple[float, Answer] | None = None
    try:
        if live is not None:
            live.start()
        while True:
            try:
                answer = ask()
            except ModelfsError as exc:
                if previous is None:
                    raise
                raise ModelfsError(f"the mount stopped answering: {exc}") from exc
            now = time.monotonic()
            lines = status_lines(answer)
            if previous is not None:
                lines += change_lines(answer, previous[1], now - previous[0])
            previous = (now, answer)
            if json_lines:
                print(json.dumps(answer), flush=True)
            elif live is not None:
                live.update(_table(lines), refresh=True)
            else:
                print(f"--- {time.strftime('%H:%M:%S')}", *lines, sep="\n", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return console.EXIT_OK
    finally:
        if live is not None:
            live.stop()
        sys.stdout.flush()
