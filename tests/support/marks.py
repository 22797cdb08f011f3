"""Marks shared by test modules (pytest only: scripts never import this module).

`page_cache`: the test drops the kernel's page cache (`drop_page_cache`, machine-wide) or
asserts what the page cache holds. Under pytest-xdist (`scripts/test.sh` runs several workers)
such tests share one worker, so one test's drop never lands in the middle of another's
measurement; they run one after another there, in any order.
"""

from __future__ import annotations

import pytest

page_cache = pytest.mark.xdist_group("page-cache")
