"""The drill suite's recorder: the `drill` fixture, and the one table printed at the end.

Every drill is a test marked `@pytest.mark.drill("its name", limit=SECONDS)`; `pytest -m drill`
(or `scripts/drills.sh`) runs them all. The `drill` fixture hands the test a `support.drills.Drill`
named and limited by that marker and keeps its row when the test ends, passed or not; the row
travels in the test's teardown report (`user_properties`), so that the session that prints the
table (tests/conftest.py) has it whether the drill ran in this process or in a pytest-xdist
worker. A drill asserts its own numbers (`Drill.finish`), so a wrong byte, a lost acknowledged
write or a stall past its limit is a failing test, and pytest's exit status says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator

import pytest

from support.drills import ROW_PROPERTY, Drill, DrillRow

ROW = pytest.StashKey[DrillRow]()
OUTCOME = pytest.StashKey[str]()


@pytest.fixture
def drill(request: pytest.FixtureRequest) -> Iterator[Drill]:
    marker = request.node.get_closest_marker("drill")
    if marker is None or not marker.args:
        raise pytest.UsageError("a drill needs @pytest.mark.drill(NAME, limit=SECONDS)")
    recorder = Drill(DrillRow(str(marker.args[0]), float(marker.kwargs["limit"])))
    yield recorder
    recorder.row.outcome = request.node.stash.get(OUTCOME, "FAILED")
    request.node.stash[ROW] = recorder.row


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep how the test itself ended, for its row (read by `drill` at teardown), and hand
    the finished row on in the teardown report."""
    report = yield
    if report.when == "call" or report.outcome != "passed":
        if hasattr(report, "wasxfail"):
            outcome = "known failure" if report.skipped else "passed, but marked xfail"
        else:
            outcome = "passed" if report.passed else "FAILED"
        item.stash.setdefault(OUTCOME, outcome)
    if report.when == "teardown" and ROW in item.stash:
        report.user_properties.append((ROW_PROPERTY, dataclasses.asdict(item.stash[ROW])))
    return report
