"""`modelfs run`: mount (or heal) a bucket, link it into an app's directory, run the app.

What it owns: the order of a run and the processes in it. Deciding is delegated to small
modules: `runplan` (what to do), `mountcheck` (is the mount ours and alive), `links` (symlinks),
`notify` (systemd). Every process here is `modelfs` itself as a subprocess
(`python -m modelfs mount --daemon | sync | unmount`) or the app, so the supervisor never holds
a FUSE session and a crash of the mount cannot take the supervisor down with it.

A run, step by step:
1. check the mountpoint: healthy modelfs mount of this spec -> use it (and leave it mounted
   at the end); dead or hung -> kill its stuck daemon, `fusermount3 -u -z`, mount again; not
   mounted -> mount; anything else mounted there -> error, never a takeover.
2. install the links (`links.install_link`).
3. start the app in WORKDIR with our stdin/stdout/stderr; send READY=1 if under systemd.
4. while it runs, a watchdog thread checks the mount every `watch_interval` and mounts it
   again (same options, so the same cache) when its daemon died.
5. when the app exits: if step 1 mounted, `modelfs sync` then `modelfs unmount` (unless
   `--keep-mounted`); exit with the app's status, 128+N if a signal N ended it.

Signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to the app. The app stays in our
process group, so a Ctrl-C or Ctrl-\\ typed at a terminal already reaches it from the kernel;
those two are therefore not forwarded again while we own the terminal's foreground (the app
would see two). A signal that arrives before the app started stops the run after the current
step.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from . import control
from .errors import AlreadyExists, ConfigError, ModelfsError, MountError
from .links import install_link
from .mountcheck import MountCheck, MountStatus, check_mount, detach, read_mountinfo
from .notify import child_environment, notify
from .runplan import MountTarget, RunPlan, add_mount_options, plan_from_args, validate_paths

log = logging.getLogger("modelfs.run")

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# Signals a terminal sends to its whole foreground process group (the app included).
_TERMINAL_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT})
# Shell conventions for a command that cannot be started.
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
# How long a SIGKILLed stuck mount daemon gets to disappear before we detach anyway; the kernel
# reaps a killed FUSE daemon in milliseconds once its pending requests are aborted.
_STALE_DAEMON_EXIT_WAIT = 5.0


class MountInUse(MountError):
    """Something other than our modelfs mount is mounted on the mountpoint."""


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


def _daemon_pid(mountpoint: str) -> int | None:
    """The pid in the mount's state file, if the control module knows one."""
    state = control.read_state(mountpoint)
    pid = state.get("pid") if state else None
    return pid if isinstance(pid, int) and pid > 0 else None


def _is_modelfs_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"modelfs" in cmdline.read()
    except OSError:
        return False


