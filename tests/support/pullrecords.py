"""What a pull's partial files record as on disk, read as the pull itself reads it in this boot
(`modelfs.pull.partfiles.read_records`: the one parser of the record format)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from modelfs.pull.partfiles import HEADER_SIZE, PULL_DIR, read_records


def recorded_blocks(dest: Path) -> set[int]:
    """The block indexes the records of every partial file under `dest` hold (a record that
    goes away meanwhile, its file finished, counts for nothing)."""
    found: set[int] = set()
    for record in (dest / PULL_DIR / "partial").glob("*.blocks"):
        with contextlib.suppress(FileNotFoundError):
            data = record.read_bytes()
            own = data[:HEADER_SIZE]  # its own header: this boot, its version
            found |= read_records(data, own)[0]
    return found
