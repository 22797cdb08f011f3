"""The README's quick start, part 1 (`scripts/demo.sh` runs `scripts/demo.py` after setup):
its own SeaweedFS with the sample bucket, a mount, and the stand-in app through `modelfs run`.
Run with the default sample model (256 MiB), the size the README promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_run_e2e import cleanup_mount

pytestmark = pytest.mark.mount

DEMO = Path(__file__).parents[1] / "scripts" / "demo.py"


def test_the_quick_start_demo_runs_to_the_end(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    try:
        done = subprocess.run(
            [sys.executable, str(DEMO), "--dir", str(base)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        cleanup_mount(base / "mnt")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "model_v23.pt" in done.stdout
    assert "pass 1: verified 5 files" in done.stdout  # the app checked the models' sha256
    assert "written files are in the bucket; unmounted" in done.stdout
    assert "standin pid=" in done.stdout  # its log, read back from the bucket
    assert re.search(
        r"[1-9][0-9.]*[KMGT] pinned \([1-9][0-9]* file\(s\)\)", done.stdout
    )  # warm --pin
    assert "X-Amz-Signature=" in done.stdout  # presign printed a signed link
    assert "sample_rate: 24000" in done.stdout  # curl -L of a stable link, with the token
    assert "bytes by source: http://127.0.0.1:" in done.stdout  # a pull through the service
    assert done.stdout.rstrip().endswith("demo: done (SeaweedFS stopped, nothing left mounted)")
