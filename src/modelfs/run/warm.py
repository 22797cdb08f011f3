"""`modelfs run --warm GLOB` and `--warm-async GLOB`: files of the mount fetched into its block
cache before the app starts, or while it starts.

A GLOB is relative to the mountpoint, as a link's SUBPATH is (`models/*`, `**/*.safetensors`);
`modelfs warm` expands it (through the mount) and the mount does the work (`daemon.warm`).
- `--warm`: `modelfs warm` runs to its end, its progress on our stderr, then the app starts.
  A glob that matches nothing (its exit 2) stops the run before the app, as a missing link
  target does; a failed fetch (exit 1) is a warning: the app reads what it needs on demand.
- `--warm-async`: `modelfs warm` starts just before the app and runs beside it; its output
  goes to our log once it ends (progress lines would garble the app's terminal). If the app
  exits first, it is stopped (which stops the fetch in the mount) before the run unmounts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import PurePosixPath

from modelfs import console
from modelfs.errors import ConfigError, ModelfsError
from modelfs.host.notify import child_environment

log = logging.getLogger("modelfs.run")

_STOP_WAIT = 10.0  # seconds a stopped `modelfs warm` gets before SIGKILL


class WarmFailed(ModelfsError):
    """`--warm GLOB` cannot work as given (it matches nothing): bad input."""

    bad_input = True


def parse_glob(text: str) -> str:
    """A `--warm` GLOB: relative to the mountpoint, never climbing out of it."""
    glob = text.strip()
    if not glob or glob.startswith("/") or ".." in PurePosixPath(glob).parts:
        raise ConfigError(f"invalid warm glob {text!r}: a path relative to the mountpoint")
    return glob


def _command(config: str | None, root: str, globs: Sequence[str]) -> list[str]:
    command = [sys.executable, "-m", "modelfs"]
    if config:
        command += ["--config", config]
    return [*command, "warm", *(os.path.join(root, glob) for glob in globs)]


def warm_now(config: str | None, root: str, globs: Sequence[str]) -> None:
    """`--warm`: fetch the files before the app starts (WarmFailed if a glob is wrong)."""
    log.info("warming %s before the app starts", " ".join(globs))
    returncode = subprocess.run(
        _command(config, root, globs),
        stdin=subprocess.DEVNULL,
        stdout=2,
        env=child_environment(),
        check=False,
    ).returncode
    if returncode == console.EXIT_BAD_INPUT:
        raise WarmFailed(f"--warm {' '.join(globs)}: nothing to warm (see above)")
    if returncode != 0:
        log.warning("warming failed (modelfs warm exit %d); the app starts anyway", returncode)


class WarmBeside:
    """`--warm-async`: `modelfs warm` beside the app; `stop` when the app has exited."""

    def __init__(self, config: str | None, root: str, globs: Sequence[str]) -> None:
        self._globs = " ".join(globs)
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 (closed by `stop`)
        log.info("warming %s while the app starts", self._globs)
        self._process = subprocess.Popen(
            _command(config, root, globs),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=self._output,
            env=child_environment(),
        )
        self._stopped = False
        self._thread = threading.Thread(target=self._report, name="modelfs warm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._stopped = True
            self._process.terminate()
            try:
                self._process.wait(_STOP_WAIT)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._thread.join()
        self._output.close()

    def _report(self) -> None:
        returncode = self._process.wait()
        self._output.seek(0)
        lines = self._output.read().decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else ""
        if returncode == 0:
            log.info("warmed %s: %s", self._globs, last)
        elif self._stopped:
            log.info("stopped warming %s: the app has exited", self._globs)
        else:
            log.warning("warming %s failed (exit %d): %s", self._globs, returncode, last)
