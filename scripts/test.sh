#!/usr/bin/env bash
# Set up a fresh machine (scripts/setup.sh) and run the whole suite: lint, types, tests.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k mount -x`.
# The tests run in $MODELFS_TEST_WORKERS pytest-xdist workers (default 3: most of a mount test's
# time is spent waiting on a server, a daemon or a timeout, not on a core; 0 runs them in this
# process). Tests that drop or measure the page cache share one worker (tests/support/marks.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV="${MODELFS_VENV:-$PWD/.venv}"
export PATH="$VENV/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"
exec python -m pytest -n "${MODELFS_TEST_WORKERS:-3}" --dist loadgroup "$@"
