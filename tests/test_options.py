"""The mount options: one table (`config.options`), and every view of it agrees with it.

`modelfs mount`, `modelfs run`, `[mount:*]`/`[run:*]` sections, fstab's `-o` (mount.modelfs),
the systemd drop-in (via `option_words`) and the README's option table all name the same
options; an option added to the table shows up in each, and nowhere else can one be added.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from modelfs.cli import build_parser
from modelfs.config import options
from modelfs.config.options import MOUNT_OPTIONS, Kind
from modelfs.errors import ConfigError
from modelfs.run.mounthelper import modelfs_argv, parse_argv

README = Path(__file__).resolve().parent.parent / "README.md"
# A valid value for each VALUE option without a default.
SAMPLES = {"log-file": "/tmp/x.log", "metrics": "127.0.0.1:9464", "token-file": "/tmp/token"}


def sample(option: options.MountOption) -> str:
    return option.default_text() or SAMPLES[option.name]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise AssertionError("no subcommands")


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def words_for(option: options.MountOption) -> list[str]:
    """How a user gives `option` on a command line, with a valid value."""
    if option.kind is Kind.VALUE:
        return [f"--{option.name}", sample(option)]
    return [f"--{option.name}"]


@pytest.mark.parametrize("command", ["mount", "run"])
def test_every_option_is_on_the_command_line_of_mount_and_run(command: str) -> None:
    flags = flags_of(subparser(command))
    for option in MOUNT_OPTIONS:
        assert f"--{option.name}" in flags, option.name
        if option.kind is Kind.SWITCH:
            assert f"--no-{option.name}" in flags, option.name


def test_mount_parses_what_run_forwards_to_the_same_values() -> None:
    """run passes an option on as `option_words`; mount parses those words back."""
    run, mount = subparser("run"), subparser("mount")
    for option in MOUNT_OPTIONS:
        given = run.parse_args([*words_for(option), "name"])
        forwarded = options.option_words(options.from_args(given))
        parsed = mount.parse_args([*forwarded, "r:bucket", "/mnt/x"])
        direct = mount.parse_args([*words_for(option), "r:bucket", "/mnt/x"])
        assert getattr(parsed, option.dest) == getattr(direct, option.dest), option.name


def test_every_option_is_accepted_in_a_config_section_and_nothing_else() -> None:
    items = {
        option.name: sample(option) if option.kind is Kind.VALUE else "true"
        for option in MOUNT_OPTIONS
    }
    found = options.from_section("mount:x", items)
    assert set(found) == set(options.names())
    options.check_keys("mount:x", items, {"remote"})
    with pytest.raises(ConfigError, match="unknown key 'cache-size'"):
        options.check_keys("mount:x", {"cache-size": "1G"}, {"remote"})


def test_every_option_is_accepted_by_the_fstab_helper() -> None:
    for option in MOUNT_OPTIONS:
        name = option.name.replace("-", "_")
        text = f"{name}={sample(option)}" if option.kind is Kind.VALUE else name
        argv = modelfs_argv(parse_argv(["r:bucket", "/mnt/m", "-o", text]))
        assert f"--{option.name}" in argv, option.name


def test_the_readme_lists_every_option_and_no_other() -> None:
    table = README.read_text().split("## Mount", 1)[1].split("\n\n| option |", 1)[1]
    table = table.split("\n\n", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", table, re.MULTILINE)
    listed = {
        name
        for cell in first_cells
        if not cell.startswith("global")  # the global options' row, for completeness
        for name in re.findall(r"`--([a-z-]+)", cell)
        if not name.startswith("no-")
    }
    assert listed == set(options.names())


def test_a_bad_value_is_one_line_naming_the_option() -> None:
    with pytest.raises(SystemExit):
        subparser("mount").parse_args(["--transfers", "0", "r:bucket", "/mnt/x"])
    with pytest.raises(ConfigError, match=r"\[mount:x\]: invalid part-size '8Q'"):
        options.from_section("mount:x", {"part-size": "8Q"})


def test_section_lines_are_read_back_as_the_same_options() -> None:
    given: options.Options = {
        "cache-dir": "/c",
        "read-only": True,
        "warm-up": False,
        "metrics": "127.0.0.1:9464",
    }
    lines = options.section_lines(given)
    assert lines == [
        "cache-dir = /c",
        "metrics = 127.0.0.1:9464",
        "read-only = true",
        "warm-up = false",
    ]
    items = dict(line.split(" = ", 1) for line in lines)
    assert options.from_section("run:x", items) == given


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9464", ("127.0.0.1", 9464)),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:9464", ("localhost", 9464)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_metrics_addresses(text: str, address: tuple[str, int]) -> None:
    assert options.parse_listen_address(text) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":9464", "name the host, 127.0.0.1:9464"),
        ("127.0.0.1:http", "expected HOST:PORT"),
        ("127.0.0.1:70000", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
    ],
)
def test_bad_metrics_addresses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options.parse_listen_address(text)
