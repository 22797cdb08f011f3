"""A simulated service manager: systemd's restart decisions for one unit on a clock of our own,
around the unit's real commands.

What is simulated: time, and the manager. RestartSec= and the outage pass on a simulated clock,
so a minute of boot-time outage costs only the seconds the attempts really take; the manager
applies Restart=on-failure, RestartSec=, RestartPreventExitStatus= and StartLimitIntervalSec= /
StartLimitBurst= (systemd's defaults, 10 s and 5, where the unit has none) as systemd documents
them. What is real: the ExecStartPre= and ExecStart= command lines, read from the unit and its
drop-in with Environment= expanded as systemd expands it ($VAR splits into words, ${VAR} stays one
word, %i is the instance), run with $NOTIFY_SOCKET set; a start has succeeded once the command
sends READY=1, and failed when it exits first, with the exit status the manager then judges.

What it cannot catch: anything else systemd does (ordering, network-online.target, the
sandbox, CacheDirectory=, which the caller makes by hand through `paths`), and any effect of a
real clock inside the command (a timeout in it is real time, not simulated).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_DEFAULT_LIMIT_INTERVAL = 10.0  # systemd's DefaultStartLimitIntervalSec
_DEFAULT_LIMIT_BURST = 5  # systemd's DefaultStartLimitBurst
_WHOLE_WORD = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_ONE_WORD = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_unit(*texts: str) -> dict[str, list[str]]:
    """Every `Key=value` of the unit and its drop-ins, in order (later files append)."""
    settings: dict[str, list[str]] = {}
    for text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@dataclass(frozen=True)
class Policy:
    """The restart settings of a unit."""

    restart: str = "no"
    restart_sec: float = 0.1  # systemd's default RestartSec
    prevent: frozenset[int] = frozenset()
    limit_interval: float = _DEFAULT_LIMIT_INTERVAL  # 0: no start limit
    limit_burst: int = _DEFAULT_LIMIT_BURST

    @classmethod
    def of(cls, settings: dict[str, list[str]]) -> Policy:
        def last(key: str, default: str) -> str:
            return settings.get(key, [default])[-1]

        return cls(
            restart=last("Restart", "no"),
            restart_sec=float(last("RestartSec", "0.1").removesuffix("s")),
            prevent=frozenset(
                int(word) for value in settings.get("RestartPreventExitStatus", []) for word in
                value.split()
            ),
            limit_interval=float(last("StartLimitIntervalSec", "10").removesuffix("s")),
            limit_burst=int(last("StartLimitBurst", str(_DEFAULT_LIMIT_BURST))),
        )  # fmt: skip


@dataclass
class Attempt:
    """One start: when (simulated seconds since boot), how long it really ran, how it ended."""

    at: float
    took: float
    exit_status: int | None  # None: it became ready


@dataclass
class Outcome:
    attempts: list[Attempt] = field(default_factory=list)
    verdict: str = ""  # "ready", or why the manager gave up

    @property
    def ready_at(self) -> float:
        last = self.attempts[-1]
        return last.at + last.took


Start = Callable[[float], tuple[int | None, float]]
"""Start the service at simulated time `now`: (exit status or None if ready, seconds it took)."""


def manage(policy: Policy, start: Start, give_up_after: float = 3600.0) -> Outcome:
    """Start, and restart as `policy` says, until ready or the manager gives up."""
    outcome = Outcome()
    now = 0.0
    while now < give_up_after:
        starts = [a.at for a in outcome.attempts]
        if policy.limit_interval > 0:
            recent = [at for at in starts if at > now - policy.limit_interval]
            if len(recent) >= policy.limit_burst:
                outcome.verdict = "start-limit-hit: failed for good"
                return outcome
        status, took = start(now)
        outcome.attempts.append(Attempt(now, took, status))
        now += took
        if status is None:
            outcome.verdict = "ready"
            return outcome
        if status in policy.prevent:
            outcome.verdict = f"exit status {status} prevents a restart: failed for good"
            return outcome
        if policy.restart not in ("on-failure", "always", "on-abnormal") or status == 0:
            outcome.verdict = f"exit status {status}, no restart: failed for good"
            return outcome
        now += policy.restart_sec
    outcome.verdict = "still not ready"
    return outcome


def command_words(
    line: str, environment: dict[str, str], instance: str, paths: dict[str, str]
) -> list[str]:
    """An Exec*= line as systemd would run it (a leading '-' is the caller's business)."""
    words: list[str] = []
    for token in shlex.split(line.replace("%i", instance)):
        whole = _WHOLE_WORD.fullmatch(token)
        if whole:
            words += environment.get(whole.group(1), "").split()
            continue
        word = _ONE_WORD.sub(lambda m: environment.get(m.group(1), ""), token)
        for real, simulated in paths.items():
            word = word.replace(real, simulated)
        words.append(word)
    return words


def unit_environment(settings: dict[str, list[str]]) -> dict[str, str]:
    """The Environment= assignments of the unit and its drop-ins, later ones winning."""
    environment: dict[str, str] = {}
    for value in settings.get("Environment", []):
        for assignment in shlex.split(value):
            key, _, text = assignment.partition("=")
            environment[key] = text.replace("%%", "%")
    return environment


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(0.05)
        yield server


def start_until_ready(
    command: list[str], server: socket.socket, address: str, limit: float
) -> tuple[subprocess.Popen[bytes], bool]:
    """Run `command` with $NOTIFY_SOCKET; True once it said READY=1, False if it exited."""
    process = subprocess.Popen(
        command,
        env={**os.environ, "NOTIFY_SOCKET": address},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            if "READY=1" in server.recv(4096).decode().split("\n"):
                return process, True
        if process.poll() is not None:
            return process, False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process, False
