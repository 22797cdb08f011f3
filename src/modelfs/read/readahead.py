"""Readahead for one open file: when to fetch ahead, and the GETs that do it.

`ReadaheadPolicy` is pure logic (no I/O, no time), tested on its own:
- a read that starts where the previous one ended, or a little after it (the kernel's readahead
  may skip ahead or arrive out of order), is sequential; anything else is a seek;
- on a sequential read the window doubles, from `initial` up to `maximum`, and the policy asks
  for everything up to `position + window` to be fetched; it asks again once the reader has
  consumed a part's worth (`initial`) of it, so requests come in whole parts and the window
  stays full (on a link with a per-connection limit every part in flight is throughput);
- a seek resets the window and asks to abandon the parts fetched ahead of the old position.

`HandlePrefetcher` applies the policy with the `BlockFetcher`: it issues part-sized GETs (only
as many as there are free prefetch slots, so queued prefetch never sits in front of a reader)
and abandons them on a seek.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfs.objects import ObjectInfo
from modelfs.read.fetcher import BlockFetcher
from modelfs.read.tickets import FetchTicket


@dataclass(frozen=True, slots=True)
class ReadaheadDecision:
    fetch_from: int  # byte offsets; an empty range means nothing to fetch
    fetch_to: int
    abandon: bool  # the reader seeked: abandon parts fetched for the old position


class ReadaheadPolicy:
    def __init__(self, initial: int, maximum: int, *, tolerance: int) -> None:
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.tolerance = tolerance  # forward jump still counted as sequential
        self.window = 0
        self._expected = 0  # where the next sequential read starts
        self._requested_to = 0  # everything before this was already asked for
        self._sequential = False

    def on_read(self, offset: int, size: int, file_size: int) -> ReadaheadDecision:
        end = min(offset + size, file_size)
        sequential = self._expected <= offset <= self._expected + self.tolerance or (
            offset < self._expected and end > self._expected - self.tolerance and self._sequential
        )
        abandon = False
        if offset == 0 or sequential:
            self._sequential = True
            self.window = self.initial if self.window == 0 else min(self.window * 2, self.maximum)
        else:
            abandon = self._sequential
            self._sequential = False
            self.window = 0
            self._requested_to = 0
        self._expected = max(self._expected, end) if sequential else end
        if not self._sequential:
            return ReadaheadDecision(0, 0, abandon)
        part_free = end >= self._requested_to - (self.window - self.initial)
        if not part_free:
            return ReadaheadDecision(0, 0, abandon)
        fetch_from = max(end, self._requested_to)
        fetch_to = min(end + self.window, file_size)
        if fetch_to <= fetch_from:
            return ReadaheadDecision(0, 0, abandon)
        self._requested_to = fetch_to
        return ReadaheadDecision(fetch_from, fetch_to, abandon)


class HandlePrefetcher:
    """Readahead for one open file handle.

    The policy says how far ahead to fetch (`_target`); `_cursor` is the first block not yet
    handed to the fetcher. Every read tops up the parts in flight from the cursor towards the
    target, at most `max_parts` at a time: what does not fit now is fetched on a later read, so
    no requested range is ever skipped."""

    def __init__(
        self,
        fetcher: BlockFetcher,
        info: ObjectInfo,
        policy: ReadaheadPolicy,
        part_size: int,
        max_parts: int,
    ) -> None:
        self._fetcher = fetcher
        self._info = info
        self._policy = policy
        self._part_blocks = max(1, part_size // fetcher.block_size)
        self._max_parts = max(0, max_parts)  # 0: reads only, nothing ahead
        self._tickets: list[FetchTicket] = []
        self._cursor = 0  # block index
        self._target = 0  # block index (exclusive)

    @property
    def sequential(self) -> bool:
        return self._policy.window > 0

    @property
    def tickets(self) -> tuple[FetchTicket, ...]:
        """The readahead GETs in flight (abandoned on a seek)."""
        return tuple(self._tickets)

    def on_read(self, offset: int, size: int) -> None:
        decision = self._policy.on_read(offset, size, self._info.size)
        block = self._fetcher.block_size
        if decision.abandon:
            self.close()
        if decision.fetch_to > decision.fetch_from:
            first = decision.fetch_from // block
            # A window end inside a block is not worth a GET of its own (a 1-block part
            # fetched beside the first one slowed the first byte); the next read asks for it.
            whole = decision.fetch_to == self._info.size
            last = -(-decision.fetch_to // block) if whole else decision.fetch_to // block
            last = max(last, first + 1)
            self._fetcher.advise_cached(self._info, first, last)
            if first > self._target or decision.abandon:
                self._cursor = first
            self._target = max(self._target, last)
        self._tickets = [t for t in self._tickets if not t.finished]
        if self.sequential:
            self._cursor = max(self._cursor, (offset + size) // block)
            self._top_up()

    def _top_up(self) -> None:
        fetcher, info = self._fetcher, self._info
        while self._cursor < self._target and len(self._tickets) < self._max_parts:
            if fetcher.is_present(info.id, self._cursor):
                self._cursor += 1
                continue
            count = min(self._part_blocks, self._target - self._cursor)
            ticket = fetcher.start_fetch(info, self._cursor, count, prefetch=True)
            if ticket is None:
                self._cursor += 1
                continue
            self._tickets.append(ticket)
            self._cursor += ticket.count

    def close(self) -> None:
        for ticket in self._tickets:
            self._fetcher.abandon(ticket)
        self._tickets.clear()
        self._cursor = self._target = 0
