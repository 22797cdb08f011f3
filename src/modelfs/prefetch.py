"""Readahead for one open file, and whole-object background fetches for model files.

`ReadaheadPolicy` is pure logic (no I/O, no time), tested on its own:
- a read that starts where the previous one ended, or a little after it (the kernel's readahead
  may skip ahead or arrive out of order), is sequential; anything else is a seek;
- on a sequential read the window doubles, from `initial` up to `maximum`, and the policy asks
  for everything up to `position + window` to be fetched; it asks again only once the reader has
  consumed half of what was asked for, so requests come in large parts;
- a seek resets the window and asks to abandon the parts fetched ahead of the old position.

`HandlePrefetcher` applies the policy with the `BlockFetcher`: it issues part-sized GETs (only
as many as there are free prefetch slots, so queued prefetch never sits in front of a reader)
and abandons them on a seek.

`WholeObjectFetch` pulls a whole object into the cache with up to `transfers` parallel parts;
used on open for large model files, which are read through mmap in scattered 4 KiB faults. It
pauses while a reader streams through the object sequentially (that reader's readahead then
fetches), and fills in the rest when the reader stops or seeks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .fetcher import BlockFetcher, FetchTicket
from .values import ObjectId, ObjectInfo

log = logging.getLogger(__name__)

STREAMING_POLL = 0.05  # seconds between two looks at whether a reader still streams


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
        half_consumed = end >= self._requested_to - self.window // 2
        if not half_consumed:
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
        self._max_parts = max(1, max_parts)
        self._tickets: list[FetchTicket] = []
        self._cursor = 0  # block index
        self._target = 0  # block index (exclusive)

    @property
    def sequential(self) -> bool:
        return self._policy.window > 0

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


class WholeObjectFetch:
    """Fetch every missing block of one object version with `parallel` concurrent parts."""

    def __init__(
        self,
        fetcher: BlockFetcher,
        info: ObjectInfo,
        *,
        part_size: int,
        parallel: int,
        reader_streaming: Callable[[], bool] = lambda: False,
    ) -> None:
        self._fetcher = fetcher
        self._info = info
        self._reader_streaming = reader_streaming
        self._part_blocks = max(1, part_size // fetcher.block_size)
        self._parallel = max(1, parallel)
        self.done = trio.Event()
        self.error: BaseException | None = None

    @property
    def object_id(self) -> ObjectId:
        return self._info.id

    async def run(self) -> None:
        try:
            await self._run()
            if self.error is not None:
                log.warning("background fetch of %s stopped: %s", self._info.key, self.error)
        finally:
            self.done.set()

    async def _run(self) -> None:
        fetcher, info = self._fetcher, self._info
        total = fetcher.block_count(info)
        slots = trio.Semaphore(self._parallel)
        index = 0
        async with trio.open_nursery() as nursery:
            while index < total and self.error is None:
                if fetcher.is_present(info.id, index):
                    index += 1
                    continue
                if index > 0:
                    # The app's first read is almost always at 0 (a safetensors header): let
                    # block 0 arrive, whoever asked for it, before the other parts compete
                    # with it for the server and the CPU (opening a 1 GiB .bin file: first
                    # byte 71 ms with all parts started at once).
                    await fetcher.wait_for(info.id, 0)
                    await self._yield_to_streaming_reader()
                await slots.acquire()
                ticket = fetcher.start_fetch(info, index, self._part_blocks, prefetch=True)
                if ticket is None:
                    slots.release()
                    continue
                nursery.start_soon(self._await_part, ticket, slots)
                index += ticket.count

    async def _yield_to_streaming_reader(self) -> None:
        """Start no part while a reader streams through the object: its readahead fetches as
        many parts at once, at the pace it reads. Run ahead of it, the parts outgrow the RAM
        kept for the reader, and it reads them back from the disk (docs/performance.md, read
        engine item 4)."""
        # Polled: "streaming" ends by the passing of time (no read for a while), not by an
        # event anything could set.
        while self._reader_streaming():  # noqa: ASYNC110
            await trio.sleep(STREAMING_POLL)

    async def _await_part(self, ticket: FetchTicket, slots: trio.Semaphore) -> None:
        try:
            # The last block of a part is published last: once it is done, the part is.
            error = await self._fetcher.wait_for(ticket.obj, ticket.first + ticket.count - 1)
            if error is not None and self.error is None:
                self.error = error
        finally:
            slots.release()
