"""Fixtures shared by the whole suite.

- `seaweed`  (session): one real SeaweedFS S3 server per test run (per pytest-xdist worker),
  always killed at the end;
- `bucket`:    a fresh, empty bucket on it, named after the test;
- `proxy`:     a FaultProxy in front of the server (counts requests, injects faults);
- `make_config`: `make_config(tmp_path, endpoint, name="test", ...) -> Path` (rclone format);
- `s3_store`:  an S3Store bound to `bucket`;
- `tiny_disk`: a 1 MiB tmpfs mounted for the test (ENOSPC tests; needs root);
- `proactive_reclaim_paused`: the machine's DAMON workers stopped for the test (page cache
  tests, `support.marks.page_cache`; needs root).

Every S3Store a test makes is closed when the test ends (`_close_stores`): an unclosed one
leaves sockets for the garbage collector, whose ResourceWarning (an error here) then fails
whichever later test the collection happens to run in.

Hooks: `DrillTable` prints the drills' table at the end (rows come in test reports, so from
xdist workers too), and SIGINT is put back to Python's default when the suite inherited it
ignored (a background job), for the tests that press Ctrl-C.

The helpers themselves live in `tests/support` so scripts can use them without pytest.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from modelfs.store.s3 import S3Store
from support import FaultProxy, SeaweedServer, remote_config, unique_bucket_name
from support import make_config as _make_config
from support.drills import ROW_PROPERTY, DrillRow, render_table, table_path
from support.mounting import tmpfs
from support.pagecache import proactive_reclaim_paused as _proactive_reclaim_paused


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    created: list[S3Store] = []
    construct = S3Store.__init__

    def construct_and_track(self: S3Store, *args: Any, **kwargs: Any) -> None:
        construct(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(S3Store, "__init__", construct_and_track)
    yield
    for store in created:
        store.close()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(seaweed: SeaweedServer, request: pytest.FixtureRequest) -> str:
    if not seaweed.running:
        seaweed.start()  # an earlier test stopped it to simulate an outage
    return seaweed.create_bucket(unique_bucket_name(request.node.name))


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.endpoint) as running:
        yield running


@pytest.fixture
def make_config() -> Callable[..., Path]:
    return _make_config


@pytest.fixture
def s3_store(seaweed: SeaweedServer, bucket: str) -> S3Store:
    return S3Store(remote_config(seaweed.endpoint), bucket)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: as root, only a really full disk says ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with tmpfs(tmp_path / "tiny", "1m") as disk:
        yield disk


class DrillTable:
    """Collects each drill's row (tests/drills/conftest.py), from this process or from an
    xdist worker, and prints them as one table at the end, also written to a file."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rows: list[DrillRow] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == ROW_PROPERTY and isinstance(value, dict):
                self.rows.append(DrillRow(**value))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.rows:
            return
        table = render_table(self.rows)
        path = table_path(Path(self.config.rootpath))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)
        terminalreporter.section(f"drills: {len(self.rows)} (table also in {path})")
        terminalreporter.write(table)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(DrillTable(config), "modelfs-drill-table")
    # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
    # every command a test starts would too (an ignored signal stays ignored across exec): the
    # tests that press Ctrl-C need it as a terminal leaves it.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def proactive_reclaim_paused() -> Iterator[None]:
    with _proactive_reclaim_paused():
        yield
