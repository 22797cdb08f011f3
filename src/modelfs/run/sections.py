"""Which `[run:NAME]` section `modelfs run` means when the command line names none.

`modelfs run -- python webui.py`, typed in the app's directory with no section name and no
`--mount`/`--pull`, uses, in order:
1. the run section of a `modelfs.conf` in the current directory (the app's own file, beside
   `webui.py`; see `config.files.project_config`);
2. the run section whose `workdir` is the current directory;
3. the only run section of the config file.
Several candidates at the step that has any, or none anywhere, is one line naming them or
saying how to write one (`--save NAME`). Reads nothing but the parsed config.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass

from modelfs.config.files import PROJECT_FILE
from modelfs.errors import ConfigError

_PREFIX = "run:"
_HOW_TO_WRITE = (
    "give --mount REMOTE:BUCKET[/PREFIX] MOUNTPOINT (or --pull SRC --into DIR) and add "
    f"--save NAME to write it as [run:NAME] into the app's {PROJECT_FILE}, or name a section"
)


@dataclass(frozen=True, slots=True)
class Choice:
    name: str  # of the run section, without 'run:'
    why: str  # for the log line: "the run section of ./modelfs.conf", ...


def run_sections(config: configparser.ConfigParser) -> list[str]:
    """The names of the config's run sections, in file order."""
    return [name.removeprefix(_PREFIX) for name in config.sections() if name.startswith(_PREFIX)]


def _workdir(config: configparser.ConfigParser, name: str) -> str | None:
    text = config.get(_PREFIX + name, "workdir", raw=True, fallback=None)
    return None if text is None else os.path.realpath(os.path.expanduser(text.strip()))


def _named(names: list[str]) -> str:
    return ", ".join(names)


def choose_section(
    config: configparser.ConfigParser, project: configparser.ConfigParser | None, cwd: str
) -> Choice:
    """The run section for a `run` without a name, in `cwd` (see the module docstring).
    `config` has the project's sections laid over it already; `project` is its own file."""
    here = os.path.realpath(cwd)
    local = run_sections(project) if project is not None else []
    if len(local) == 1:
        return Choice(local[0], f"the run section of ./{PROJECT_FILE}")
    if local:
        raise ConfigError(
            f"./{PROJECT_FILE} has several run sections ({_named(local)}): name one, "
            f"e.g. modelfs run {local[0]}"
        )
    everything = run_sections(config)
    for_here = [name for name in everything if _workdir(config, name) == here]
    if len(for_here) == 1:
        return Choice(for_here[0], f"its workdir is {here}")
    if for_here:
        raise ConfigError(
            f"several run sections have workdir {here} ({_named(for_here)}): name one, "
            f"e.g. modelfs run {for_here[0]}"
        )
    if len(everything) == 1:
        return Choice(everything[0], "the only run section in the config file")
    if everything:
        raise ConfigError(
            f"no run section has workdir {here}, and the config file has several "
            f"({_named(everything)}): name one, e.g. modelfs run {everything[0]}"
        )
    raise ConfigError(f"no run section for {here}: {_HOW_TO_WRITE}")
