"""Whether a mount's store answers: online, offline (unreachable), or refusing our credentials.

Owns the state of the store as the mount's requests see it, and the one log line of each
change of state:
- ONLINE: requests go out as usual.
- OFFLINE: the store did not answer (connection refused or reset, timeouts, 5xx after retries)
  and a probe confirmed it. Requests are refused at once with `StoreOffline` (EIO) instead of
  each waiting for its timeouts: the namespace then serves the last known listings and the
  block cache what it holds. Only probes go out, every `probe_interval`; the first that
  answers ends the outage.
- REFUSED: the store answers 403 to the bucket itself (keys expired, revoked or rotated away).
  Requests still go out, since new keys may arrive at any moment (the config file is re-read,
  the credential chain refreshes); the first one that succeeds ends it, and counts as a
  renewal (`renewals`: the daemon then tries the uploads refused before once more).

A failed request only makes the state suspect; a probe (`GuardedStore.check_bucket`: a HEAD of
the bucket with short timeouts and no retries) decides. So a 5xx storm on one key, or one key
a policy denies, changes nothing. A request in flight with no answer for `stall_after` makes
the state suspect too: a blackholed store hangs rather than fails.

The probe itself is sent by the daemon (`daemon.storewatch`), which asks `probe_due`.

Thread safe: worker threads report outcomes. `_lock` guards the state and the in-flight count
only, is never held across I/O or while taking another lock; the fast path of a success (ONLINE,
nothing suspect) takes no lock.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelfs.errors import AccessDenied, ModelfsError, StoreOffline, StoreUnavailable

log = logging.getLogger(__name__)

PROBE_INTERVAL = 2.0  # while offline or refused: one HEAD of the bucket this often
STALL_AFTER = 15.0  # a request with no answer this long makes the store suspect


class StoreState(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    REFUSED = "credentials refused"


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    state: str  # a `StoreState` value
    since: float | None  # epoch seconds the store went offline or refused; None: online
    reason: str | None  # the error that made it so


class StoreHealth:
    """See the module docstring. `offline`: the error of a probe at mount time, if the mount
    starts without its store (its line is the mount's own warning, not logged here)."""

    def __init__(
        self,
        *,
        offline: StoreUnavailable | None = None,
        probe_interval: float = PROBE_INTERVAL,
        stall_after: float = STALL_AFTER,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall_clock
        self._probe_interval = probe_interval
        self._stall_after = stall_after
        self._lock = threading.Lock()
        self._state = StoreState.ONLINE
        self._since = wall_clock()
        self._reason = ""
        self._suspect = False
        self._last_probe = -float("inf")
        self._inflight = 0
        self._last_answer = clock()
        self.renewals = 0  # times refused credentials were accepted again
        if offline is not None:
            self._state, self._reason = StoreState.OFFLINE, str(offline)
            self._last_probe = clock()

    @property
    def state(self) -> StoreState:
        return self._state

    # -- what requests report ------------------------------------------------------------

    def gate(self) -> None:
        """Before a request: refuse it at once while the store is known to be unreachable."""
        if self._state is StoreState.OFFLINE:
            when = time.strftime("%H:%M:%S", time.localtime(self._since))
            raise StoreOffline(f"the store is unreachable (since {when}): {self._reason}")

    def started(self) -> None:
        with self._lock:
            if self._inflight == 0:
                self._last_answer = self._clock()  # stalls count from the first request
            self._inflight += 1

    def finished(self) -> None:
        with self._lock:
            self._inflight -= 1

    def answered(self) -> None:
        """The store answered a request (or sent more of a body)."""
        self._last_answer = self._clock()
        if self._state is StoreState.ONLINE and not self._suspect:
            return
        self._to(StoreState.ONLINE, "")

    def failed(self, error: ModelfsError) -> None:
        """A request failed with `error` (after the store's own retries)."""
        if isinstance(error, StoreOffline):
            return
        if isinstance(error, StoreUnavailable | AccessDenied):
            self._suspect = True  # a probe decides
            return
        self.answered()  # 404, 412, ...: the store answered

    # -- what the prober asks and reports ------------------------------------------------

    def probe_due(self) -> bool:
        """Whether a probe should go out now (see the module docstring)."""
        now = self._clock()
        if now - self._last_probe < self._probe_interval:
            return False
        if self._state is not StoreState.ONLINE or self._suspect:
            return True
        stalled = self._inflight > 0 and now - self._last_answer > self._stall_after
        return stalled

    def probed(self, error: ModelfsError | None) -> None:
        """The outcome of a probe: None (the bucket answered) or its error."""
        self._last_probe = self._clock()
        if isinstance(error, StoreUnavailable):
            self._to(StoreState.OFFLINE, str(error))
        elif isinstance(error, AccessDenied):
            self._to(StoreState.REFUSED, str(error))
        else:
            self.answered()

    # -- transitions ---------------------------------------------------------------------

    def _to(self, state: StoreState, reason: str) -> None:
        with self._lock:
            self._suspect = False
            before, since = self._state, self._since
            if before is state:
                return
            self._state, self._since, self._reason = state, self._wall(), reason
            if before is StoreState.REFUSED and state is StoreState.ONLINE:
                self.renewals += 1
        _log_change(before, state, reason, self._wall() - since)

    def statistics(self) -> StoreStatistics:
        """For `modelfs status` and `/metrics`: the state, since when and why."""
        with self._lock:
            state, since, reason = self._state, self._since, self._reason
        online = state is StoreState.ONLINE
        return StoreStatistics(state.value, None if online else since, None if online else reason)


def _log_change(before: StoreState, after: StoreState, reason: str, lasted: float) -> None:
    if after is StoreState.OFFLINE:
        log.warning(
            "store unreachable: %s; serving the last known listings and cached data, reads "
            "that need the store fail with EIO until it answers",
            reason,
        )
    elif after is StoreState.REFUSED:
        log.error(
            "credentials refused: %s; every request fails with EACCES until the keys work "
            "(the config file is re-read when it changes)",
            reason,
        )
    elif before is StoreState.OFFLINE:
        log.warning("store reachable again after %.0fs offline", lasted)
    else:
        log.warning("credentials accepted again after %.0fs refused", lasted)
