#!/usr/bin/env bash
# Quick start, part 1: on a fresh machine, install everything, start a local S3 server
# (SeaweedFS) holding a sample IndexTTS-style bucket, mount it with modelfs, show it, and run a
# stand-in app on it through `modelfs run`. Everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV="${MODELFS_VENV:-$PWD/.venv}"
export PATH="$VENV/bin:$PATH"
exec python scripts/demo.py "$@"
