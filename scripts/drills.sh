#!/usr/bin/env bash
# The drill suite (tests/drills): every fault on real FUSE mounts against a real SeaweedFS,
# through the fault proxy. Sets up a fresh machine like scripts/test.sh (scripts/setup.sh),
# runs `pytest -m drill`, prints one table (also written to $DRILL_TABLE, default
# .drills/last.md) and exits non-zero on any wrong byte, lost acknowledged write, or stall past
# its limit (each is a failing drill). Extra arguments go to pytest, e.g. `-k storm`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV="${MODELFS_VENV:-$PWD/.venv}"
export PATH="$VENV/bin:$PATH"
exec python -m pytest -m drill -q -p no:cacheprovider "$@"
