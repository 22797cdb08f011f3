"""Keeping the mount of a run alive: mount or heal it, watch it, drain and unmount it.

Every process here is `modelfs` itself as a subprocess (`python -m modelfs mount --daemon |
sync | unmount`), so the supervisor never holds a FUSE session, and a crash of the mount
cannot take the supervisor down with it. `MountKeeper` decides from `host.health.check_mount`:
a healthy mount of this spec is used as it is; a dead or hung one has its stuck daemon killed,
is detached and mounted again; a missing one is mounted; anything else is an error, never a
takeover. `Watchdog` checks every `watch_interval` while the app runs and heals a dead mount
at once, a hung one after a few hung probes in a row. On a live one it also reads a sample
through the mount (`host.health.read_probe`) and reports when reads fail (keys refused, store
down) and when they work again: that never heals, since mounting again would not help.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

from modelfs.errors import ModelfsError, MountError
from modelfs.host import control
from modelfs.host.health import (
    Health,
    MountCheck,
    MountStatus,
    ProbeResult,
    check_mount,
    read_probe,
)
from modelfs.host.mountinfo import detach
from modelfs.host.notify import child_environment
from modelfs.run.plan import MountTarget

log = logging.getLogger("modelfs.run")

# A dead mount (its daemon gone) or a hung one (alive, but no answer within the probe timeout).
_STUCK = (MountStatus.DEAD, MountStatus.HUNG)
# A hung probe can be a loaded machine: the watchdog replaces a live mount only after this many
# probes in a row did not answer (a dead one, or a missing one, at once).
HUNG_PROBES_BEFORE_HEAL = 3
# How long a SIGKILLed stuck mount daemon gets to disappear before we detach anyway; the kernel
# reaps a killed FUSE daemon in milliseconds once its pending requests are aborted.
_STALE_DAEMON_EXIT_WAIT = 5.0


class MountInUse(MountError):
    """Something other than our modelfs mount is mounted on the mountpoint (bad input)."""


class MountFailed(ModelfsError):
    """Mounting, detaching or healing the mount did not work (a runtime failure)."""


class PullFailed(ModelfsError):
    """The pull a run does instead of a mount did not complete (a runtime failure)."""


def run_modelfs(plan_config: str | None, words: Sequence[str], *, new_session: bool = False) -> int:
    """Run `python -m modelfs [--config C] WORDS...`, relaying its output to our stderr.

    Output goes through a temporary file, not a pipe: `mount --daemon` leaves a daemon behind
    that may keep the descriptor open, and a pipe would then never reach end of file.
    """
    command = [sys.executable, "-m", "modelfs"]
    if plan_config:
        command += ["--config", plan_config]
    command += words
    with tempfile.TemporaryFile() as output:
        returncode = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=child_environment(),
            start_new_session=new_session,
            check=False,
        ).returncode
        output.seek(0)
        text = output.read().decode(errors="replace").strip()
    if text:
        print(text, file=sys.stderr, flush=True)
    return returncode


def pull_files(plan_config: str | None, src: str, into: str) -> None:
    """`modelfs pull SRC INTO`, its progress on our stderr as it goes (instead of a mount, on
    a machine without FUSE). Raises PullFailed if the pull did not complete."""
    command = [sys.executable, "-m", "modelfs"]
    if plan_config:
        command += ["--config", plan_config]
    command += ["pull", src, into]
    log.info("pulling %s into %s", src, into)
    returncode = subprocess.run(
        command, stdin=subprocess.DEVNULL, stdout=2, env=child_environment(), check=False
    ).returncode
    if returncode != 0:
        raise PullFailed(f"pulling {src} into {into} failed (modelfs pull exit {returncode})")


def stop_stale_daemon(mountpoint: str) -> None:
    """SIGKILL the daemon of a dead/hung mount so its cache and session are released.

    The state file names the daemon by pid and start time: a pid the kernel has since given
    to another process is left alone (its start time differs), and so is a daemon whose state
    file predates start times (the mount is detached all the same)."""
    state = control.read_state(mountpoint)  # None if that process is gone
    if state is None:
        return
    pid, started = state["pid"], state.get("start_time")
    if not isinstance(started, int):
        log.warning("not killing pid %d of %s: its start time is not recorded", pid, mountpoint)
        return
    log.warning("killing stuck modelfs daemon %d of %s", pid, mountpoint)
    if not _kill_if_started_at(pid, started):
        return
    deadline = time.monotonic() + _STALE_DAEMON_EXIT_WAIT
    while control.process_start_time(pid) == started and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_if_started_at(pid: int, started: int) -> bool:
    """SIGKILL `pid` only if it is the process that started at `started`. The check and the
    kill go through one pidfd, so the pid cannot be reused between them."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if control.process_start_time(pid) != started:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


