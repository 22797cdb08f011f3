"""The layout is the architecture (docs/architecture.md): imports point one way, modules stay
small and say what they own, and the test fakes live here, not in the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import modelfs

PACKAGE = Path(modelfs.__file__).parent
SHARED = {"errors", "objects", "console", "memory"}
# Each folder (or top-level module) and the folders it may import, as drawn in
# docs/architecture.md; the shared modules may be imported by all.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "objects": set(),
    "console": {"errors"},
    "memory": set(),
    "config": set(),
    "host": {"config"},
    "store": {"config"},
    "cache": {"host"},
    "read": {"store", "cache"},
    "write": {"store", "host"},
    "core": {"read", "write", "store"},
    "daemon": {"core", "read", "write", "store", "cache", "host", "config", "pull"},
    "pull": {"core", "read", "store", "cache", "host", "config"},
    "links": {"pull", "store", "host", "config"},
    "run": {"config", "host"},
    "cli": {"daemon", "pull", "links", "run", "config"},
    "__init__": set(),
    "__main__": {"cli"},
}
MAX_LINES = 400


def area_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_areas(path: Path) -> set[str]:
    areas: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "modelfs":
                names = [f"modelfs.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "modelfs" and len(parts) > 1:
                areas.add(parts[1])
    return areas


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_point_one_way() -> None:
    wrong = []
    for path in modules():
        area = area_of(path)
        allowed = ALLOWED[area] | SHARED | {area, "__version__"}
        for imported in imported_areas(path) - allowed:
            wrong.append(f"{path.relative_to(PACKAGE)} imports modelfs.{imported}")
    assert wrong == []


def test_cli_reaches_commands_only() -> None:
    """The command line knows each area's `commands` module, not its insides."""
    text = (PACKAGE / "cli.py").read_text()
    listed = text.split("_COMMAND_MODULES = (", 1)[1].split(")", 1)[0]
    modules = [word.strip().strip('"') for word in listed.split(",") if word.strip()]
    assert modules == [f"modelfs.{area}.commands" for area in ("daemon", "pull", "links", "run")]


def test_modules_are_small_and_say_what_they_own() -> None:
    for path in modules():
        lines = path.read_text().splitlines()
        assert len(lines) <= MAX_LINES, f"{path.relative_to(PACKAGE)}: {len(lines)} lines"
        if path.name == "__main__.py":
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, f"{path.relative_to(PACKAGE)} has no docstring"


def test_test_fakes_are_not_in_the_package() -> None:
    sources = " ".join(path.read_text() for path in modules())
    assert "class MemoryStore" not in sources
    assert "class MemoryDataCache" not in sources


def test_the_package_imports_without_boto3() -> None:
    """boto3 is for the tests and the benchmark only: every module of the package imports
    with it unimportable (the store uses botocore directly; see `store.s3client`)."""
    code = """
import importlib, pkgutil, sys
class NoBoto3:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "boto3":
            raise ImportError("boto3 is not a runtime dependency of modelfs")
sys.meta_path.insert(0, NoBoto3())
import modelfs
for module in pkgutil.walk_packages(modelfs.__path__, "modelfs."):
    if module.name != "modelfs.__main__":
        importlib.import_module(module.name)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
