"""What a pull shows while it runs: a progress bar, plain lines, or JSON events.

- On a terminal: a `rich` progress bar with the bytes done of the total, the rate, the time
  left and the files being fetched; it ends at 100% when everything is there.
- Otherwise (a log, CI, systemd): one plain line every `interval` seconds, and one at the end.
- `--json`: one JSON object per line: `plan`, `file` (started, done, skipped, failed),
  `progress` every `interval` seconds, and `summary`.

All three are `PullEvents`, called from any of the pull's threads (the fetcher's writer
threads, the small-file lane's workers, the trio thread): one lock guards the counters, and
another each output stream, so lines never interleave.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from modelfs.config.units import format_size
from modelfs.pull.engine import PullFile


class Counters:
    """Bytes and files of a pull so far (thread safe)."""

    def __init__(self, total_bytes: int, total_files: int, label: str = "pull") -> None:
        self.label = label  # what the lines and the bar say they show (`pull`, `warm`)
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.done_bytes = 0
        self.done_files = 0
        self.current: dict[str, int] = {}  # files in flight -> size
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes

    def start(self, file: PullFile, present: int) -> None:
        with self._lock:
            self.current[file.path] = file.size
            self.done_bytes += present  # resumed: already on disk

    def finish(self, file: PullFile) -> None:
        with self._lock:
            self.current.pop(file.path, None)
            self.done_files += 1

    def current_paths(self, count: int) -> list[str]:
        """Up to `count` of the files in flight."""
        with self._lock:
            return list(itertools.islice(self.current, count))

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.done_bytes / elapsed

    def line(self) -> str:
        with self._lock:
            done, total = self.done_bytes, self.total_bytes
            files = f"{self.done_files} of {self.total_files} files"
        percent = 100.0 if total == 0 else 100.0 * done / total
        rate = self.rate()
        eta = (total - done) / rate if rate > 0 else 0.0
        return (
            f"{self.label}: {format_size(done)} of {format_size(total)} ({percent:.0f}%), "
            f"{rate / 1e6:.1f} MB/s, {eta:.0f}s left, {files}"
        )


class PlainEvents:
    """One line every `interval` seconds (`tick`), errors as they happen, and a last line."""

    def __init__(self, counters: Counters, out: TextIO = sys.stderr, interval: float = 5.0):
        self.counters = counters
        self._out = out
        self._interval = interval
        self._last = time.monotonic()
        self._output = threading.Lock()

    def say(self, line: str) -> None:
        """One whole line on the output, whatever thread calls."""
        with self._output:
            self._out.write(line + "\n")
            self._out.flush()

    def file_started(self, file: PullFile, present: int) -> None:
        self.counters.start(file, present)

    def written(self, nbytes: int) -> None:
        self.counters.add(nbytes)

    def file_done(self, file: PullFile, skipped: bool) -> None:
        self.counters.finish(file)

    def file_failed(self, file: PullFile, error: str) -> None:
        self.counters.finish(file)
        self.say(f"pull: failed: {error}")

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self.say(self.counters.line())

    def close(self) -> None:
        self.say(self.counters.line())


class BarEvents(PlainEvents):
    """A progress bar on the terminal (rich)."""

    def __init__(self, counters: Counters, out: TextIO = sys.stderr) -> None:
        super().__init__(counters, out)
        from rich.progress import (  # only a terminal needs it
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task(counters.label, total=counters.total_bytes)
        self._progress.start()

    def file_failed(self, file: PullFile, error: str) -> None:
        self.counters.finish(file)
        self._progress.console.print(f"pull: failed: {error}")

    def tick(self) -> None:
        counters = self.counters
        current = ", ".join(counters.current_paths(2)) or counters.label
        self._progress.update(
            self._task, completed=counters.done_bytes, description=_shorten(current, 40)
        )

    def close(self) -> None:
        counters = self.counters
        self._progress.update(self._task, completed=counters.done_bytes, description=counters.label)
        self._progress.stop()


class JsonEvents(PlainEvents):
    """JSON lines on stdout, for scripts."""

    def __init__(self, counters: Counters, out: TextIO = sys.stdout, interval: float = 1.0):
        super().__init__(counters, out, interval)
        self.emit("plan", files=counters.total_files, bytes=counters.total_bytes)

    def emit(self, event: str, **fields: Any) -> None:
        self.say(json.dumps({"event": event, **fields}))

    def file_started(self, file: PullFile, present: int) -> None:
        super().file_started(file, present)
        self.emit("file", path=file.path, state="started", size=file.size, present=present)

    def file_done(self, file: PullFile, skipped: bool) -> None:
        super().file_done(file, skipped)
        state = "skipped" if skipped else "done"
        self.emit("file", path=file.path, state=state, size=file.size)

    def file_failed(self, file: PullFile, error: str) -> None:
        self.counters.finish(file)
        self.emit("file", path=file.path, state="failed", error=error)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._progress_event()

    def close(self) -> None:
        self._progress_event()

    def _progress_event(self) -> None:
        counters = self.counters
        self.emit(
            "progress",
            bytes=counters.done_bytes,
            total=counters.total_bytes,
            files=counters.done_files,
            rate=round(counters.rate()),
        )


def events_for(
    counters: Counters, *, json_lines: bool, terminal: Callable[[], bool] = sys.stderr.isatty
) -> PlainEvents:
    if json_lines:
        return JsonEvents(counters)
    if terminal():
        return BarEvents(counters)
    return PlainEvents(counters)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]
