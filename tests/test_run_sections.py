"""`modelfs run` without a section name, the app's own `modelfs.conf`, and `run --save NAME`.

Without a mount: which section is chosen, the one-line errors, and what `--save` writes (read
back as the same plan). A real run that saves a section and starts again from it is in
test_run_e2e.py.
"""

from __future__ import annotations

import argparse
import configparser
import os
import stat
import textwrap
from pathlib import Path

import pytest

from modelfs.cli import build_parser
from modelfs.config.files import lay_over, project_config, write_section
from modelfs.errors import ConfigError
from modelfs.run.plan import RunPlan, plan_from_args
from modelfs.run.save import saving_for
from modelfs.run.sections import choose_section

REMOTE = "[compshare]\ntype = s3\nendpoint = http://127.0.0.1:1\nsecret_access_key = s3cr3t\n"


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(textwrap.dedent(text))
    return parser


def section(name: str, workdir: str, command: str = "python webui.py") -> str:
    return (
        f"[run:{name}]\nmount = compshare:bucket /mnt/{name}\n"
        f"workdir = {workdir}\ncommand = {command}\n"
    )


def args_of(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def plan_here(cwd: Path, config: str, project: str | None = None, *argv: str) -> RunPlan:
    os.chdir(cwd)
    return plan_from_args(
        args_of(*argv), parse(config), parse(project) if project is not None else None
    )


@pytest.fixture(autouse=True)
def _keep_cwd() -> object:
    before = os.getcwd()
    yield
    os.chdir(before)


def test_the_project_files_section_comes_first(tmp_path: Path) -> None:
    config = REMOTE + section("elsewhere", "/srv/other") + section("here", str(tmp_path))
    project = section("mine", str(tmp_path), "python mine.py")
    result = plan_here(tmp_path, config, project)
    assert result.command == ("python", "mine.py")
    assert result.target is not None
    assert result.target.mountpoint == "/mnt/mine"
    assert result.chosen == "using [run:mine]: the run section of ./modelfs.conf"


def test_then_the_section_whose_workdir_is_here(tmp_path: Path) -> None:
    config = REMOTE + section("elsewhere", "/srv/other") + section("here", str(tmp_path))
    result = plan_here(tmp_path, config, None, "--", "python", "webui.py", "--port", "1")
    assert result.target is not None
    assert result.target.mountpoint == "/mnt/here"
    assert result.command == ("python", "webui.py", "--port", "1")  # words after -- replace it
    assert result.chosen == f"using [run:here]: its workdir is {os.path.realpath(tmp_path)}"


def test_then_the_only_section_there_is(tmp_path: Path) -> None:
    result = plan_here(tmp_path, REMOTE + section("only", "/srv/only"))
    assert result.workdir == Path("/srv/only")
    assert result.chosen == "using [run:only]: the only run section in the config file"


@pytest.mark.parametrize(
    ("config", "project", "message"),
    [
        ("", None, r"no run section for .*: give --mount .* add --save NAME"),
        (
            section("a", "/srv/a") + section("b", "/srv/b"),
            None,
            r"no run section has workdir .*several \(a, b\): name one, e.g. modelfs run a",
        ),
        (
            section("a", "{here}") + section("b", "{here}"),
            None,
            r"several run sections have workdir .* \(a, b\): name one",
        ),
        (
            section("c", "/srv/c"),
            section("a", "/srv/a") + section("b", "/srv/b"),
            r"\./modelfs\.conf has several run sections \(a, b\): name one",
        ),
    ],
    ids=["none", "several", "several-here", "several-in-project"],
)
def test_several_or_none_is_one_line_naming_them(
    tmp_path: Path, config: str, project: str | None, message: str
) -> None:
    here = str(tmp_path)
    with pytest.raises(ConfigError, match=message):
        plan_here(
            tmp_path,
            REMOTE + config.format(here=here),
            project.format(here=here) if project else None,
        )


def test_a_named_section_may_come_from_the_project_file_and_wins(tmp_path: Path) -> None:
    config = REMOTE + section("app", "/srv/global")
    result = plan_here(tmp_path, config, section("app", str(tmp_path)), "app")
    assert result.workdir == tmp_path


def test_project_config_is_read_beside_the_app_without_remotes(tmp_path: Path) -> None:
    assert project_config(tmp_path, None) is None
    (tmp_path / "modelfs.conf").write_text(section("app", str(tmp_path)))
    found = project_config(tmp_path, None)
    assert found is not None
    assert found.sections() == ["run:app"]
    # The config file in use is not read twice as a project file.
    assert project_config(tmp_path, str(tmp_path / "modelfs.conf")) is None
    (tmp_path / "modelfs.conf").write_text(REMOTE + section("app", str(tmp_path)))
    with pytest.raises(ConfigError, match=r"defines remote \[compshare\]: keep remotes"):
        project_config(tmp_path, None)


def test_lay_over_replaces_a_section_whole() -> None:
    base = parse("[run:x]\nworkdir = /a\nkeep-mounted = true\n[run:y]\nworkdir = /y\n")
    lay_over(base, parse("[run:x]\nworkdir = /b\n"))
    assert dict(base["run:x"]) == {"workdir": "/b"}
    assert base["run:y"]["workdir"] == "/y"


# -- --save ------------------------------------------------------------------------------------

SAVED_ARGV = (
    "--mount", "compshare:bucket/models", "/mnt/models",
    "--link", "cache_hub=cache_hub_v23", "--link", "logs=logs",
    "--cache-max-size", "50G", "--no-warm-up", "--read-only",
    "--keep-mounted", "--watch-interval", "2s",
    "--warm", "models/*.json", "--warm", "tokenizer", "--warm-async", "models/**/*.pt",
    "--save", "webui", "--", "python", "webui.py", "--title", "it's 100%",
)  # fmt: skip


def test_save_writes_the_command_line_as_a_section_read_back_as_the_same_plan(
    tmp_path: Path,
) -> None:
    os.chdir(tmp_path)
    args = args_of(*SAVED_ARGV)
    first = plan_from_args(args)
    saving = saving_for(args, first)
    assert saving.path == tmp_path / "modelfs.conf"
    saving.write()
    text = saving.path.read_text()
    assert "[run:webui]\nremote = compshare:bucket/models\nmountpoint = /mnt/models\n" in text
    assert "link = cache_hub=cache_hub_v23\n       logs=logs\n" in text
    assert "warm = models/*.json\n       tokenizer\nwarm-async = models/**/*.pt\n" in text
    assert "s3cr3t" not in text
    assert "secret" not in text
    assert stat.S_IMODE(saving.path.stat().st_mode) == 0o600
    # The short line: `modelfs run` here finds it and plans the same run.
    again = plan_from_args(args_of(), parse(REMOTE), project_config(tmp_path, None))
    assert again.chosen == "using [run:webui]: the run section of ./modelfs.conf"
    assert (again.warm, again.warm_async) == (("models/*.json", "tokenizer"), ("models/**/*.pt",))
    fields = ("target", "links", "workdir", "command", "keep_mounted", "watch_interval", "warm")
    for field in (*fields, "warm_async"):
        assert getattr(again, field) == getattr(first, field), field


def test_save_replaces_its_section_and_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "modelfs.conf"
    path.write_text("# my runs\n[run:other]\ncommand = x\n\n[run:webui]\ncommand = old\n")
    path.chmod(0o644)
    assert write_section(path, "run:webui", ["command = new"]) is True
    assert path.read_text() == "# my runs\n[run:other]\ncommand = x\n\n[run:webui]\ncommand = new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert write_section(path, "run:third", ["command = 3"]) is False
    assert parse(path.read_text()).sections() == ["run:other", "run:webui", "run:third"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mount", "r:bucket", "/m", "--save", "a b", "--", "x"], "a section name is"),
        (["--mount", "r:bucket", "/m", "--save", "run:x", "--", "x"], "a section name is"),
        (["app", "--save", "copy"], "this run comes from a section already"),
        (["--mount", "r:bucket", "/m", "--save", "x", "--", "echo", "a\nb"], "line break"),
    ],
)
def test_save_refuses_what_it_cannot_write(tmp_path: Path, argv: list[str], message: str) -> None:
    os.chdir(tmp_path)
    args = args_of(*argv)
    plan = plan_from_args(args, parse(REMOTE + section("app", str(tmp_path))))
    with pytest.raises(ConfigError, match=message):
        saving_for(args, plan)


