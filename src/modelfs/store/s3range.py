"""`RangeReader`: bytes [start, end) of one object version, resumed after a broken connection.

One GET at a time, opened lazily on the first read by the store's `open_range` (the lean
lane's GET, or botocore's with its retries: every one carries If-Match, so no byte of another
version is ever returned). The body is read in pieces of the caller's size, so memory stays at
one piece.

Invariant: `_position` is the offset of the next byte the caller gets. When the connection
breaks mid-body, the body is dropped and a new GET starts at `_position`, so the caller never
sees a byte twice and a reset costs a re-request, not a failed read; after `max_attempts`
broken bodies the last failure is raised as a domain error by the `Translator` (`S3Errors`
for S3, the URL store's own table for links).

Not thread safe: one reader belongs to one call of `get_range` or `iter_range`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from modelfs.errors import ModelfsError
from modelfs.objects import ObjectId
from modelfs.store.s3errors import TRANSPORT_ERRORS


class Body(Protocol):
    """A response body as botocore's StreamingBody and the lean lane's LeanBody offer it."""

    def read(self, amount: int) -> bytes: ...

    def close(self) -> None: ...


# (obj, start, end) -> the body of one If-Match GET of bytes [start, end) of `obj`.
OpenRange = Callable[[ObjectId, int, int], Body]


class Translator(Protocol):
    """Turns a failure of the transport into the domain error to raise (`S3Errors` does)."""

    def translate(
        self, exc: BaseException, operation: str, key: str | None = None
    ) -> ModelfsError: ...


class RangeReader:
    """See the module docstring."""

    def __init__(
        self,
        open_range: OpenRange,
        translator: Translator,
        max_attempts: int,
        obj: ObjectId,
        start: int,
        end: int,
    ) -> None:
        self._open_range = open_range
        self._translator = translator
        self._max_attempts = max_attempts
        self._obj = obj
        self._position = start
        self._end = end
        self._body: Body | None = None
        self._broken_streams = 0

    def read(self, amount: int) -> bytes:
        """Exactly `amount` bytes, fewer only where the range (or the object) ends."""
        amount = min(amount, self._end - self._position)
        pieces: list[bytes] = []
        wanted = amount
        while wanted > 0:
            piece = self._read_some(wanted)
            if not piece:
                break  # the object is shorter than the range asked for
            if len(piece) == amount:
                return piece  # the common case: one piece, no copy
            pieces.append(piece)
            wanted -= len(piece)
        return b"".join(pieces)

    def close(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                body.close()

    def _read_some(self, wanted: int) -> bytes:
        while True:
            if self._body is None:
                self._body = self._open_range(self._obj, self._position, self._end)
            try:
                piece = self._body.read(wanted)
            except TRANSPORT_ERRORS as exc:
                self.close()
                self._broken_streams += 1
                if self._broken_streams >= self._max_attempts:
                    raise self._translator.translate(exc, "GET", self._obj.key) from exc
                continue
            self._position += len(piece)
            return piece
