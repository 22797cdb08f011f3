#!/usr/bin/env bash
# Set up a fresh machine (scripts/setup.sh) and run the whole suite: lint, types, tests.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k mount -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV="${MODELFS_VENV:-$PWD/.venv}"
export PATH="$VENV/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"
exec python -m pytest "$@"