def test_choose_section_reads_workdirs_with_tilde_and_links(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    config = parse(section("a", str(tmp_path / "link")) + section("b", "~/nowhere"))
    assert choose_section(config, None, str(real)).name == "a"


# -- --warm ------------------------------------------------------------------------------------


def test_warm_globs_from_a_section_and_the_command_line(tmp_path: Path) -> None:
    config = section("app", str(tmp_path)) + "warm = models/* tokenizer/*.json\n"
    from_section = plan_here(tmp_path, config, None, "app")
    assert from_section.warm == ("models/*", "tokenizer/*.json")
    assert from_section.warm_async == ()
    replaced = plan_here(tmp_path, config, None, "app", "--warm", "voices/*", "--warm-async", "x")
    assert (replaced.warm, replaced.warm_async) == (("voices/*",), ("x",))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--mount", "r:bucket", "/m", "--warm", "../etc/*", "--", "x"],
            "relative to the mountpoint",
        ),
        (
            ["--mount", "r:bucket", "/m", "--warm-async", "/abs", "--", "x"],
            "relative to the mountpoint",
        ),
        (
            ["--pull", "r:bucket", "--into", "/d", "--warm", "m/*", "--", "x"],
            "--warm needs a mount",
        ),
    ],
)
def test_warm_globs_that_cannot_work(tmp_path: Path, argv: list[str], message: str) -> None:
    os.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        plan_from_args(args_of(*argv))


# -- start profiles ------------------------------------------------------------------------------


def test_the_start_profile_is_the_sections_name_unless_told(tmp_path: Path) -> None:
    config = section("app", str(tmp_path))
    assert plan_here(tmp_path, config, None, "app").profile == "app"
    assert plan_here(tmp_path, config, None, "app", "--profile", "other").profile == "other"
    assert plan_here(tmp_path, config, None, "app", "--no-profile").profile is None
    tuned = config + "profile = off\nprofile-quiet = 3s\nprofile-max-size = 1G\n"
    off = plan_here(tmp_path, tuned, None, "app")
    assert (off.profile, off.profile_quiet, off.profile_max) == (None, 3.0, 1 << 30)
    assert plan_from_args(args_of("--mount", "r:bucket", "/m", "--", "x")).profile is None
    pulled = plan_from_args(args_of("--pull", "r:b", "--into", "/d", "--profile", "p", "--", "x"))
    assert pulled.profile is None  # a pull has no mount to replay through
    argv = ("--mount", "r:bucket", "/m", "--profile", "p", "--profile-quiet", "3s")
    args = args_of(*argv, "--save", "s", "--", "x")
    saving_for(args, plan_from_args(args)).write()
    again = plan_from_args(args_of(), parse(REMOTE), project_config(tmp_path, None))
    assert (again.profile, again.profile_quiet) == ("p", 3.0)
