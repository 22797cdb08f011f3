"""The fetcher's GETs in flight and its blocks in flight: who owns (delivers) each block, and
which GETs go first.

A `FetchTicket` is one ranged GET of a run of consecutive blocks; each block it claimed has an
`Inflight` entry in the fetcher's table, owned by the ticket until the ticket delivers it. A
demand GET may take a block over from a background GET still far from it (`Claims.take_over`,
see `read.fetcher`): ownership changes only under the `Claims` lock, taken by the trio thread
(taking over) and by the GET's worker thread (delivering, failing), so exactly one GET delivers
each block, and it is published and written to the cache once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import trio

from modelfs.objects import ObjectId

# A reader takes over a block from a background GET still this many blocks away from it: one
# block away, waiting costs less than a request of its own and the bytes read twice.
STEAL_DISTANCE = 2
# A background GET holds back its next block this long at most while a reader's own GET runs.
DEMAND_FIRST = 0.05


class Abandoned(Exception):
    """The GET that owned this block stopped before reaching it (not an error for readers)."""


@dataclass
class Inflight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None
    on_disk: bool = False  # the cache write finished (it may overtake the publish callback)
    consumed: bool = False  # a reader has read to its end: drop it once it is on disk
    owner: FetchTicket | None = None  # the GET that delivers it; None once delivered


@dataclass
class FetchTicket:
    """Handle on a GET, used to abandon it when its reader seeks away."""

    obj: ObjectId
    first: int
    count: int
    prefetch: bool = True  # a background GET (readahead, whole-object fetch, small-file burst)
    entries: list[Inflight] = field(default_factory=list)  # of blocks first.. (claimed)
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    position: int = 0  # the next block its stream delivers (set by its worker thread)


class Claims:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def deliver(self, entry: Inflight, ticket: FetchTicket) -> bool:
        """Whether `ticket` still owns `entry` and so delivers (or fails) it; it then owns
        it no more."""
        with self._lock:
            if entry.owner is not ticket:
                return False
            entry.owner = None
            return True

    def take_over(self, entry: Inflight, index: int) -> FetchTicket | None:
        """A demand ticket for block `index` that now owns `entry`, if its owner is a
        background GET at least STEAL_DISTANCE blocks from it; else None."""
        owner = entry.owner
        if owner is None or not owner.prefetch or index - owner.position < STEAL_DISTANCE:
            return None
        ticket = FetchTicket(owner.obj, index, 1, prefetch=False, entries=[entry], position=index)
        with self._lock:
            if entry.owner is not owner:
                return None  # delivered meanwhile
            entry.owner = ticket
        return ticket


class DemandFirst:
    """A reader's own GET goes first until it delivers its first block (the one the reader
    waits for): meanwhile background GETs hold back their next block (DEMAND_FIRST at most, so
    they never starve), and the rest of its run is background like them (`demote`). A random
    reader of a file being fetched whole otherwise waited behind a dozen streams for the GIL,
    the server and the link."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the count and the tickets' `prefetch` flags
        self._running = 0
        self._none = threading.Event()  # set while no demand GET waits for its first block
        self._none.set()

    def started(self, ticket: FetchTicket) -> None:
        with self._lock:
            if not ticket.prefetch:
                self._running += 1
                self._none.clear()

    def demote(self, ticket: FetchTicket) -> None:
        """`ticket` delivered its first block (or ended): it is background from now on."""
        with self._lock:
            if ticket.prefetch:
                return
            ticket.prefetch = True
            self._running -= 1
            if self._running == 0:
                self._none.set()

    def hold_back(self, ticket: FetchTicket) -> None:
        """Worker thread, before each block of `ticket`'s stream."""
        if ticket.prefetch:
            self._none.wait(DEMAND_FIRST)
