"""Global options (`--config`, `-v`) before or after the command, as rclone users type them;
`run`'s command after `--` is never parsed; an unknown option is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelfs.cli import build_parser, main
from modelfs.run.plan import split_words

# Each command with the arguments it needs to parse.
COMMANDS = [
    ["mount", "r:bucket", "/mnt/x"],
    ["unmount", "/mnt/x"],
    ["umount", "/mnt/x"],
    ["status", "/mnt/x"],
    ["sync", "/mnt/x"],
    ["remotes"],
    ["pull", "r:bucket", "/tmp/x"],
    ["manifest", "create", "r:bucket"],
    ["verify", "/tmp/x"],
    ["systemd", "install", "name"],
    ["run", "--mount", "r:bucket", "/mnt/x"],
]


def verb_length(command: list[str]) -> int:
    """How many leading words name the command (`manifest create` is two)."""
    return 2 if command[0] in ("manifest", "systemd") else 1


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words[:2]))
def test_global_options_before_and_after_the_command(command: list[str]) -> None:
    parser = build_parser()
    verb, rest = command[: verb_length(command)], command[verb_length(command) :]
    before = parser.parse_args(["--config", "/etc/a.conf", "-v", *command])
    after = parser.parse_args([*verb, "--config", "/etc/a.conf", "-v", *rest])
    neither = parser.parse_args(command)
    assert (before.config, before.verbose) == ("/etc/a.conf", True)
    assert (after.config, after.verbose) == ("/etc/a.conf", True)
    assert (neither.config, neither.verbose) == (None, False)


def test_after_the_command_wins_and_before_is_kept_when_not_repeated() -> None:
    parser = build_parser()
    args = parser.parse_args(["--config", "/a", "mount", "--config", "/b", "r:bucket", "/m"])
    assert args.config == "/b"
    args = parser.parse_args(["--config", "/a", "-v", "mount", "--read-only", "r:bucket", "/m"])
    assert (args.config, args.verbose) == ("/a", True)


def test_the_apps_command_after_double_dash_is_never_parsed() -> None:
    args = build_parser().parse_args(
        ["run", "-v", "--mount", "r:b", "/m", "--", "python", "app.py", "-v", "--config", "x"]
    )
    assert (args.config, args.verbose) == (None, True)
    assert split_words(args) == (None, ["python", "app.py", "-v", "--config", "x"])


def test_global_options_after_a_run_section_name() -> None:
    args = build_parser().parse_args(
        ["run", "index-tts", "--config", "/etc/m.conf", "-v", "--", "python", "--config", "y"]
    )
    assert split_words(args) == ("index-tts", ["python", "--config", "y"])
    assert (args.config, args.verbose) == ("/etc/m.conf", True)


def test_no_section_name_leaves_the_words_to_the_app() -> None:
    args = build_parser().parse_args(["run", "-v", "--", "python", "webui.py", "--port", "1"])
    assert split_words(args) == (None, ["python", "webui.py", "--port", "1"])
    assert args.verbose


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mount", "--bogus", "r:bucket", "/m"], "unrecognized arguments: --bogus"),
        (["--bogus", "status", "/m"], "unrecognized arguments: --bogus"),
        (["status"], "the following arguments are required: mountpoint"),
        (["mount", "--transfers", "0", "r:bucket", "/m"], "'0' must be at least 1"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exit:
        code = int(exit.code or 0)
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("modelfs: error: ")
    assert message in lines[0]


def test_the_cli_reads_the_config_given_after_the_command(tmp_path: Path) -> None:
    config = tmp_path / "after.conf"
    config.write_text("[elsewhere]\ntype = s3\nendpoint = http://127.0.0.1:1\n")
    modelfs = [sys.executable, "-m", "modelfs"]
    listed = subprocess.run(
        [*modelfs, "remotes", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "elsewhere" in listed.stdout
    refused = subprocess.run(
        [*modelfs, "mount", "--config", str(config), "nosuch:bucket", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"modelfs: error: unknown remote 'nosuch' in {config} (known remotes: elsewhere)"
    ]
