"""The drill recorder: what one fault drill measured, and the table of every drill of a run.

A drill (`tests/drills/`) puts a real mount through one fault and keeps its numbers in a
`Drill`, handed out by the `drill` fixture:

    drill.read_whole(path, original)      read, every byte compared with the original
    drill.read_until_exact(path, ...)     the same, again after each error (timed as a whole)
    drill.compare(got, original)          bytes the drill read some other way
    drill.write_file(path, key, data)     a write the app sees acknowledged, by key and offset
    drill.ack(key, offset, data)          one the drill made itself (e.g. fsync, then kill -9)
    with drill.timed(): ...               any other blocking call, timed
    drill.settle(client, bucket)          at the end: count acknowledged writes not in the bucket
    drill.finish()                        assert no wrong byte, nothing lost, no stall too long

The numbers are measurements, never constants: `checked` counts bytes actually compared with
the original (a read that failed delivered no bytes, so none are counted), `wrong` the bytes that
differed (a short answer counts its missing bytes as wrong), `acked` the write calls that returned
success, `lost` those whose bytes are not at their offset of the object in the bucket at the end
(fetched with boto3 straight from the server), and `stall` the longest blocking call timed.

What counts as acknowledged depends on the promise the call makes, and each drill says which
it counts: by default a `write()` followed by a successful `close()` (write-back keeps a closed
file across kill -9); across a power loss, only what `fsync()` confirmed.

`DrillRow`s are collected in the pytest config's stash; `render_table` makes the one Markdown
table that `tests/drills/conftest.py` prints at the end of the run and writes to a file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_T = TypeVar("_T")
READ_CHUNK = 1 << 20  # what a model loader asks for per read()

HEADER = (
    "drill",
    "bytes read and checked",
    "wrong bytes",
    "writes acknowledged",
    "lost",
    "longest stall against its limit",
)


@dataclass
class DrillRow:
    """One line of the table."""

    name: str
    limit: float  # seconds: the timeout that should bound every blocking call of the drill
    checked: int = 0
    wrong: int = 0
    acked: int = 0
    lost: int = 0
    stall: float = 0.0
    outcome: str = "unfinished"  # "passed", "FAILED", "known failure" (xfail): how the test ended

    def cells(self) -> tuple[str, ...]:
        name = self.name if self.outcome == "passed" else f"{self.name} ({self.outcome})"
        return (
            name,
            f"{self.checked:,}",
            str(self.wrong),
            str(self.acked),
            str(self.lost),
            f"{self.stall:.1f} s / {self.limit:g} s",
        )


@dataclass(frozen=True, slots=True)
class Ack:
    """A write whose call returned success: these bytes at this offset of this key."""

    key: str
    offset: int
    data: bytes


@dataclass
class Drill:
    """The measurements of one drill (see the module docstring)."""

    row: DrillRow
    acks: list[Ack] = field(default_factory=list)
    settled: bool = False

    # -- reads -------------------------------------------------------------------------------

    def compare(self, got: bytes, original: bytes, offset: int = 0) -> int:
        """Count `got`, read at `offset`, against the original; returns the wrong bytes."""
        want = original[offset : offset + len(got)]
        wrong = len(got) - len(want)  # bytes past the original's end
        if got[: len(want)] != want:
            wrong += _mismatches(got[: len(want)], want)
        self.row.checked += len(got)
        self.row.wrong += wrong
        return wrong

    def read_whole(self, path: Path, original: bytes, chunk: int = READ_CHUNK) -> OSError | None:
        """Open and read `path` to its end a chunk at a time, every call timed, every byte
        compared. A short file counts its missing bytes as wrong. An error ends the read and
        is returned (its bytes were not delivered, so they are not counted)."""
        try:
            with self.timed():
                fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            return exc
        offset = 0
        try:
            while True:
                with self.timed():
                    piece = os.read(fd, chunk)
                if not piece:
                    break
                self.compare(piece, original, offset)
                offset += len(piece)
        except OSError as exc:
            return exc
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        if offset < len(original):  # the file ended early: what it lacks is wrong
            self.row.checked += len(original) - offset
            self.row.wrong += len(original) - offset
        return None

    def read_until_exact(self, path: Path, original: bytes, give_up: float) -> None:
        """Read `path` whole as an app that retries would, again after each error, until it
        comes back complete; the whole wait counts as one stall (AssertionError after
        `give_up` seconds)."""
        deadline = time.monotonic() + give_up
        with self.timed():
            while (failed := self.read_whole(path, original)) is not None:
                assert time.monotonic() < deadline, f"{path}: still {failed}"
                time.sleep(0.05)

    # -- writes ------------------------------------------------------------------------------

    def ack(self, key: str, offset: int, data: bytes) -> None:
        """A write whose call (and the call that promises it, see the docstring) succeeded."""
        self.acks.append(Ack(key, offset, bytes(data)))
        self.row.acked += 1

    def write_file(self, path: Path, key: str, data: bytes, chunk: int = READ_CHUNK) -> None:
        """Create `path` with `data` in `chunk`-sized write() calls; each write counts as
        acknowledged once close() returned. Every call is timed; errors propagate."""
        with self.timed():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        written: list[Ack] = []
        try:
            for offset in range(0, max(len(data), 1), chunk):
                piece = data[offset : offset + chunk]
                with self.timed():
                    os.write(fd, piece)
                written.append(Ack(key, offset, piece))
        finally:
            with self.timed():
                os.close(fd)
        for one in written:
            self.ack(one.key, one.offset, one.data)

    def settle(self, client: S3Client, bucket: str) -> int:
        """Count acknowledged writes whose bytes are not at their offset of the object in the
        bucket now; returns the number lost."""
        objects: dict[str, bytes | None] = {}
        for one in self.acks:
            if one.key not in objects:
                try:
                    body = client.get_object(Bucket=bucket, Key=one.key)["Body"]
                    objects[one.key] = body.read()
                except client.exceptions.NoSuchKey:
                    objects[one.key] = None
            held = objects[one.key]
            if held is None or held[one.offset : one.offset + len(one.data)] != one.data:
                self.row.lost += 1
        self.settled = True
        return self.row.lost

    # -- time --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Time the blocking call(s) inside; the longest is the drill's stall."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.row.stall = max(self.row.stall, time.monotonic() - started)

    def call(self, function: Callable[[], _T]) -> _T:
        with self.timed():
            return function()

    # -- the verdict -------------------------------------------------------------------------

    def finish(self) -> None:
        """Assert the drill's promise: no wrong byte, nothing acknowledged lost (the bucket was
        checked if anything was acknowledged), and no call blocked past the limit."""
        row = self.row
        assert row.wrong == 0, f"{row.name}: {row.wrong} wrong bytes of {row.checked} read"
        assert self.settled or not self.acks, f"{row.name}: the bucket was never checked"
        assert row.lost == 0, f"{row.name}: {row.lost} of {row.acked} acknowledged writes lost"
        assert row.stall <= row.limit, f"{row.name}: stalled {row.stall:.1f} s > {row.limit} s"


def _mismatches(got: bytes, want: bytes) -> int:
    """The number of positions where two equally long byte strings differ."""
    step = 1 << 16
    total = 0
    for start in range(0, len(got), step):
        a, b = got[start : start + step], want[start : start + step]
        if a != b:
            total += sum(x != y for x, y in zip(a, b, strict=True))
    return total


def render_table(rows: list[DrillRow]) -> str:
    """The drills as one Markdown table, in the order they ran."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_path(rootdir: Path) -> Path:
    """Where the table of the last run goes: $DRILL_TABLE, else ROOTDIR/.drills/last.md."""
    named = os.environ.get("DRILL_TABLE")
    return Path(named) if named else rootdir / ".drills" / "last.md"