class MountKeeper:
    """Mounts `target` (once or again) and knows whether this run mounted it."""

    def __init__(
        self,
        target: MountTarget,
        config: str | None,
        probe_timeout: float,
        drain_timeout: float = math.inf,
        *,
        external: bool = False,
    ) -> None:
        self.target = target
        self.config = config
        self.probe_timeout = probe_timeout
        self.drain_timeout = drain_timeout
        self.external = external  # another owner mounts and heals it: only use it
        self.mounted_here = False
        self.heals = 0

    def check(self) -> MountCheck:
        return check_mount(self.target.mountpoint, self.target.spec, timeout=self.probe_timeout)

    def check_reads(self) -> ProbeResult:
        return read_probe(self.target.mountpoint, self.probe_timeout)

    def ensure(self) -> None:
        """Step 1 of a run: leave a healthy mount alone, heal a dead one, mount a missing one;
        with `external`, only use a healthy one (its owner, e.g. its unit, does the rest)."""
        state = self.check()
        if state.status is MountStatus.HEALTHY:
            log.info("%s is already mounted on %s", self.target.spec, self.target.mountpoint)
            return
        if state.status in (MountStatus.FOREIGN, MountStatus.UNUSABLE):
            raise MountInUse(f"{state.detail}; not taking it over")
        if self.external:
            raise MountFailed(
                f"{self.target.mountpoint} is {state.status.value} ({state.detail}) and its "
                "owner (--external-mount: the mount's own unit) mounts it, not this run"
            )
        if state.status in _STUCK:
            log.warning(
                "stale mount on %s (%s): detaching it", self.target.mountpoint, state.detail
            )
            self._detach()
        self._mount()
        self.mounted_here = True
        self._check_answers()
        log.info("mounted %s on %s", self.target.spec, self.target.mountpoint)

    def heal(self, state: MountCheck) -> None:
        """The watchdog's repair: the daemon died (or the mount vanished) while the app ran.

        It does not make the mount this run's: a mount that was there before the run stays
        after it, even if its daemon had to be replaced.
        """
        if state.status in _STUCK:
            self._detach()
        self._mount()
        self._check_answers()
        self.heals += 1
        log.warning(
            "mount of %s on %s was %s (%s); mounted again with the same cache",
            self.target.spec,
            self.target.mountpoint,
            state.status.value,
            state.detail,
        )

    def drain_and_unmount(self) -> bool:
        """Wait for write-back (at most `drain_timeout`), then unmount. False (and left
        mounted, its files staged) if either fails; `modelfs sync` said why."""
        mountpoint = self.target.mountpoint
        limit = [] if math.isinf(self.drain_timeout) else ["--timeout", f"{self.drain_timeout}s"]
        if run_modelfs(self.config, ["sync", *limit, mountpoint]) != 0:
            log.error("write-back of %s did not drain; leaving it mounted", mountpoint)
            return False
        if run_modelfs(self.config, ["unmount", mountpoint]) != 0:
            log.error("unmounting %s failed", mountpoint)
            return False
        log.info("written files are in the bucket; unmounted %s", mountpoint)
        return True

    def _detach(self) -> None:
        stop_stale_daemon(self.target.mountpoint)
        if not detach(self.target.mountpoint):
            raise MountFailed(f"cannot detach the stale mount on {self.target.mountpoint}")

    def _mount(self) -> None:
        words = ["mount", "--daemon", *self.target.options, self.target.spec]
        returncode = run_modelfs(self.config, [*words, self.target.mountpoint], new_session=True)
        if returncode != 0:
            raise MountFailed(
                f"mounting {self.target.spec} on {self.target.mountpoint} failed "
                f"(modelfs mount exit {returncode})"
            )

    def _check_answers(self) -> None:
        state = self.check()
        if state.status is not MountStatus.HEALTHY:
            raise MountFailed(
                f"{self.target.mountpoint} does not answer after mounting: {state.detail}"
            )


class Watchdog:
    """Calls `check` every `interval` seconds in a thread, and `heal` when the mount is gone:
    at once when it is dead or not mounted, after `hung_probes` hung probes in a row when it
    does not answer (one slow stat on a loaded machine must not kill a live mount). On a
    healthy mount it calls `check_reads` too, reporting each change of its verdict once."""

    def __init__(
        self,
        check: Callable[[], MountCheck],
        heal: Callable[[MountCheck], None],
        interval: float,
        hung_probes: int = HUNG_PROBES_BEFORE_HEAL,
        check_reads: Callable[[], ProbeResult] | None = None,
    ) -> None:
        self._check = check
        self._heal = heal
        self._interval = interval
        self._hung_probes = hung_probes
        self._misses = 0  # hung probes in a row
        self._check_reads = check_reads
        self._reads_failing: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="modelfs watchdog", daemon=True)
        self._reported: MountStatus | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def tick(self) -> None:
        state = self._check()
        self._misses = self._misses + 1 if state.status is MountStatus.HUNG else 0
        if state.status is MountStatus.HUNG and self._misses < self._hung_probes:
            log.warning(
                "mount did not answer (%d of %d probes in a row): %s",
                self._misses,
                self._hung_probes,
                state.detail,
            )
        elif state.status in (*_STUCK, MountStatus.NOT_MOUNTED):
            try:
                self._heal(state)
                self._misses = 0
            except (ModelfsError, OSError) as exc:
                log.error("cannot heal the mount (will retry): %s", exc)
        elif state.status is not MountStatus.HEALTHY and state.status is not self._reported:
            log.error("mount is %s: %s", state.status.value, state.detail)
        if state.status is MountStatus.HEALTHY and self._check_reads is not None:
            self._report_reads(self._check_reads())
        self._reported = state.status

    def _report_reads(self, result: ProbeResult) -> None:
        failing = None if result.health is Health.HEALTHY else result.detail
        if failing is not None and self._reads_failing is None:
            log.error(
                "the mount answers, but reading through it fails: %s (`modelfs status` says why)",
                failing,
            )
        elif failing is None and self._reads_failing is not None:
            log.warning("reading through the mount works again")
        self._reads_failing = failing

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.tick()
