"""`Pieces`: a stream of byte pieces of any size, regrouped into chunks of a fixed size.

A `SourceList` reads a source in small pieces (to watch its rate) and hands its caller chunks
of the size asked for, across sources: a range that moved on part way joins up without a gap.
"""

from __future__ import annotations

from collections.abc import Iterator


class Pieces:
    """Pieces joined into chunks of `chunk` bytes (one copy per chunk, none if they fit)."""

    def __init__(self, chunk: int) -> None:
        self._chunk = chunk
        self._pieces: list[bytes] = []
        self._size = 0

    def add(self, piece: bytes) -> Iterator[bytes]:
        if not self._pieces and len(piece) == self._chunk:
            yield piece
            return
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size >= self._chunk:
            joined = b"".join(self._pieces)
            cut = len(joined) - len(joined) % self._chunk
            for offset in range(0, cut, self._chunk):
                yield joined[offset : offset + self._chunk]
            rest = joined[cut:]
            self._pieces, self._size = ([rest] if rest else []), len(rest)

    def rest(self) -> Iterator[bytes]:
        if self._pieces:
            yield b"".join(self._pieces)
        self._pieces, self._size = [], 0