def stop_stale_daemon(mountpoint: str) -> None:
    """SIGKILL the daemon of a dead/hung mount so its cache and session are released."""
    pid = _daemon_pid(mountpoint)
    if pid is None or not _is_modelfs_process(pid):
        return
    log.warning("killing stuck modelfs daemon %d of %s", pid, mountpoint)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _STALE_DAEMON_EXIT_WAIT
    while _is_modelfs_process(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


class MountKeeper:
    """Mounts `target` (once or again) and knows whether this run mounted it."""

    def __init__(self, target: MountTarget, config: str | None, probe_timeout: float) -> None:
        self.target = target
        self.config = config
        self.probe_timeout = probe_timeout
        self.mounted_here = False
        self.heals = 0

    def check(self) -> MountCheck:
        return check_mount(self.target.mountpoint, self.target.spec, timeout=self.probe_timeout)

    def ensure(self) -> None:
        """Step 1 of a run: leave a healthy mount alone, heal a dead one, mount a missing one."""
        state = self.check()
        if state.status is MountStatus.HEALTHY:
            log.info("%s is already mounted on %s", self.target.spec, self.target.mountpoint)
            return
        if state.status in (MountStatus.FOREIGN, MountStatus.UNUSABLE):
            raise MountInUse(f"{state.detail}; not taking it over")
        if state.status is MountStatus.DEAD:
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
        if state.status is MountStatus.DEAD:
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
        """Wait for write-back, then unmount. False (and left mounted) if either fails."""
        mountpoint = self.target.mountpoint
        if run_modelfs(self.config, ["sync", mountpoint]) != 0:
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
            raise MountError(f"cannot detach the stale mount on {self.target.mountpoint}")

    def _mount(self) -> None:
        words = ["mount", "--daemon", *self.target.options, self.target.spec]
        returncode = run_modelfs(self.config, [*words, self.target.mountpoint], new_session=True)
        if returncode != 0:
            raise MountError(
                f"mounting {self.target.spec} on {self.target.mountpoint} failed "
                f"(modelfs mount exit {returncode})"
            )

    def _check_answers(self) -> None:
        state = self.check()
        if state.status is not MountStatus.HEALTHY:
            raise MountError(
                f"{self.target.mountpoint} does not answer after mounting: {state.detail}"
            )


class Watchdog:
    """Calls `check` every `interval` seconds in a thread and `heal` when the mount is gone."""

    def __init__(
        self,
        check: Callable[[], MountCheck],
        heal: Callable[[MountCheck], None],
        interval: float,
    ) -> None:
        self._check = check
        self._heal = heal
        self._interval = interval
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
        if state.status in (MountStatus.DEAD, MountStatus.NOT_MOUNTED):
            try:
                self._heal(state)
            except (ModelfsError, OSError) as exc:
                log.error("cannot heal the mount (will retry): %s", exc)
        elif state.status is not MountStatus.HEALTHY and state.status is not self._reported:
            log.error("mount is %s: %s", state.status.value, state.detail)
        self._reported = state.status

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.tick()


def start_app(plan: RunPlan) -> subprocess.Popen[bytes]:
    """Start the command in WORKDIR; OSError if it cannot be executed."""
    return subprocess.Popen(plan.command, cwd=plan.workdir, env=child_environment())


def supervise_app(plan: RunPlan, forwarder: SignalForwarder, keeper: MountKeeper | None) -> int:
    """Steps 3-4: run the app to its end, forwarding signals, watching the mount."""
    try:
        app = start_app(plan)
    except FileNotFoundError:
        print(f"modelfs: error: command not found: {plan.command[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError:
        print(f"modelfs: error: cannot execute {plan.command[0]}", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE
    forwarder.attach(app.pid)
    notify("READY=1", f"STATUS=running {plan.command[0]} (pid {app.pid})")
    watchdog = Watchdog(keeper.check, keeper.heal, plan.watch_interval) if keeper else None
    if watchdog:
        watchdog.start()
    try:
        returncode = app.wait()
    finally:
        if watchdog:
            watchdog.stop()
    notify("STOPPING=1")
    return exit_status(returncode)


def _error_exit(exc: BaseException) -> int:
    print(f"modelfs: error: {exc}", file=sys.stderr, flush=True)
    return 2 if isinstance(exc, ConfigError | AlreadyExists | MountInUse) else 1


def execute(plan: RunPlan) -> int:
    """A whole run (steps 1-5 of the module docstring)."""
    forwarder = SignalForwarder()
    forwarder.install()
    keeper = MountKeeper(plan.target, plan.config, plan.probe_timeout)
    try:
        try:
            keeper.ensure()
            forwarder.raise_if_received()
            for link in plan.links:
                target = link.target(plan.target.mountpoint)
                if not os.path.exists(target):
                    raise ConfigError(f"link {link.name}: {target} does not exist in the mount")
                result = install_link(plan.workdir, target, link.name, move_aside=plan.move_aside)
                log.info("%s -> %s (%s)", result.path, target, result.action.value)
                if result.backup:
                    log.warning("moved %s aside to %s", result.path, result.backup)
            forwarder.raise_if_received()
            code = supervise_app(plan, forwarder, keeper)
        except Interrupted as exc:
            log.warning("%s before the app started", exc)
            code = 128 + exc.signum
        except (ModelfsError, OSError) as exc:
            code = _error_exit(exc)
        if keeper.mounted_here and not plan.keep_mounted and not keeper.drain_and_unmount():
            code = code or 1
        return code
    finally:
        forwarder.restore()


def _setup_logging(verbose: bool) -> None:
    """One prefixed line per event on stderr (the journal under systemd), unless configured."""
    logger = logging.getLogger("modelfs")
    if logging.getLogger().handlers or logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("modelfs run: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def handle_run(args: argparse.Namespace) -> int:
    _setup_logging(getattr(args, "verbose", False))
    try:
        config = None if args.mount else _load_config(args.config)
        plan = plan_from_args(args, config)
        validate_paths(plan, read_mountinfo())
    except ModelfsError as exc:
        return _error_exit(exc)
    return execute(plan)


def _load_config(explicit: str | None) -> configparser.ConfigParser:
    from .remote import load_config

    return load_config(explicit)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="mount a bucket, link it into an app directory and run the app",
        description=(
            "modelfs run NAME [-- COMMAND...] runs the [run:NAME] config section; "
            "modelfs run --mount REMOTE:BUCKET MOUNTPOINT [options] -- COMMAND... runs without one."
        ),
    )
    parser.add_argument(
        "--mount", nargs=2, metavar=("REMOTE:BUCKET[/PREFIX]", "MOUNTPOINT"), default=None
    )
    parser.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="NAME=SUBPATH",
        help="make WORKDIR/NAME a symlink to MOUNTPOINT/SUBPATH (repeatable)",
    )
    parser.add_argument("--workdir", default=None, help="where the app runs (default: here)")
    parser.add_argument(
        "--move-aside",
        action="store_true",
        help="rename a real file/directory in a link's place to NAME.bak-<time>",
    )
    parser.add_argument(
        "--keep-mounted", action="store_true", help="leave a mount this run made mounted"
    )
    parser.add_argument("--probe-timeout", metavar="DUR", default=None)
    parser.add_argument("--watch-interval", metavar="DUR", default=None)
    add_mount_options(parser)
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="NAME [-- COMMAND ...]")
    parser.set_defaults(func=handle_run, run_parser=parser)
