"""`modelfs run --save NAME`: the command line that worked, as a `[run:NAME]` section.

So the second start is the short one: `modelfs run --mount compshare:index-tts-data /mnt/tts
--link cache_hub=cache_hub_v23 --save index-tts -- python webui.py` writes

    [run:index-tts]
    remote = compshare:index-tts-data
    mountpoint = /mnt/tts
    link = cache_hub=cache_hub_v23
    workdir = /srv/index-tts
    command = python webui.py

into WORKDIR/modelfs.conf (the app's own file, which a `modelfs run` typed there finds; see
`run.sections`), once the mount answered and the links are in place, just before the app
starts. Every option given is kept (mount options as `config.options` writes them); the
section names its remote, so no key or secret is written anywhere new. The file is mode 0600
and keeps its other sections (`config.files.write_section`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from modelfs.config import options
from modelfs.config.files import PROJECT_FILE, write_section
from modelfs.errors import ConfigError
from modelfs.run.plan import RunPlan

log = logging.getLogger("modelfs.run")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")


@dataclass(frozen=True, slots=True)
class Saving:
    """A run section to write once the run has got as far as starting its app."""

    name: str
    path: Path
    lines: tuple[str, ...]

    def write(self) -> None:
        """Write the section; a failure now is a warning: the app starts all the same."""
        try:
            replaced = write_section(self.path, f"run:{self.name}", self.lines)
        except (OSError, ConfigError) as exc:
            log.warning("could not save [run:%s] in %s: %s", self.name, self.path, exc)
            return
        log.info(
            "%s [run:%s] in %s: next time, `modelfs run` there (or `modelfs run %s`)",
            "replaced" if replaced else "saved",
            self.name,
            self.path,
            self.name,
        )


def saving_for(args: argparse.Namespace, plan: RunPlan) -> Saving:
    """What `--save NAME` will write for this command line; ConfigError if it cannot."""
    name: str = args.save
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--save {name!r}: a section name is letters, digits, '.', '_', '-'")
    if not (args.mount or args.pull):
        raise ConfigError(
            "--save writes a --mount or --pull command line as a section; this run comes "
            "from a section already"
        )
    path = plan.workdir / PROJECT_FILE
    writable = os.access(path, os.W_OK) if path.exists() else os.access(plan.workdir, os.W_OK)
    if not writable:
        raise ConfigError(f"--save {name}: cannot write {path}")
    lines = _lines(args, plan)
    if any("\n" in line or "\r" in line for line in lines):
        raise ConfigError(f"--save {name}: a value with a line break cannot go in a section")
    return Saving(name, path, tuple(lines))


def _lines(args: argparse.Namespace, plan: RunPlan) -> list[str]:
    lines: list[str] = []
    if plan.pull is not None:
        lines += [f"pull = {plan.pull.src}", f"into = {plan.pull.into}"]
    else:
        assert plan.target is not None
        lines += [f"remote = {plan.target.spec}", f"mountpoint = {plan.target.mountpoint}"]
    links = [f"{link.name}={link.subpath}" for link in plan.links]
    for key, values in (("link", links), ("warm", plan.warm), ("warm-async", plan.warm_async)):
        if values:
            lines.append(f"{key} = {values[0]}")
            lines += [" " * len(f"{key} = ") + text for text in values[1:]]
    lines += [f"workdir = {plan.workdir}", f"command = {shlex.join(plan.command)}"]
    lines += options.section_lines(options.from_args(args))
    for key, given in (("keep-mounted", args.keep_mounted), ("move-aside", args.move_aside)):
        if given:
            lines.append(f"{key} = true")
    if args.no_profile:
        lines.append("profile = off")
    texts = (
        ("profile", args.profile),
        ("profile-quiet", args.profile_quiet),
        ("profile-max-size", args.profile_max_size),
        ("probe-timeout", args.probe_timeout),
        ("watch-interval", args.watch_interval),
    )
    for key, text in texts:
        if text is not None:
            lines.append(f"{key} = {text}")
    return lines
