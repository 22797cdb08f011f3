"""`modelfs run`: mount (or heal) a bucket, link it into an app's directory, run the app.

What it owns: the order of a run, the app's process and the signals sent to it. Deciding is
delegated to small modules: `plan` (what to do), `keeper` (mount, heal, watch and unmount,
through `modelfs` subprocesses), `links` (symlinks), `host.notify` (systemd).

A run, step by step:
1. check the mountpoint: healthy modelfs mount of this spec -> use it (and leave it mounted
   at the end); dead or hung -> kill its stuck daemon, `fusermount3 -u -z`, mount again; not
   mounted -> mount; anything else mounted there -> error, never a takeover.
2. install the links (`links.install_link`); with `--warm GLOB`, fetch the files into the
   mount's cache and wait (`warm`).
3. ask the mount to fetch the app's start profile ahead of it and to record this start
   (`replay`); start the app in WORKDIR with our stdin/stdout/stderr; send READY=1 if under
   systemd; with `--warm-async GLOB`, warm beside it (stopped when the app exits).
4. while it runs, a watchdog thread checks the mount every `watch_interval` and mounts it
   again (same options, so the same cache) when its daemon died; it also reads a sample
   through the mount and reports reads that fail while the mount answers (see `keeper`).
   With `--external-mount` (the run unit of a section whose mount has its own unit) the mount
   is its owner's: step 1 only uses a healthy one, and there is no watchdog and no unmount
   (the mount unit restarts it). The app runs as `user` if one is given: `run` itself stays
   root.
5. when the app exits: if step 1 mounted, `modelfs sync` then `modelfs unmount` (unless
   `--keep-mounted`); exit with the app's status, 128+N if a signal N ended it.

Signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to the app. The app stays in our
process group, so a Ctrl-C or Ctrl-\\ typed at a terminal already reaches it from the kernel;
those two are therefore not forwarded again while we own the terminal's foreground (the app
would see two). A signal that arrives before the app started stops the run after the current
step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import subprocess
from collections.abc import Callable
from types import FrameType

from modelfs import console
from modelfs.errors import ConfigError, ModelfsError
from modelfs.host.notify import child_environment, notify
from modelfs.run.keeper import MountKeeper, Watchdog, pull_files
from modelfs.run.links import install_link
from modelfs.run.plan import RunPlan
from modelfs.run.replay import ask_replay
from modelfs.run.warm import WarmBeside, warm_now

log = logging.getLogger("modelfs.run")

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# Signals a terminal sends to its whole foreground process group (the app included).
_TERMINAL_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT})
# Shell conventions for a command that cannot be started.
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def exit_status(returncode: int) -> int:
    """Popen's returncode (-N for signal N) as a shell exit status (128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def owns_foreground_tty() -> bool:
    """True if stdin is a terminal whose foreground process group is ours."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


class SignalForwarder:
    """Records the forwarded signals; passes them to the app once it is attached."""

    def __init__(self, owns_tty: Callable[[], bool] = owns_foreground_tty) -> None:
        self.pid: int | None = None
        self.received: list[int] = []
        self._owns_tty = owns_tty
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def install(self) -> None:
        for signum in FORWARDED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def attach(self, pid: int) -> None:
        """Forward from now on, starting with what arrived while the app was being started."""
        pending = list(self.received)
        self.pid = pid
        for signum in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def raise_if_received(self) -> None:
        if self.received and self.pid is None:
            raise Interrupted(self.received[0])

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.pid is None:
            return
        if signum in _TERMINAL_SIGNALS and self._owns_tty():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


def start_app(plan: RunPlan) -> subprocess.Popen[bytes]:
    """Start the command in WORKDIR (as `plan.user` if given); OSError if it cannot be run."""
    env = child_environment()
    if plan.user is None:
        return subprocess.Popen(plan.command, cwd=plan.workdir, env=env)
    entry = pwd.getpwnam(plan.user)
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    return subprocess.Popen(
        plan.command,
        cwd=plan.workdir,
        env=env,
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
    )


def supervise_app(plan: RunPlan, forwarder: SignalForwarder, keeper: MountKeeper | None) -> int:
    """Steps 3-4: run the app to its end, forwarding signals, watching the mount."""
    try:
        app = start_app(plan)
    except FileNotFoundError:
        console.error_line(f"command not found: {plan.command[0]}")
        return EXIT_NOT_FOUND
    except PermissionError:
        console.error_line(f"cannot execute {plan.command[0]}")
        return EXIT_NOT_EXECUTABLE
    forwarder.attach(app.pid)
    notify("READY=1", f"STATUS=running {plan.command[0]} (pid {app.pid})")
    watchdog = None
    if keeper is not None and not keeper.external:  # an external mount's owner heals it
        watchdog = Watchdog(
            keeper.check, keeper.heal, plan.watch_interval, check_reads=keeper.check_reads
        )
    if watchdog:
        watchdog.start()
    try:
        returncode = app.wait()
    finally:
        if watchdog:
            watchdog.stop()
    notify("STOPPING=1")
    return exit_status(returncode)


def execute(plan: RunPlan, before_app: Callable[[], None] | None = None) -> int:
    """A whole run (steps 1-5 of the module docstring; with `--pull`, step 1 pulls).
    `before_app` is called once the mount and the links are in place (`run --save`)."""
    forwarder = SignalForwarder()
    forwarder.install()
    keeper = None
    if plan.target is not None:
        keeper = MountKeeper(
            plan.target,
            plan.config,
            plan.probe_timeout,
            plan.drain_timeout,
            external=plan.external_mount,
        )
    try:
        try:
            if keeper is not None:
                keeper.ensure()
            else:
                assert plan.pull is not None
                pull_files(plan.config, plan.pull.src, plan.pull.into)
            forwarder.raise_if_received()
            for link in plan.links:
                target = link.target(plan.root)
                if not os.path.exists(target):
                    raise ConfigError(f"link {link.name}: {target} does not exist in {plan.root}")
                result = install_link(plan.workdir, target, link.name, move_aside=plan.move_aside)
                log.info("%s -> %s (%s)", result.path, target, result.action.value)
                if result.backup:
                    log.warning("moved %s aside to %s", result.path, result.backup)
            forwarder.raise_if_received()
            if plan.warm:
                warm_now(plan.config, plan.root, plan.warm)
                forwarder.raise_if_received()
            if before_app is not None:
                before_app()
            ask_replay(plan)
            beside = (
                WarmBeside(plan.config, plan.root, plan.warm_async) if plan.warm_async else None
            )
            try:
                code = supervise_app(plan, forwarder, keeper)
            finally:
                if beside is not None:
                    beside.stop()
        except Interrupted as exc:
            log.warning("%s before the app started", exc)
            code = 128 + exc.signum
        except (ModelfsError, OSError) as exc:
            code = console.fail(exc)
        unmount = keeper is not None and keeper.mounted_here and not plan.keep_mounted
        if unmount and keeper is not None and not keeper.drain_and_unmount():
            code = code or 1
        return code
    finally:
        forwarder.restore()
