"""`host.meminfo`: MemAvailable, the room under cgroup limits (v1 and v2), and the override."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfs.host.meminfo import MEMORY_ENV, available_memory, cgroup_room, mem_available

GiB = 1 << 30


def fake_proc(root: Path, available_kb: int, cgroup: str) -> Path:
    proc = root / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal: 32000000 kB\nMemFree: 1000 kB\nMemAvailable: {available_kb} kB\n"
    )
    (proc / "77" / "cgroup").write_text(cgroup)
    return proc


def limit(directory: Path, files: tuple[str, str], maximum: str, usage: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / files[0]).write_text(maximum + "\n")
    (directory / files[1]).write_text(f"{usage}\n")


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MEMORY_ENV, raising=False)


def test_the_tightest_cgroup_v2_limit_up_the_tree_wins_over_memavailable(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GiB >> 10, "0::/machine/app\n")
    cgroups = tmp_path / "cgroup"
    v2 = ("memory.max", "memory.current")
    limit(cgroups / "machine", v2, str(8 * GiB), 7 * GiB)  # 1 GiB of room above
    limit(cgroups / "machine" / "app", v2, "max", 5 * GiB)  # no limit of its own
    assert mem_available(str(proc)) == 20 * GiB
    assert cgroup_room(77, proc=str(proc), cgroups=str(cgroups)) == GiB
    assert available_memory(77, proc=str(proc), cgroups=str(cgroups)) == GiB


def test_a_cgroup_v1_memory_limit_counts_and_no_limit_leaves_memavailable(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GiB >> 10, "4:memory:/box\n1:cpu:/box\n0::/\n")
    cgroups = tmp_path / "cgroup"
    v1 = ("memory.limit_in_bytes", "memory.usage_in_bytes")
    limit(cgroups / "memory" / "box", v1, str(3 * GiB), GiB)
    assert available_memory(77, proc=str(proc), cgroups=str(cgroups)) == 2 * GiB
    limit(cgroups / "memory" / "box", v1, str(9223372036854771712), GiB)  # v1's "unlimited"
    assert available_memory(77, proc=str(proc), cgroups=str(cgroups)) == 20 * GiB


def test_nothing_readable_is_unknown_and_the_override_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert available_memory(77, proc=str(tmp_path), cgroups=str(tmp_path)) is None
    monkeypatch.setenv(MEMORY_ENV, "64M")
    assert available_memory(77, proc=str(tmp_path), cgroups=str(tmp_path)) == 64 << 20


def test_this_machine_reports_something() -> None:
    available = available_memory()
    assert available is not None
    assert available > 0
