"""The drill suite's recorder: the `drill` fixture, and the one table printed at the end.

Every drill is a test marked `@pytest.mark.drill("its name", limit=SECONDS)`; `pytest -m drill`
(or `scripts/drills.sh`) runs them all. The `drill` fixture hands the test a `support.drills.Drill`
named and limited by that marker and keeps its row when the test ends, passed or not; at the
end of the run the rows are printed as one table and written to $DRILL_TABLE (default
.drills/last.md). A drill asserts its own numbers (`Drill.finish`), so a wrong byte, a lost
acknowledged write or a stall past its limit is a failing test, and pytest's exit status says so.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from support.drills import Drill, DrillRow, render_table, table_path

ROWS = pytest.StashKey[list[DrillRow]]()


OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def drill(request: pytest.FixtureRequest) -> Iterator[Drill]:
    marker = request.node.get_closest_marker("drill")
    if marker is None or not marker.args:
        raise pytest.UsageError("a drill needs @pytest.mark.drill(NAME, limit=SECONDS)")
    recorder = Drill(DrillRow(str(marker.args[0]), float(marker.kwargs["limit"])))
    yield recorder
    recorder.row.outcome = request.node.stash.get(OUTCOME, "FAILED")
    request.config.stash.setdefault(ROWS, []).append(recorder.row)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep how the test itself ended, for its row (read by `drill` at teardown)."""
    report = yield
    if report.when == "call" or report.outcome != "passed":
        if hasattr(report, "wasxfail"):
            outcome = "known failure" if report.skipped else "passed, but marked xfail"
        else:
            outcome = "passed" if report.passed else "FAILED"
        item.stash.setdefault(OUTCOME, outcome)
    return report


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    table = render_table(rows)
    path = table_path(Path(config.rootpath))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    terminalreporter.section(f"drills: {len(rows)} (table also in {path})")
    terminalreporter.write(table)
