"""Marks shared by test modules (pytest only: scripts never import this module).

`page_cache`: the test drops the kernel's page cache (`drop_page_cache`, machine-wide) or
asserts what the page cache holds. Under pytest-xdist (`scripts/test.sh` runs several workers)
such tests share one worker, so one test's drop never lands in the middle of another's
measurement; they run one after another there, in any order. While one runs, the machine's
proactive reclaim is paused (the `proactive_reclaim_paused` fixture, see `support.pagecache`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

Test = TypeVar("Test", bound=Callable[..., object])


def page_cache(test: Test) -> Test:
    grouped = pytest.mark.xdist_group("page-cache")(test)
    paused: Test = pytest.mark.usefixtures("proactive_reclaim_paused")(grouped)
    return paused
